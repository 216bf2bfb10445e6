"""The scan queue on PostgreSQL: store/scan_queue.py's `ScanQueue`, with the same lease rules.

A claim is one statement: it picks due pending jobs and running jobs whose lease ran out with
`FOR UPDATE SKIP LOCKED` (two workers claiming at once never wait on, nor take, each other's
rows) and marks them running for the claiming worker. Lease times are epoch seconds of the
database's clock (`_NOW`), not of the machine asking: workers on several machines agree on
whose lease ran out whatever their clocks say.
"""

from __future__ import annotations

import json

import asyncpg

from firehose_mod.events import TrackEvent
from firehose_mod.labels.model import now_iso
from firehose_mod.store.scan_queue import ScanJob

_NOW = "extract(epoch FROM clock_timestamp())::double precision"

# Pending again, from scratch: a rescan of a version whose earlier rescan finished.
_RESET_FINISHED = (
    " ON CONFLICT (uri, cid, operation) DO UPDATE SET state = 'pending', attempts = 0, not_before = 0,"
    " error = NULL, source = excluded.source, cursor = excluded.cursor"
    " WHERE scan_jobs.state IN ('done', 'failed')"
)

_CLAIM = f"""
WITH picked AS (
    SELECT id FROM scan_jobs
    WHERE state IN ('pending', 'running')
      AND ((state = 'pending' AND not_before <= {_NOW}) OR (state = 'running' AND lease_until < {_NOW}))
    ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED
), claimed AS (
    UPDATE scan_jobs j SET state = 'running', attempts = j.attempts + 1, worker = $2, lease_until = {_NOW} + $3
    FROM picked WHERE j.id = picked.id
    RETURNING j.id, j.uri, j.cid, j.operation, j.attempts
)
SELECT c.id, c.uri, c.cid, c.operation, c.attempts, t.record, t.cid AS current_cid, t.deleted
FROM claimed c LEFT JOIN tracks t ON t.uri = c.uri ORDER BY c.id
"""


def rowcount(status: str) -> int:
    """The row count of an asyncpg command status ("INSERT 0 3", "UPDATE 2")."""
    return int(status.rsplit(" ", 1)[-1])


async def enqueue(db: asyncpg.Connection, ev: TrackEvent, source: str, now: str) -> bool:
    """Queue the scan of a new version (inside the caller's transaction); False if it is queued."""
    return rowcount(await db.execute(
        "INSERT INTO scan_jobs (uri, cid, operation, source, cursor, created) VALUES ($1, $2, $3, $4, $5, $6)"
        " ON CONFLICT (uri, cid, operation) DO NOTHING",
        ev.uri, ev.cid or "", ev.operation, source, ev.cursor, now)) > 0


async def enqueue_rescan(db: asyncpg.Connection, ev: TrackEvent, source: str, now: str) -> bool:
    """Queue the current version for another scan (again, if an earlier rescan finished)."""
    return rowcount(await db.execute(
        "INSERT INTO scan_jobs (uri, cid, operation, source, cursor, created) VALUES ($1, $2, 'rescan', $3, $4, $5)"
        + _RESET_FINISHED, ev.uri, ev.cid or "", source, ev.cursor, now)) > 0


async def enqueue_unavailable_rescans(db: asyncpg.Connection, did: str, source: str, cursor: int | None,
                                      now: str) -> int:
    """store/scan_queue.py's `_enqueue_unavailable_rescans` over the PostgreSQL decisions table
    (store/pg/decisions.py): evidence is JSON text, read as jsonb. The LIKE first skips parsing
    the evidence of every decision that cannot match."""
    return rowcount(await db.execute(
        "INSERT INTO scan_jobs (uri, cid, operation, source, cursor, created)"
        " SELECT t.uri, t.cid, 'rescan', $1, $2, $3 FROM tracks t"
        " JOIN decisions d ON d.id = (SELECT max(id) FROM decisions WHERE uri = t.uri AND origin = 'policy')"
        " WHERE t.did = $4 AND NOT t.deleted AND t.record IS NOT NULL AND t.cid IS NOT NULL"
        " AND d.cid = t.cid AND d.evidence LIKE '%\"media-unavailable\"%'"
        " AND jsonb_path_exists(d.evidence::jsonb, '$[*] ? (@.kind == \"media-unavailable\")')"
        + _RESET_FINISHED, source, cursor, now, did))


class PgScanQueue:
    """The `scan_jobs` table; the host class gives `_pool` (an asyncpg pool)."""

    _pool: asyncpg.Pool

    async def requeue_running(self, worker: str | None = None) -> int:
        """As `ScanQueue.requeue_running`: with no `worker`, every running job; otherwise this
        worker's own and those whose lease ran out, never a job another live worker holds."""
        if worker is None:
            return rowcount(await self._pool.execute("UPDATE scan_jobs SET state = 'pending' WHERE state = 'running'"))
        return rowcount(await self._pool.execute(
            f"UPDATE scan_jobs SET state = 'pending' WHERE state = 'running' AND (worker = $1 OR lease_until < {_NOW})",
            worker))

    async def claim(self, limit: int, *, worker: str = "all", lease: float = 300.0) -> list[ScanJob]:
        """Lease up to `limit` jobs to `worker` for `lease` seconds and return them, oldest first:
        due pending jobs, and running jobs whose lease ran out (an attempt more each)."""
        rows = await self._pool.fetch(_CLAIM, limit, worker, float(lease))
        return [ScanJob(r["id"], r["uri"], r["cid"], r["operation"], r["attempts"],
                        json.loads(r["record"]) if r["record"] else None, r["current_cid"], bool(r["deleted"]))
                for r in rows]

    async def renew(self, job_ids: list[int], *, worker: str, lease: float) -> int:
        """Extend `worker`'s leases on `job_ids` that it still holds; returns how many of them
        another worker holds now (this one stalled past its lease)."""
        if not job_ids:
            return 0
        async with self._pool.acquire() as db, db.transaction():
            await db.execute(
                f"UPDATE scan_jobs SET lease_until = {_NOW} + $1 WHERE id = ANY($2::bigint[]) AND worker = $3"
                " AND state = 'running'", float(lease), job_ids, worker)
            return await db.fetchval(
                "SELECT count(*) FROM scan_jobs WHERE id = ANY($1::bigint[]) AND state = 'running' AND worker != $2",
                job_ids, worker)

    async def finish(self, job_id: int) -> None:
        await self._pool.execute(
            "UPDATE scan_jobs SET state = 'done', finished = $1, error = NULL WHERE id = $2", now_iso(), job_id)

    async def retry_later(self, job_id: int, error: str, delay: float, *, give_up: bool = False) -> None:
        """Record a failure: back to pending after `delay` seconds, or 'failed' for good."""
        await self._pool.execute(
            f"UPDATE scan_jobs SET state = $1, error = $2, not_before = {_NOW} + $3 WHERE id = $4",
            "failed" if give_up else "pending", error[:2000], float(delay), job_id)

    async def job_counts(self) -> dict[str, int]:
        """Jobs by state (pending, running, done, failed)."""
        out: dict[str, int] = {"pending": 0, "running": 0, "done": 0, "failed": 0}
        out.update({r[0]: r[1] for r in await self._pool.fetch("SELECT state, count(*) FROM scan_jobs GROUP BY state")})
        return out

    async def jobs(self, uri: str) -> list[dict]:
        """Every job of `uri`, oldest first: for explain and the tests."""
        rows = await self._pool.fetch(
            "SELECT id, uri, cid, operation, state, attempts, error FROM scan_jobs WHERE uri = $1 ORDER BY id", uri)
        return [dict(r) for r in rows]
