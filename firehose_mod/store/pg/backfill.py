"""Backfill progress on PostgreSQL: store/backfill.py's `BackfillStore`, same methods and rules.

One row per repo in `backfill_repos` (migration 5 of store/pg/schema.py). Every method is one
autocommit statement, so backfill runs in several processes share the progress: a repo's row
changes in one UPDATE, and a DID added twice is one row (ON CONFLICT DO NOTHING).
"""

from __future__ import annotations

from collections.abc import Iterable

from firehose_mod.labels.model import now_iso
from firehose_mod.store.backfill import _COLUMNS, BackfillRepo
from firehose_mod.store.pg.pool import PgPoolStore
from firehose_mod.store.pg.scan_queue import rowcount

__all__ = ["PgBackfillStore"]


class PgBackfillStore(PgPoolStore):
    """The `backfill_repos` table over a PostgreSQL database."""

    APPLICATION = "firehose-mod backfill"

    async def add_dids(self, dids: Iterable[str]) -> int:
        """Record repos to read (pending); repos already known keep their state. Returns how many are new."""
        dids = list(dict.fromkeys(dids))
        if not dids:
            return 0
        return rowcount(await self._pool.execute(
            "INSERT INTO backfill_repos (did, updated) SELECT unnest($1::text[]), $2 ON CONFLICT (did) DO NOTHING",
            dids, now_iso()))

    async def add_failed(self, did: str, error: str) -> None:
        """Record a repo that cannot be read at all (e.g. an invalid DID from a relay)."""
        await self._pool.execute(
            "INSERT INTO backfill_repos (did, state, error, updated) VALUES ($1, 'failed', $2, $3)"
            " ON CONFLICT (did) DO NOTHING", did[:2048], error[:2000], now_iso())

    async def get(self, did: str) -> BackfillRepo | None:
        row = await self._pool.fetchrow(f"SELECT {_COLUMNS} FROM backfill_repos WHERE did = $1", did)
        return BackfillRepo(*row) if row else None

    async def next_pending(self, after: str | None = None, limit: int = 100) -> list[BackfillRepo]:
        """Pending repos with a DID greater than `after`, in DID order (keyset paging)."""
        rows = await self._pool.fetch(
            f"SELECT {_COLUMNS} FROM backfill_repos WHERE state = 'pending' AND did > $1 ORDER BY did LIMIT $2",
            after or "", limit)
        return [BackfillRepo(*r) for r in rows]

    async def retry_failed(self, dids: Iterable[str] | None = None) -> int:
        """Failed repos (all, or those in `dids`) back to pending; they resume from their cursor."""
        return await self._set_pending("state = 'pending', error = NULL", "state = 'failed'", dids)

    async def restart(self, dids: Iterable[str] | None = None) -> int:
        """Forget the progress of repos (all, or those in `dids`): read them again from the start."""
        return await self._set_pending("state = 'pending', cursor = NULL, records = 0, error = NULL", "true", dids)

    async def _set_pending(self, assignments: str, where: str, dids: Iterable[str] | None) -> int:
        sql = f"UPDATE backfill_repos SET {assignments}, updated = $1 WHERE {where}"
        if dids is None:
            return rowcount(await self._pool.execute(sql, now_iso()))
        return rowcount(await self._pool.execute(sql + " AND did = ANY($2::text[])", now_iso(),
                                                 list(dict.fromkeys(dids))))

    async def start(self, did: str, pds: str) -> None:
        """A run begins reading `did` from `pds`."""
        await self._pool.execute("UPDATE backfill_repos SET pds = $1, attempts = attempts + 1, updated = $2"
                                 " WHERE did = $3", pds, now_iso(), did)

    async def progress(self, did: str, cursor: str, records: int) -> None:
        """A page of `records` is committed; the next page starts at `cursor`."""
        await self._pool.execute("UPDATE backfill_repos SET cursor = $1, records = records + $2, updated = $3"
                                 " WHERE did = $4", cursor, records, now_iso(), did)

    async def done(self, did: str, records: int = 0) -> None:
        """The last page (of `records`) is committed: the repo is read."""
        await self._pool.execute(
            "UPDATE backfill_repos SET state = 'done', cursor = NULL, records = records + $1, error = NULL,"
            " updated = $2 WHERE did = $3", records, now_iso(), did)

    async def failed(self, did: str, error: str) -> None:
        """Reading `did` failed; its saved cursor is kept so a retry resumes there."""
        await self._pool.execute("UPDATE backfill_repos SET state = 'failed', error = $1, updated = $2"
                                 " WHERE did = $3", error[:2000], now_iso(), did)

    async def counts(self, dids: Iterable[str] | None = None) -> dict[str, int]:
        """Repos by state (all, or those in `dids`), plus `total`."""
        out = {"pending": 0, "done": 0, "failed": 0}
        if dids is None:
            rows = await self._pool.fetch("SELECT state, count(*) FROM backfill_repos GROUP BY state")
        else:
            rows = await self._pool.fetch("SELECT state, count(*) FROM backfill_repos WHERE did = ANY($1::text[])"
                                          " GROUP BY state", list(dict.fromkeys(dids)))
        out.update({state: n for state, n in rows})
        out["total"] = out["pending"] + out["done"] + out["failed"]
        return out

    async def failures(self, limit: int = 100) -> list[BackfillRepo]:
        """Failed repos with their errors, most recent first: for the operator."""
        rows = await self._pool.fetch(f"SELECT {_COLUMNS} FROM backfill_repos WHERE state = 'failed'"
                                      " ORDER BY updated DESC LIMIT $1", limit)
        return [BackfillRepo(*r) for r in rows]
