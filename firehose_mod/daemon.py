"""Wiring: open the key and the label log, run the feed and the server in one task group.

SIGTERM and SIGINT cancel the group; the server closes client connections (1001) and the
database is closed after the last write returned, so nothing committed is lost.
"""

from __future__ import annotations

import resource
import signal
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from functools import partial

import anyio
import structlog
from anyio.abc import TaskStatus

from firehose_mod.compat.plyr import open_plyr_compat
from firehose_mod.config import Settings
from firehose_mod.events import TrackEvent
from firehose_mod.ingest.build import build_source
from firehose_mod.ingest.metrics import IngestCollector
from firehose_mod.ingest.pipeline import IngestPipeline
from firehose_mod.ingest.verify import CommitVerifier
from firehose_mod.labels.signing import SigningKey
from firehose_mod.review.metrics import ReviewCollector
from firehose_mod.roles import Role, parse_role
from firehose_mod.review.reports import ReportDesk
from firehose_mod.review.service import ReviewServices, open_review
from firehose_mod.review.transparency import TransparencyCollector, open_poster
from firehose_mod.scan.metrics import ScanCollector
from firehose_mod.scan.netguard import warn_if_opened
from firehose_mod.scan.registry import open_engine
from firehose_mod.scan.worker import ScanWorkers
from firehose_mod.server.admin import load_or_create_token
from firehose_mod.server.app import LabelServer
from firehose_mod.server.desk_media import DeskMedia
from firehose_mod.server.service_auth import DidKeyResolver, ServiceAuthVerifier
from firehose_mod.server.feed import LabelFeed
from firehose_mod.server.metrics import ServerMetrics
from firehose_mod.store import LabelLog
from firehose_mod.store.db import close_shielded
from firehose_mod.store.pg.label_log import server_of
from firehose_mod.store.presence import DaemonPresence
from firehose_mod.store.open import open_ingest_store, open_nonce_store, open_report_store, source_lock
from firehose_mod.store.source_lock import PgSourceLock, SourceLock, SourceLockLost
from firehose_mod.supervise import supervised

log = structlog.get_logger(__name__)


def load_key(settings: Settings) -> SigningKey:
    key, created = SigningKey.load_or_create(settings.key_path, settings.key_curve)
    if created:
        log.warning(
            "key.generated", path=str(settings.key_path), did_key=key.did_key,
            hint="publish this did:key as #atproto_label in the labeler's DID document",
        )
    return key


@asynccontextmanager
async def open_label_log(settings: Settings, *, daemon: bool = False) -> AsyncIterator[LabelLog]:
    """The label log of `settings`, signing with its key (generated on first use).

    The daemon waits out another process's write lock for as long as it takes; an operator
    command gives up after `db_busy_wait` seconds and names the process that holds it.
    With `database_url` set it is a `PgLabelLog` following other processes' commits.
    """
    key = load_key(settings)
    if settings.database_url:  # the label log on PostgreSQL; every other store stays in the SQLite file
        from firehose_mod.store.pg import PgLabelLog

        async with PgLabelLog.connect(settings.database_url, key, settings.did,
                                      busy_wait=None if daemon else settings.db_busy_wait) as pg_log:
            yield pg_log
        return
    label_log = await LabelLog.open(settings.db_path, key, settings.did, synchronous=settings.db_synchronous,
                                    busy_wait=None if daemon else settings.db_busy_wait)
    presence = DaemonPresence(settings.db_path) if daemon else None  # commands pause for us (store/presence.py)
    try:
        yield label_log
    finally:
        if presence is not None:
            presence.release()
        await close_shielded(label_log)


