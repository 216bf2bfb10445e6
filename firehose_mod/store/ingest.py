"""The ingest side of the database: source cursors, tracks, the scan queue, dead letters.

`IngestStore.commit` writes a batch of events and advances the source cursor in ONE
transaction, so the cursor never runs ahead of the work it covers and a crash between
two batches repeats at most work that is then recognised as already done:
- a track version is applied only if it is newer than the one stored (by repo `rev`),
- a scan job is unique by (uri, cid, operation),
- repo events are unique by (source, cursor, did, kind).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass

from firehose_mod.ingest.events import DeadLetter, RepoEvent, TrackEvent
from firehose_mod.labels.model import now_iso
from firehose_mod.store.db import Store


@dataclass(frozen=True, slots=True)
class CommitResult:
    enqueued: int
    duplicates: int
    dead: int


@dataclass(frozen=True, slots=True)
class ScanJob:
    id: int
    uri: str
    cid: str
    operation: str
    attempts: int
    record: dict | None  # the track's latest known record
    current_cid: str | None = None  # the track's latest known cid (None: unknown)
    deleted: bool = False


class IngestStore(Store):
    """Typed access to the ingest tables; one writer connection."""

    async def cursor(self, source: str) -> int | None:
        """The saved cursor of `source`, or None if it never committed."""
        async with self._reading("SELECT cursor FROM source_cursors WHERE source = ?", (source,)) as cur:
            row = await cur.fetchone()
        return row[0] if row else None

    async def commit(
        self, source: str, cursor: int | None, events: Sequence[TrackEvent | RepoEvent],
        dead: Sequence[DeadLetter] = (), *, rescan: bool = False,
    ) -> CommitResult:
        """Apply `events`, keep `dead` letters and advance `source`'s cursor, atomically.

        With `rescan` (a replay), a version that is already known is scanned again.
        """
        async with self._lock:
            return await self._commit(source, cursor, events, dead, rescan)

    async def _commit(self, source, cursor, events, dead, rescan=False) -> CommitResult:
        db = self._db
        now = now_iso()
        enqueued = duplicates = 0
        async with self._transaction():
            for ev in events:
                if isinstance(ev, TrackEvent):
                    if await self._apply_track(ev, source, now, rescan):
                        enqueued += 1
                    else:
                        duplicates += 1
                else:
                    cur = await db.execute(
                        "INSERT OR IGNORE INTO repo_events (did, kind, active, status, handle, source, cursor, created)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        (ev.did, ev.kind, None if ev.active is None else int(ev.active), ev.status, ev.handle,
                         source, ev.cursor, now),
                    )
                    if cur.rowcount == 0:
                        duplicates += 1
            for d in dead:
                await db.execute(
                    "INSERT INTO dead_letters (source, cursor, reason, detail, did, uri, raw, created)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (source, d.cursor, d.reason, d.detail[:2000], d.did, d.uri, d.raw[:65536], now),
                )
            if cursor is not None:
                await db.execute(
                    "INSERT INTO source_cursors (source, cursor, updated) VALUES (?, ?, ?)"
                    " ON CONFLICT (source) DO UPDATE SET cursor = max(cursor, excluded.cursor), updated = excluded.updated",
                    (source, cursor, now),
                )
        return CommitResult(enqueued, duplicates, len(dead))

    async def _apply_track(self, ev: TrackEvent, source: str, now: str, rescan: bool = False) -> bool:
        """Record the event and enqueue its scan; False when it is already known or older."""
        db = self._db
        async with db.execute("SELECT cid, rev, deleted FROM tracks WHERE uri = ?", (ev.uri,)) as cur:
            row = await cur.fetchone()
        if row is not None:
            cid, rev, deleted = row
            if rescan and ev.operation != "delete" and not deleted and cid == ev.cid:
                return await self._enqueue_rescan(ev, source, now)
            if ev.rev and rev and ev.rev <= rev:
                return False  # a replayed or out-of-order event: a newer version is applied
            if not ev.rev and rev:
                return False  # backfill never overrides what a live source applied
            if ev.operation == "delete" and deleted:
                return False
            if ev.operation != "delete" and not deleted and cid == ev.cid:
                return False  # same version: an update that changed nothing
        deleted = ev.operation == "delete"
        await db.execute(
            "INSERT INTO tracks (uri, did, rkey, cid, rev, record, deleted, first_seen, updated)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (uri) DO UPDATE SET cid = excluded.cid,"
            " rev = excluded.rev, record = coalesce(excluded.record, tracks.record), deleted = excluded.deleted,"
            " updated = excluded.updated",
            (ev.uri, ev.did, ev.rkey, ev.cid, ev.rev, None if deleted else json.dumps(ev.record),
             int(deleted), now, now),
        )
        cur = await db.execute(
            "INSERT OR IGNORE INTO scan_jobs (uri, cid, operation, source, cursor, created) VALUES (?, ?, ?, ?, ?, ?)",
            (ev.uri, ev.cid or "", ev.operation, source, ev.cursor, now),
        )
        return cur.rowcount > 0

    async def _enqueue_rescan(self, ev: TrackEvent, source: str, now: str) -> bool:
        """Queue the current version for another scan (again, if an earlier rescan finished)."""
        cur = await self._db.execute(
            "INSERT INTO scan_jobs (uri, cid, operation, source, cursor, created) VALUES (?, ?, 'rescan', ?, ?, ?)"
            " ON CONFLICT (uri, cid, operation) DO UPDATE SET state = 'pending', attempts = 0, not_before = 0,"
            " error = NULL, source = excluded.source, cursor = excluded.cursor"
            " WHERE scan_jobs.state IN ('done', 'failed')",
            (ev.uri, ev.cid or "", source, ev.cursor, now),
        )
        return cur.rowcount > 0

    async def tracks_page(self, after_uri: str, limit: int, *, since: str | None = None,
                          uris: list[str] | None = None) -> list[tuple[str, str, dict]]:
        """(uri, cid, record) of live tracks after `after_uri` in uri order: a rescan's pages."""
        sql = "SELECT uri, cid, record FROM tracks WHERE deleted = 0 AND record IS NOT NULL AND uri > ?"
        params: list = [after_uri]
        if since is not None:
            sql += " AND updated >= ?"
            params.append(since)
        if uris:
            sql += f" AND uri IN ({', '.join('?' * len(uris))})"
            params += uris
        async with self._reading(sql + " ORDER BY uri LIMIT ?", (*params, limit)) as cur:
            return [(u, c or "", json.loads(r)) for u, c, r in await cur.fetchall()]

    async def rescan_state(self, key: str) -> dict | None:
        async with self._reading("SELECT last_uri, checked, changed, finished FROM rescans WHERE key = ?",
                                    (key,)) as cur:
            row = await cur.fetchone()
        return None if row is None else dict(zip(("last_uri", "checked", "changed", "finished"), row))

    async def save_rescan(self, key: str, last_uri: str, checked: int, changed: int, finished: bool) -> None:
        now = now_iso()
        await self._write(
            "INSERT INTO rescans (key, last_uri, checked, changed, finished, started, updated)"
            " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (key) DO UPDATE SET last_uri = excluded.last_uri,"
            " checked = excluded.checked, changed = excluded.changed, finished = excluded.finished,"
            " updated = excluded.updated",
            (key, last_uri, checked, changed, int(finished), now, now),
        )

    async def known_dids(self) -> set[str]:
        """DIDs that have published tracks: whose identity and account events we keep."""
        async with self._reading("SELECT DISTINCT did FROM tracks") as cur:
            return {r[0] for r in await cur.fetchall()}

    # -- the scan queue ---------------------------------------------------------------------
    async def requeue_running(self) -> int:
        """Put jobs left 'running' by a crash or a stop back to 'pending'; returns how many."""
        return await self._write("UPDATE scan_jobs SET state = 'pending' WHERE state = 'running'")

    async def claim(self, limit: int) -> list[ScanJob]:
        """Mark up to `limit` due pending jobs as running and return them, oldest first."""
        async with self._lock:
            return await self._claim(limit)

    async def _claim(self, limit: int) -> list[ScanJob]:
        db = self._db
        async with self._transaction():
            async with db.execute(
                "SELECT j.id, j.uri, j.cid, j.operation, j.attempts, t.record, t.cid, t.deleted FROM scan_jobs j"
                " LEFT JOIN tracks t ON t.uri = j.uri"
                " WHERE j.state = 'pending' AND j.not_before <= ? ORDER BY j.id LIMIT ?",
                (time.time(), limit),
            ) as cur:
                rows = await cur.fetchall()
            await db.executemany(
                "UPDATE scan_jobs SET state = 'running', attempts = attempts + 1 WHERE id = ?", [(r[0],) for r in rows]
            )
        return [ScanJob(r[0], r[1], r[2], r[3], r[4] + 1, json.loads(r[5]) if r[5] else None, r[6], bool(r[7]))
                for r in rows]

    async def finish(self, job_id: int) -> None:
        await self._write(
            "UPDATE scan_jobs SET state = 'done', finished = ?, error = NULL WHERE id = ?", (now_iso(), job_id)
        )

    async def retry_later(self, job_id: int, error: str, delay: float, *, give_up: bool = False) -> None:
        """Record a failure: back to pending after `delay` seconds, or 'failed' for good."""
        await self._write(
            "UPDATE scan_jobs SET state = ?, error = ?, not_before = ? WHERE id = ?",
            ("failed" if give_up else "pending", error[:2000], time.time() + delay, job_id),
        )

    async def counts(self) -> dict[str, int]:
        """Jobs by state, dead letters and tracks: for status and metrics."""
        out: dict[str, int] = {"pending": 0, "running": 0, "done": 0, "failed": 0}
        async with self._reading("SELECT state, count(*) FROM scan_jobs GROUP BY state") as cur:
            out.update({state: n for state, n in await cur.fetchall()})
        async with self._reading("SELECT count(*) FROM dead_letters") as cur:
            out["dead_letters"] = (await cur.fetchone())[0]
        async with self._reading("SELECT count(*) FROM tracks WHERE deleted = 0") as cur:
            out["tracks"] = (await cur.fetchone())[0]
        return out

    async def dead_letters(self, limit: int = 50) -> list[dict]:
        async with self._reading(
            "SELECT id, source, cursor, reason, detail, did, uri, created FROM dead_letters ORDER BY id DESC LIMIT ?",
            (limit,),
        ) as cur:
            cols = [c[0] for c in cur.description]
            return [dict(zip(cols, r)) for r in await cur.fetchall()]

    async def jobs(self, uri: str) -> list[dict]:
        async with self._reading(
            "SELECT id, uri, cid, operation, state, attempts, error FROM scan_jobs WHERE uri = ? ORDER BY id", (uri,)
        ) as cur:
            cols = [c[0] for c in cur.description]
            return [dict(zip(cols, r)) for r in await cur.fetchall()]
