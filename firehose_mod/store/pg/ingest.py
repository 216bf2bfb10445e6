"""The ingest store on PostgreSQL: store/ingest.py's `IngestStore`, shared by several machines.

The same public methods and the same rules (read store/ingest.py's docstring): `commit` writes
a batch and advances the source cursor in ONE transaction; a track version is applied only if
it is newer (`tracks.verdict`); a scan job is unique by (uri, cid, operation); repo events by
(source, cursor, did, kind); dead letters by their fingerprint; an account made active again
queues the rescan of its tracks whose media was unavailable.

Every commit takes a transaction-level advisory lock (INGEST_LOCK) first: commits of the
ingest process, a backfill and a replay run one at a time, as on SQLite's single writer, so a
version check and the write it allows can never interleave with another commit. Claims do
not take it (store/pg/scan_queue.py).
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import structlog

from firehose_mod.events import DeadLetter, RepoEvent, TrackEvent
from firehose_mod.labels.model import now_iso
from firehose_mod.store.dead_letters import MAX_DETAIL, MAX_RAW, fingerprint
from firehose_mod.store.ingest import CommitResult, _activates
from firehose_mod.store.pg.pool import PgPoolStore
from firehose_mod.store.pg.scan_queue import (
    PgScanQueue,
    enqueue,
    enqueue_rescan,
    enqueue_unavailable_rescans,
    rowcount,
)
from firehose_mod.store.pg.schema import INGEST_LOCK
from firehose_mod.store.tracks import verdict

__all__ = ["PgIngestStore"]

log = structlog.get_logger(__name__)


class PgIngestStore(PgScanQueue, PgPoolStore):
    """The ingest tables over a PostgreSQL database; a small connection pool (store/pg/pool.py)."""

    APPLICATION = "firehose-mod ingest"
    CONNECTIONS = 4

    # -- the commit -------------------------------------------------------------------------
    async def cursor(self, source: str) -> int | None:
        """The saved cursor of `source`, or None if it never committed."""
        return await self._pool.fetchval("SELECT cursor FROM source_cursors WHERE source = $1", source)

    async def set_cursors(self, rows: dict[str, int | None]) -> None:
        """Set (or, with None, delete) `source_cursors` rows in one transaction, whatever they held
        (a replay's window; `commit` only ever moves a cursor forward)."""
        now = now_iso()
        async with self._pool.acquire() as db, db.transaction():
            for source, cursor in rows.items():
                if cursor is None:
                    await db.execute("DELETE FROM source_cursors WHERE source = $1", source)
                else:
                    await db.execute(
                        "INSERT INTO source_cursors (source, cursor, updated) VALUES ($1, $2, $3)"
                        " ON CONFLICT (source) DO UPDATE SET cursor = excluded.cursor, updated = excluded.updated",
                        source, cursor, now)

    async def commit(
        self, source: str, cursor: int | None, events: Sequence[TrackEvent | RepoEvent],
        dead: Sequence[DeadLetter] = (), *, rescan: bool = False,
    ) -> CommitResult:
        """Apply `events`, keep `dead` letters and advance `source`'s cursor, atomically.

        With `rescan` (a replay), a version that is already known is scanned again.
        """
        now = now_iso()
        enqueued = duplicates = kept = 0
        reactivated: list[tuple[str, int]] = []
        async with self._pool.acquire() as db, db.transaction():
            await db.execute("SELECT pg_advisory_xact_lock($1)", INGEST_LOCK)
            for ev in events:
                if isinstance(ev, TrackEvent):
                    new = await self._apply_track(db, ev, source, now, rescan)
                    enqueued += new
                else:
                    was_active = await self._account_active(db, ev.did) if _activates(ev) else None
                    new = await self._record_repo_event(db, ev, source, now)
                    if new and _activates(ev) and not was_active:
                        n = await enqueue_unavailable_rescans(db, ev.did, source, ev.cursor, now)
                        enqueued += n
                        if n:
                            reactivated.append((ev.did, n))
                duplicates += not new
            for d in dead:
                kept += await self._keep_dead_letter(db, source, d, now)
            if cursor is not None:
                await db.execute(
                    "INSERT INTO source_cursors (source, cursor, updated) VALUES ($1, $2, $3)"
                    " ON CONFLICT (source) DO UPDATE SET cursor = greatest(source_cursors.cursor, excluded.cursor),"
                    " updated = excluded.updated", source, cursor, now)
        for did, n in reactivated:  # logged once committed
            log.info("ingest.reactivated_rescan", did=did, count=n)
        return CommitResult(enqueued, duplicates, kept)

    async def _apply_track(self, db, ev: TrackEvent, source: str, now: str, rescan: bool) -> bool:
        """Record the event and enqueue its scan; False when it is already known or older."""
        row = await db.fetchrow("SELECT cid, rev, deleted FROM tracks WHERE uri = $1", ev.uri)
        what = verdict(ev, None if row is None else (row[0], row[1], int(row[2])), rescan)
        if what == "rescan":
            return await enqueue_rescan(db, ev, source, now)
        if what == "known":
            return False
        deleted = ev.operation == "delete"
        await db.execute(
            "INSERT INTO tracks (uri, did, rkey, cid, rev, record, deleted, first_seen, updated)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8) ON CONFLICT (uri) DO UPDATE SET cid = excluded.cid,"
            " rev = excluded.rev, record = coalesce(excluded.record, tracks.record), deleted = excluded.deleted,"
            " updated = excluded.updated",
            ev.uri, ev.did, ev.rkey, ev.cid, ev.rev, None if deleted else json.dumps(ev.record), deleted, now)
        return await enqueue(db, ev, source, now)

    async def _record_repo_event(self, db, ev: RepoEvent, source: str, now: str) -> bool:
        return rowcount(await db.execute(
            "INSERT INTO repo_events (did, kind, active, status, handle, source, cursor, created)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING",
            ev.did, ev.kind, ev.active, ev.status, ev.handle, source, ev.cursor, now)) > 0

    async def _account_active(self, db, did: str) -> bool | None:
        """The `active` of the DID's latest recorded account event (None: none recorded, or unknown)."""
        return await db.fetchval(
            "SELECT active FROM repo_events WHERE did = $1 AND kind = 'account' ORDER BY id DESC LIMIT 1", did)

    async def _keep_dead_letter(self, db, source: str, d: DeadLetter, now: str) -> bool:
        return rowcount(await db.execute(
            "INSERT INTO dead_letters (source, cursor, reason, detail, did, uri, raw, created, fingerprint)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (fingerprint) DO NOTHING",
            source, d.cursor, d.reason, d.detail[:MAX_DETAIL], d.did, d.uri, d.raw[:MAX_RAW], now, fingerprint(d))) > 0

    # -- reading ----------------------------------------------------------------------------
    async def counts(self) -> dict[str, int]:
        """Jobs by state, dead letters and tracks: for status and metrics."""
        return {**await self.job_counts(), "dead_letters": await self.dead_letter_count(),
                "tracks": await self.track_count()}

    async def known_dids(self) -> set[str]:
        """DIDs that have published tracks: whose identity and account events we keep."""
        return {r[0] for r in await self._pool.fetch("SELECT DISTINCT did FROM tracks")}

    async def track_count(self) -> int:
        """Live (not deleted) tracks."""
        return await self._pool.fetchval("SELECT count(*) FROM tracks WHERE NOT deleted")

    async def tracks_page(self, after_uri: str, limit: int, *, since: str | None = None,
                          uris: list[str] | None = None) -> list[tuple[str, str, dict]]:
        """(uri, cid, record) of live tracks after `after_uri` in uri order: a rescan's pages."""
        sql = "SELECT uri, cid, record FROM tracks WHERE NOT deleted AND record IS NOT NULL AND uri > $1"
        params: list = [after_uri]
        if since is not None:
            params.append(since)
            sql += f" AND updated >= ${len(params)}"
        if uris:
            params.append(uris)
            sql += f" AND uri = ANY(${len(params)}::text[])"
        params.append(limit)
        rows = await self._pool.fetch(sql + f" ORDER BY uri LIMIT ${len(params)}", *params)
        return [(u, c or "", json.loads(r)) for u, c, r in rows]

    async def rescan_state(self, key: str) -> dict | None:
        row = await self._pool.fetchrow("SELECT last_uri, checked, changed, finished FROM rescans WHERE key = $1", key)
        return None if row is None else {**dict(row), "finished": int(row["finished"])}

    async def save_rescan(self, key: str, last_uri: str, checked: int, changed: int, finished: bool) -> None:
        await self._pool.execute(
            "INSERT INTO rescans (key, last_uri, checked, changed, finished, started, updated)"
            " VALUES ($1, $2, $3, $4, $5, $6, $6) ON CONFLICT (key) DO UPDATE SET last_uri = excluded.last_uri,"
            " checked = excluded.checked, changed = excluded.changed, finished = excluded.finished,"
            " updated = excluded.updated", key, last_uri, checked, changed, bool(finished), now_iso())

    async def dead_letters(self, limit: int = 50) -> list[dict]:
        """The latest letters, newest first (without their raw bytes)."""
        rows = await self._pool.fetch(
            "SELECT id, source, cursor, reason, detail, did, uri, created FROM dead_letters ORDER BY id DESC LIMIT $1",
            limit)
        return [dict(r) for r in rows]

    async def dead_letter_count(self) -> int:
        return await self._pool.fetchval("SELECT count(*) FROM dead_letters")
