"""The durable scan queue: one job per (uri, cid, operation), claimed by the scan workers.

A job is `pending` (due at `not_before`), `running` (claimed), `done` or `failed` (for good).
Jobs are enqueued by the ingest commit, in the same transaction as the events behind them.

Several scan processes can share the queue (`run --role scan`): a claim is a lease held by a
named worker until `lease_until`, renewed while the job runs (`renew`). A job whose lease ran
out (its process died or hung) is claimed again by whoever asks next, and counts an attempt.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from firehose_mod.events import TrackEvent
from firehose_mod.labels.model import now_iso
from firehose_mod.store.db import Store


# The live tracks of :did whose latest policy decision (the highest id with origin 'policy') was on
# their current version and found the media unavailable. Decisions have no index by uri (migration
# 18, issue 19): a track's decisions with a label are found through its labels (label_state, the
# label_prev chains, decisions_by_label), the others through decisions_unlabelled; the latest of
# both per uri is what `SELECT max(id) FROM decisions WHERE uri = t.uri AND origin = 'policy'` gave.
# The tracks are read in tracks_did order (did, uri), as before, so the jobs get their ids in that order.
_UNAVAILABLE_RESCANS = (  # INSERT first: Python's sqlite3 gives a rowcount only to a statement that starts so
    "INSERT INTO scan_jobs (uri, cid, operation, source, cursor, created)"
    " WITH RECURSIVE live(uri) AS (SELECT uri FROM tracks WHERE did = :did AND deleted = 0"
    "  AND record IS NOT NULL AND cid IS NOT NULL),"
    " chain(uri, seq) AS (SELECT s.uri, s.seq FROM live t CROSS JOIN label_state s ON s.uri = t.uri"
    "  UNION ALL SELECT c.uri, p.prev FROM chain c JOIN label_prev p ON p.seq = c.seq),"
    " latest(uri, id) AS (SELECT uri, max(id) FROM ("
    "  SELECT d.uri AS uri, d.id AS id FROM chain c CROSS JOIN decisions d ON d.label_seq = c.seq"
    "   WHERE d.uri = c.uri AND d.origin = 'policy'"
    "  UNION ALL SELECT d.uri, d.id FROM live t CROSS JOIN decisions d ON d.uri = t.uri AND d.label_seq IS NULL"
    "   WHERE d.origin = 'policy') GROUP BY uri)"
    " SELECT t.uri, t.cid, 'rescan', :source, :cursor, :now FROM tracks t"
    " CROSS JOIN latest m ON m.uri = t.uri CROSS JOIN decisions d ON d.id = m.id"
    " WHERE t.did = :did AND t.deleted = 0 AND t.record IS NOT NULL AND t.cid IS NOT NULL"
    " AND d.cid = t.cid AND d.evidence LIKE '%\"media-unavailable\"%'"
    " AND EXISTS (SELECT 1 FROM json_each(d.evidence) f"
    "             WHERE json_extract(f.value, '$.kind') = 'media-unavailable')"
    " ON CONFLICT (uri, cid, operation) DO UPDATE SET state = 'pending', attempts = 0, not_before = 0,"
    " error = NULL, source = excluded.source, cursor = excluded.cursor"
    " WHERE scan_jobs.state IN ('done', 'failed')"
)


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


class ScanQueue(Store):
    """The `scan_jobs` table."""

    async def _enqueue(self, ev: TrackEvent, source: str, now: str) -> bool:
        """Queue the scan of a new version (inside the caller's transaction); False if it is queued."""
        cur = await self._db.execute(
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

    async def _enqueue_unavailable_rescans(self, did: str, source: str, cursor: int | None, now: str) -> int:
        """Queue a rescan of `did`'s live tracks whose latest scan of their current version found
        its media unavailable (inside the caller's transaction); returns how many were queued.

        A deactivated or taken-down account's PDS refuses its blobs (400 RepoDeactivated), which the
        scanners report as `media-unavailable` for good: when the account is active again, those
        versions are scanned again. A rescan already pending or running is left alone.
        """
        cur = await self._db.execute(_UNAVAILABLE_RESCANS, {"source": source, "cursor": cursor, "now": now, "did": did})
        return cur.rowcount

    async def requeue_running(self, worker: str | None = None) -> int:
        """Put jobs left 'running' back to 'pending'; returns how many. With no `worker` (the one
        scan process of `run --role all`), every running job; otherwise the jobs this worker held
        before a restart, and any whose lease ran out: never a job another live worker holds."""
        if worker is None:
            return await self._write("UPDATE scan_jobs SET state = 'pending' WHERE state = 'running'")
        return await self._write(
            "UPDATE scan_jobs SET state = 'pending' WHERE state = 'running' AND (worker = ? OR lease_until < ?)",
            (worker, time.time()))

    async def claim(self, limit: int, *, worker: str = "all", lease: float = 300.0) -> list[ScanJob]:
        """Lease up to `limit` jobs to `worker` for `lease` seconds and return them, oldest first:
        due pending jobs, and running jobs whose lease ran out."""
        async with self._lock:
            return await self._claim(limit, worker, lease)

    async def _claim(self, limit: int, worker: str, lease: float) -> list[ScanJob]:
        db = self._db
        now = time.time()
        async with self._transaction():
            async with db.execute(
                "SELECT j.id, j.uri, j.cid, j.operation, j.attempts, t.record, t.cid, t.deleted FROM scan_jobs j"
                " LEFT JOIN tracks t ON t.uri = j.uri WHERE j.id IN ("
                "  SELECT id FROM scan_jobs WHERE state = 'pending' AND not_before <= ?"
                "  UNION ALL SELECT id FROM scan_jobs WHERE state = 'running' AND lease_until < ?"
                "  ORDER BY id LIMIT ?) ORDER BY j.id",
                (now, now, limit),
            ) as cur:
                rows = await cur.fetchall()
            await db.executemany(
                "UPDATE scan_jobs SET state = 'running', attempts = attempts + 1, worker = ?, lease_until = ?"
                " WHERE id = ?", [(worker, now + lease, r[0]) for r in rows]
            )
        return [ScanJob(r[0], r[1], r[2], r[3], r[4] + 1, json.loads(r[5]) if r[5] else None, r[6], bool(r[7]))
                for r in rows]

    async def renew(self, job_ids: list[int], *, worker: str, lease: float) -> int:
        """Extend `worker`'s leases on `job_ids` that it still holds; returns how many of them
        another worker holds now (this one stalled past its lease)."""
        if not job_ids:
            return 0
        marks = ", ".join("?" for _ in job_ids)
        await self._write(
            f"UPDATE scan_jobs SET lease_until = ? WHERE id IN ({marks}) AND worker = ? AND state = 'running'",
            (time.time() + lease, *job_ids, worker))
        async with self._reading(
            f"SELECT count(*) FROM scan_jobs WHERE id IN ({marks}) AND state = 'running' AND worker != ?",
            (*job_ids, worker),
        ) as cur:
            (taken,) = await cur.fetchone()
        return taken

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

    async def job_counts(self) -> dict[str, int]:
        """Jobs by state (pending, running, done, failed)."""
        out: dict[str, int] = {"pending": 0, "running": 0, "done": 0, "failed": 0}
        async with self._reading("SELECT state, count(*) FROM scan_jobs GROUP BY state") as cur:
            out.update({state: n for state, n in await cur.fetchall()})
        return out

    async def jobs(self, uri: str) -> list[dict]:
        """Every job of `uri`, oldest first: for explain and the tests."""
        async with self._reading(
            "SELECT id, uri, cid, operation, state, attempts, error FROM scan_jobs WHERE uri = ? ORDER BY id", (uri,)
        ) as cur:
            cols = [c[0] for c in cur.description]
            return [dict(zip(cols, r)) for r in await cur.fetchall()]
