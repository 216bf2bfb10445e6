"""Backfill: queue every `fm.plyr.track` record that already exists, repo by repo.

Repos come from a relay's `com.atproto.sync.listReposByCollection` (from `listRepos` on a
server without it, such as a single PDS; or from an explicit DID list); each DID is resolved to its PDS and its records are paged with
`com.atproto.repo.listRecords`. Every page is committed to the scan queue through an
`IngestPipeline` *before* its listRecords cursor is saved in the backfill progress table,
so an interrupted run resumes each repo where it stopped and re-reads at most one page,
which the ingest store's idempotence absorbs. Upstream failures (unreachable PDS, 5xx,
DID documents without a PDS, malformed records) are retried, logged, counted and
recorded; they never stop the other repos.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

import anyio
import httpx
import structlog

from firehose_mod.config import Settings
from firehose_mod.ingest.events import TRACK_COLLECTION, Decoded
from firehose_mod.ingest.pipeline import IngestPipeline
from firehose_mod.ingest.records import (
    SOURCE,
    FetchError,
    _http_base,
    decode_records_page,
    get_json,
    retrying,
)
from firehose_mod.ingest.resolve import DidResolver, ResolveError, check_did
from firehose_mod.scan.netguard import outbound_client, warn_if_opened
from firehose_mod.store.backfill import BackfillRepo, BackfillStore
from firehose_mod.store.ingest import IngestStore
from firehose_mod.store.open import open_backfill_store, open_ingest_store
from firehose_mod.store.pg.backfill import PgBackfillStore
from firehose_mod.store.pg.ingest import PgIngestStore

log = structlog.get_logger(__name__)

DEFAULT_RELAY = "https://relay1.us-east.bsky.network"
PAGE_LIMIT = 100  # listRecords maximum
RELAY_PAGE_LIMIT = 1000
T = TypeVar("T")


class PdsResolver(Protocol):
    async def resolve_pds(self, did: str) -> str: ...


@dataclass(frozen=True, slots=True)
class BackfillProgress:
    """Counts after a page (or a repo's end): repos over the run's scope, records for this run."""

    repos_total: int
    repos_done: int
    repos_failed: int
    records_seen: int
    enqueued: int
    duplicates: int
    dead_letters: int
    elapsed: float
    did: str | None = None  # the repo whose page this was


@dataclass(frozen=True, slots=True)
class BackfillReport:
    """The outcome of one run. Repo counts cover the run's scope (the DID list, or every known
    repo) as stored at the end; record counts cover what this run read."""

    repos_total: int
    repos_done: int
    repos_failed: int
    repos_pending: int  # left for a later run (only after an interruption)
    records_seen: int
    enqueued: int
    duplicates: int
    dead_letters: int
    invalid_dids: int  # listed by the relay but not a did:plc/did:web DID (recorded as failed)
    elapsed: float
    discovery_error: str | None = None  # the relay could not be paged to the end
    failures: list[tuple[str, str]] = field(default_factory=list)  # (did, error) failed in this run


class _Run:
    """State of one backfill run: stores, counters, the progress callback."""

    def __init__(self, client, resolver, ingest: IngestStore | PgIngestStore, repos: BackfillStore | PgBackfillStore,
                 progress, attempts: int, base: float):
        self.client, self.resolver, self.ingest, self.repos = client, resolver, ingest, repos
        self.on_progress, self.attempts, self.base = progress, attempts, base
        self.started = time.monotonic()
        self.counts = {"pending": 0, "done": 0, "failed": 0, "total": 0}
        self.stats = {"records_seen": 0, "enqueued": 0, "duplicates": 0, "dead_letters": 0, "invalid_dids": 0}
        self.failures: list[tuple[str, str]] = []

    def progress(self, did: str | None) -> None:
        if self.on_progress is not None:
            self.on_progress(BackfillProgress(
                self.counts["total"], self.counts["done"], self.counts["failed"], self.stats["records_seen"],
                self.stats["enqueued"], self.stats["duplicates"], self.stats["dead_letters"],
                time.monotonic() - self.started, did,
            ))

    async def discover(self, relay: str) -> None:
        """Page the relay's listReposByCollection into the progress table.

        A server that refuses that method for good (a PDS, which answers 401 AuthMissing as it
        would proxy the call to an appview, or 501; a relay that predates it: 404) is paged with
        com.atproto.sync.listRepos instead: every active repo it hosts is read, and a repo
        without tracks costs one empty listRecords page."""
        try:
            await self._page_repos(relay, "listReposByCollection", {"collection": TRACK_COLLECTION})
        except FetchError as first:
            if first.transient or first.status is None:
                raise
            log.warning("backfill.listing_all_repos", relay=relay, error=str(first)[:300],
                        hint="this server cannot list repos by collection: reading every repo it lists")
            try:
                await self._page_repos(relay, "listRepos", {})
            except FetchError as second:
                raise FetchError(f"{first}; then {second}", transient=second.transient,
                                 status=second.status) from None

    async def _page_repos(self, relay: str, method: str, params: dict) -> None:
        url, cursor, found = f"{relay}/xrpc/com.atproto.sync.{method}", None, 0
        while True:
            query = {**params, "limit": RELAY_PAGE_LIMIT, **({"cursor": cursor} if cursor else {})}
            body = await retrying(method, lambda: get_json(self.client, url, query, method),
                                  attempts=self.attempts, base=self.base)
            repos, next_cursor = body.get("repos"), body.get("cursor")
            if not isinstance(repos, list) or not (next_cursor is None or isinstance(next_cursor, str)):
                raise FetchError(f"{method}: malformed response from {relay}: expected {{repos, cursor?}}")
            valid = []
            for item in repos:
                if isinstance(item, dict) and item.get("active") is False:
                    continue  # listRepos: a deactivated, suspended or taken-down account
                did = item.get("did") if isinstance(item, dict) else item
                try:
                    valid.append(check_did(did))
                except ResolveError as exc:
                    self.stats["invalid_dids"] += 1
                    log.warning("backfill.invalid_did", relay=relay, error=str(exc))
                    await self.repos.add_failed(str(did), str(exc))
            found += len(repos)
            new = await self.repos.add_dids(valid)
            log.info("backfill.discovered", relay=relay, method=method, repos=len(repos), new=new, total=found)
            if not next_cursor or not repos or next_cursor == cursor:
                return
            cursor = next_cursor

    async def read_repo(self, repo: BackfillRepo) -> None:
        """Read one repo to its end (or to a failure, which is recorded, never raised)."""
        bound = log.bind(did=repo.did)
        try:
            pds = await retrying("resolve", lambda: self.resolver.resolve_pds(repo.did),
                                 attempts=self.attempts, base=self.base)
            await self.repos.start(repo.did, pds)
            bound = bound.bind(pds=pds)
            bound.info("backfill.repo_started", cursor=repo.cursor)
            await self._read_pages(repo.did, pds, repo.cursor)
        except (FetchError, ResolveError) as exc:
            await self._failed(repo.did, str(exc), bound)

    async def _failed(self, did: str, error: str, bound) -> None:
        await self.repos.failed(did, error)
        self.counts["failed"] += 1
        self.counts["pending"] -= 1
        self.failures.append((did, error))
        bound.warning("backfill.repo_failed", error=error, hint="retried by a later run with --retry-failed")
        self.progress(did)

    async def _read_pages(self, did: str, pds: str, cursor: str | None) -> None:
        pipeline = IngestPipeline(self.ingest, SOURCE)
        url = f"{pds}/xrpc/com.atproto.repo.listRecords"
        records = 0
        while True:
            params = {"repo": did, "collection": TRACK_COLLECTION, "limit": PAGE_LIMIT,
                      **({"cursor": cursor} if cursor else {})}
            body = await retrying("listRecords", lambda: get_json(self.client, url, params, "listRecords"),
                                  attempts=self.attempts, base=self.base)
            try:
                page = decode_records_page(did, body, pds)
            except FetchError:
                raise
            except Exception as exc:  # upstream data that slipped past the checks: this repo fails, not the run
                log.exception("backfill.decode_crashed", did=did, pds=pds)
                raise FetchError(f"cannot decode listRecords page from {pds}: {type(exc).__name__}: {exc}"[:500])
            before = dict(pipeline.stats)
            if page.events or page.dead:  # a letter kept by an earlier read of the page is kept once
                await pipeline.sink(Decoded(events=list(page.events), dead=list(page.dead)))
                await pipeline.flush()  # the page is durable before its cursor is saved
            for key in ("enqueued", "duplicates", "dead_letters"):
                self.stats[key] += pipeline.stats[key] - before[key]
            self.stats["records_seen"] += page.count
            records += page.count
            last = page.cursor is None or page.count == 0 or page.cursor == cursor
            if page.count and page.cursor == cursor:
                log.warning("backfill.cursor_stuck", did=did, pds=pds, cursor=cursor,
                            hint="the PDS returned the cursor it was given; the repo is marked done")
            if last:
                await self.repos.done(did, page.count)
                self.counts["done"] += 1
                self.counts["pending"] -= 1
                log.info("backfill.repo_done", did=did, pds=pds, records=records,
                         enqueued=pipeline.stats["enqueued"], dead_letters=pipeline.stats["dead_letters"])
            else:
                await self.repos.progress(did, page.cursor, page.count)
            self.progress(did)
            if last:
                return
            cursor = page.cursor

    async def work(self, receive) -> None:
        async with receive:
            async for repo in receive:
                await self.read_repo(repo)


async def run_backfill(
    settings: Settings,
    *,
    dids: list[str] | None = None,
    relay_url: str | None = None,
    client: httpx.AsyncClient | None = None,
    resolver: PdsResolver | None = None,
    progress: Callable[[BackfillProgress], None] | None = None,
    concurrency: int = 4,
    retry_failed: bool = False,
    restart: bool = False,
    plc_url: str = "https://plc.directory",
    max_attempts: int = 4,
    retry_base: float = 0.5,
) -> BackfillReport:
    """Queue every existing track for scanning; resumable, and safe to run again.

    dids: read these repos only (no relay); otherwise page `relay_url` (default
      DEFAULT_RELAY; ws(s):// is accepted) and read every pending repo known.
    retry_failed: repos that failed in an earlier run are tried again (from their cursor).
    restart: forget the saved progress of the repos in scope and read them from the start
      (what is already queued is recognised as such and not queued twice).
    progress: called after every page and every failed repo, e.g. to draw a progress bar;
      an exception it raises stops the run (committed pages and cursors are kept) and is
      re-raised as is. Cancelling the run is just as safe: the next run resumes.
    client: defaults to `outbound_client(settings)`, which refuses loopback, private and other
      internal addresses unless `[media] allow_networks` or `allow_loopback_for_testing_only` opens
      them (the relay's, the PLC's too).
    concurrency: repos read at the same time. max_attempts/retry_base: per HTTP call,
      transient errors are retried with jittered backoff from retry_base seconds.
    Raises ValueError for an invalid DID in `dids` or an invalid relay URL.
    """
    if concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    if dids is not None:
        bad = []
        for did in dids:
            try:
                check_did(did)
            except ResolveError as exc:
                bad.append(str(exc))
        if bad:
            raise ValueError("; ".join(bad))
        dids = list(dict.fromkeys(dids))
    relay = None if dids is not None else _http_base(relay_url or DEFAULT_RELAY)
    warn_if_opened(settings, log, command="backfill")
    own_client = client is None
    if client is None:  # vetted: PDS endpoints come from strangers' DID documents
        client = outbound_client(settings, user_agent="firehose-mod-backfill")
    resolver = resolver or DidResolver(client, plc_url)
    try:
        async with open_ingest_store(settings) as ingest, open_backfill_store(settings) as repos:
            run = _Run(client, resolver, ingest, repos, progress, max_attempts, retry_base)
            return await _run(run, dids, relay, retry_failed=retry_failed, restart=restart, concurrency=concurrency)
    finally:
        if own_client:
            with anyio.CancelScope(shield=True):
                await client.aclose()


async def _run(run: _Run, dids: list[str] | None, relay: str | None, *, retry_failed: bool, restart: bool,
               concurrency: int) -> BackfillReport:
    discovery_error = None
    if dids is not None:
        await run.repos.add_dids(dids)
    else:
        try:
            await run.discover(relay)
        except FetchError as exc:  # the repos found so far (and earlier) are still read
            discovery_error = str(exc)
            log.error("backfill.discovery_failed", relay=relay, error=discovery_error,
                      hint="check the relay URL, or pass DIDs explicitly; repos already known are read")
    if restart:
        await run.repos.restart(dids)
    elif retry_failed:
        await run.repos.retry_failed(dids)
    run.counts = await run.repos.counts(dids)
    log.info("backfill.starting", source=relay or "did list", **run.counts)
    try:
        await _read_all(run, dids, concurrency)
    except BaseExceptionGroup as group:  # e.g. the progress callback raised: re-raise it as it was
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise
    final = await run.repos.counts(dids)
    report = BackfillReport(
        final["total"], final["done"], final["failed"], final["pending"], run.stats["records_seen"],
        run.stats["enqueued"], run.stats["duplicates"], run.stats["dead_letters"], run.stats["invalid_dids"],
        time.monotonic() - run.started, discovery_error, run.failures,
    )
    log.info("backfill.finished", **{k: v for k, v in dataclasses.asdict(report).items() if k != "failures"})
    return report


async def _read_all(run: _Run, dids: list[str] | None, concurrency: int) -> None:
    """Feed the pending repos in scope to `concurrency` workers."""
    send, receive = anyio.create_memory_object_stream[BackfillRepo](0)
    async with anyio.create_task_group() as tg:
        for _ in range(concurrency):
            tg.start_soon(run.work, receive.clone())
        receive.close()
        async with send:
            if dids is not None:
                for did in dids:
                    repo = await run.repos.get(did)
                    if repo is not None and repo.state == "pending":
                        await send.send(repo)
            else:
                after = None
                while batch := await run.repos.next_pending(after, 100):
                    for repo in batch:
                        await send.send(repo)
                    after = batch[-1].did