async def run_server(
    settings: Settings, label_log: LabelLog, review: ReviewServices | None = None, *, media=None, reports=None,
    status=(), task_status: TaskStatus[LabelServer] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `label_log` until cancelled; reports the started server through `task_status`.
    `status`: providers of /admin/status parts, in place before the first request is answered."""
    feed = LabelFeed(
        label_log,
        recent=settings.stream_recent_labels,
        page_size=settings.stream_page_size,
        poll_interval=settings.stream_poll_interval,
        max_subscribers=settings.stream_max_subscribers,
    )
    await feed.start()
    metrics = ServerMetrics(feed)
    label_log.on_commit(lambda written: metrics.labels_written.inc(len(written)))
    # The operator credential for /admin/*: a file only the data directory's owner can read.
    server = LabelServer(settings, feed, metrics, admin_token=load_or_create_token(settings.data_dir), review=review,
                         media=media, reports=reports)
    server.status_providers.extend(status)
    async with anyio.create_task_group() as tg:
        tg.start_soon(feed.run)
        await tg.start(server.serve)
        log.info("label_log.ready", head=feed.head, db=_where(settings), key=label_log.key.did_key)
        task_status.started(server)


def _where(settings: Settings) -> str:
    """Where the label log is, for the logs: the SQLite path, or the PostgreSQL server and database
    (never the URL's password)."""
    return server_of(settings.database_url) if settings.database_url else str(settings.db_path)


def raise_open_file_limit() -> None:
    """Each subscriber is a socket: lift the soft descriptor limit to the hard one (often 1024 -> more)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    log.info("daemon.open_files", limit=hard)


async def serve_forever(settings: Settings) -> None:
    """`firehose-mod serve`: the label server until SIGTERM or SIGINT."""
    raise_open_file_limit()
    async with open_label_log(settings, daemon=True) as label_log, anyio.create_task_group() as tg:
        tg.start_soon(_cancel_on_signal, tg.cancel_scope)
        await tg.start(run_server, settings, label_log)


async def run_daemon(settings: Settings, *, task_status: TaskStatus[dict] = anyio.TASK_STATUS_IGNORED) -> None:
    """`firehose-mod run`: the composition root. Every part is built here (the engine and its
    dependencies by `scan.registry.open_engine`, which the dry run and rescan share), then
    ingest, scan workers and the label server run in one task group: those of them that
    `settings.role` asks for (firehose_mod/roles.py)."""
    warn_if_opened(settings, log, command="run")
    role = parse_role(settings.role)
    async with AsyncExitStack() as stack:
        label_log = await stack.enter_async_context(open_label_log(settings, daemon=True))
        store = await stack.enter_async_context(open_ingest_store(settings))
        scanning = await stack.enter_async_context(open_engine(settings, label_log))
        engine = scanning.engine
        review = await stack.enter_async_context(open_review(settings, label_log, daemon=True))
        # The admin page's excerpts and thumbnails: from the scanners' own fetcher and cache
        # (a second fetcher on the same cache would delete the scanners' downloads in progress).
        desk_media = await stack.enter_async_context(DeskMedia(settings, review.store, fetcher=scanning.media))
        reports = await _open_reports(stack, settings, review, scanning.client)
        review.plyr = await stack.enter_async_context(open_plyr_compat(settings, label_log, review, scanning))
        poster = await stack.enter_async_context(open_poster(settings))  # None unless [transparency] enabled
        source, watched = None, set()  # the source keeps `watched` by reference: filled on taking the lead
        if role.ingests:
            verifier = None
            if settings.verify_commits:
                # Key lookups happen in the read loop: keep them well inside the read deadline.
                client = await stack.enter_async_context(CommitVerifier.http_client(settings))
                verifier = CommitVerifier(client, settings.plc_url)
            source = build_source(settings, watched, verifier=verifier)
        workers = ScanWorkers(store, engine, concurrency=settings.scan_workers, worker=role.worker,
                              lease=settings.scan_lease, negate_on_delete=settings.negate_on_delete)
        lock = source_lock(settings, role.name)
        stack.callback(lock.release)

        async with anyio.create_task_group() as tg:
            ingest_status = partial(_ingest_status, store, source, workers, role, lock)
            server = await tg.start(partial(run_server, settings, label_log, review, media=desk_media,
                                            reports=reports, status=[ingest_status]))
            server.metrics.registry.register(ScanCollector(engine))
            if role.scans:
                tg.start_soon(supervised, "scan_workers", workers.run)
            if engine.catalogue is not None:
                tg.start_soon(supervised, "catalogue_watch", engine.catalogue.follow_imports)
                tg.start_soon(supervised, "catalogue_merge", engine.catalogue.keep_merged)
            server.metrics.registry.register(ReviewCollector(review))
            parts = {"server": server, "workers": workers, "store": store, "source": source, "engine": engine,
                     "review": review, "role": role, "lock": lock}
            if role.ingests:
                leader = partial(_lead, tg, settings, store, (source, watched), workers, review, poster, server, parts)
                if await lock.acquire(wait=False):
                    await leader()
                else:  # a hot standby: the source and the once-per-deployment jobs start on takeover
                    tg.start_soon(_standby, lock, leader)
            task_status.started(parts)


async def _standby(lock: SourceLock | PgSourceLock, leader) -> None:
    await lock.acquire()
    await leader()


async def _lead(tg, settings: Settings, store, ingest, workers, review, poster, server, parts) -> None:
    """Start what exactly one process runs: the source, from the cursor committed on disk, and
    the jobs that must not run twice (triage, notifications, transparency posts)."""
    if review.triage is not None:
        tg.start_soon(supervised, "triage", review.triage.run)
    if review.notifier is not None:
        tg.start_soon(supervised, "notify", review.notifier.run)
    if poster is not None:
        tg.start_soon(supervised, "transparency", poster.run)
        server.metrics.registry.register(TransparencyCollector(poster))
    source, watched = ingest
    if source is None:
        return
    watched.update(await store.known_dids())  # read now: a standby's takeover sees what the last holder added
    pipeline = IngestPipeline(store, source.name, on_commit=workers.wake)
    server.metrics.registry.register(IngestCollector(source, pipeline, workers))
    log.info("ingest.starting", source=source.name, cursor=await store.cursor(source.name),
             collections=list(settings.collections))
    tg.start_soon(supervised, "ingest_flusher", pipeline.run_flusher)
    run_ingest, before_restart = _ingest_task(store, source, pipeline, watched)
    tg.start_soon(partial(supervised, "ingest", run_ingest, before_restart=before_restart))
    tg.start_soon(_keep_lead, parts["lock"])
    parts["pipeline"] = pipeline


async def _keep_lead(lock: SourceLock | PgSourceLock) -> None:
    """Stop the daemon if it loses the source lock (a PostgreSQL session that ended): a standby
    may already read the source, and two readers would both commit the same events."""
    await lock.watch()
    raise SourceLockLost(lock.holder)


async def _open_reports(stack: AsyncExitStack, settings: Settings, review: ReviewServices, client):
    """createReport's parts: the reports table, and the service-JWT verifier (issuer keys from
    DID documents through the vetted `client`, nonces in the database)."""
    store = await stack.enter_async_context(open_report_store(settings))  # SQLite, or PostgreSQL (store/open.py)
    nonces = await stack.enter_async_context(open_nonce_store(settings))
    verifier = ServiceAuthVerifier(settings.did, DidKeyResolver(client, settings.plc_url), nonces)
    desk = ReportDesk(review.desk, store, collections=settings.collections)
    review.reports = desk
    return desk, verifier


async def _ingest_status(store, source, workers, role: Role, lock: SourceLock | PgSourceLock) -> dict:
    return {
        "role": role.name,
        "ingest": {
            "leader": lock.held,  # this process holds the source (False: a standby, or not an ingest role)
            "source": source.name if source else None,
            "cursor": await store.cursor(source.name) if source else None,
            "endpoint": source.endpoint if source else None,
            "stats": source.stats.as_dict() if source else {},
        },
        "queue": await store.counts(),
        "workers": dict(workers.stats),
    }


def _ingest_task(store, source, pipeline, watched: set[str]):
    """The source's run and what a restart after a failure does first.

    Each run starts from the cursor committed on disk, never from what a failed run held in
    memory: a batch whose commit failed is read again, and the next commit cannot carry a
    cursor past events it does not hold.
    """
    sink = _tracking_sink(pipeline, watched)

    async def run() -> None:
        await source.run(sink, await store.cursor(source.name))

    return run, pipeline.reset


def _tracking_sink(pipeline, watched: set[str]):
    """The pipeline's sink, adding the DIDs of new tracks to `watched` (whose identity events we keep)."""

    async def sink(decoded) -> None:
        for ev in decoded.events:
            if isinstance(ev, TrackEvent):
                watched.add(ev.did)
        await pipeline.sink(decoded)

    return sink


async def run_forever(settings: Settings) -> None:
    """`firehose-mod run` until SIGTERM or SIGINT."""
    raise_open_file_limit()
    async with anyio.create_task_group() as tg:
        tg.start_soon(_cancel_on_signal, tg.cancel_scope)
        await tg.start(run_daemon, settings)


async def _cancel_on_signal(scope: anyio.CancelScope) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log.info("daemon.stopping", signal=signal.Signals(signum).name)
            scope.cancel()
            return
