"""Wiring: open the key and the label log, run the feed and the server in one task group.

SIGTERM and SIGINT cancel the group; the server closes client connections (1001) and the
database is closed after the last write returned, so nothing committed is lost.
"""

from __future__ import annotations

import resource
import signal
from contextlib import asynccontextmanager
from collections.abc import AsyncIterator

import anyio
import structlog
from anyio.abc import TaskStatus

from firehose_mod.config import Settings
from firehose_mod.labels.signing import SigningKey
from firehose_mod.server.app import LabelServer
from firehose_mod.server.feed import LabelFeed
from firehose_mod.server.metrics import ServerMetrics
from firehose_mod.store import LabelLog

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
async def open_label_log(settings: Settings) -> AsyncIterator[LabelLog]:
    """The label log of `settings`, signing with its key (generated on first use)."""
    key = load_key(settings)
    label_log = await LabelLog.open(settings.db_path, key, settings.did, synchronous=settings.db_synchronous)
    try:
        yield label_log
    finally:
        await label_log.close()


async def run_server(
    settings: Settings, label_log: LabelLog, *, task_status: TaskStatus[LabelServer] = anyio.TASK_STATUS_IGNORED
) -> None:
    """Serve `label_log` until cancelled; reports the started server through `task_status`."""
    feed = LabelFeed(
        label_log,
        recent=settings.stream_recent_labels,
        page_size=settings.stream_page_size,
        poll_interval=settings.stream_poll_interval,
    )
    await feed.start()
    metrics = ServerMetrics(feed)
    label_log.on_commit(lambda written: metrics.labels_written.inc(len(written)))
    server = LabelServer(settings, feed, metrics)
    async with anyio.create_task_group() as tg:
        tg.start_soon(feed.run)
        await tg.start(server.serve)
        log.info("label_log.ready", head=feed.head, db=str(settings.db_path), key=label_log.key.did_key)
        task_status.started(server)


def raise_open_file_limit() -> None:
    """Each subscriber is a socket: lift the soft descriptor limit to the hard one (often 1024 -> more)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    log.info("daemon.open_files", limit=hard)


async def serve_forever(settings: Settings) -> None:
    """`firehose-mod serve`: the label server until SIGTERM or SIGINT."""
    raise_open_file_limit()
    async with open_label_log(settings) as label_log, anyio.create_task_group() as tg:
        tg.start_soon(_cancel_on_signal, tg.cancel_scope)
        await tg.start(run_server, settings, label_log)


async def _cancel_on_signal(scope: anyio.CancelScope) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log.info("daemon.stopping", signal=signal.Signals(signum).name)
            scope.cancel()
            return
