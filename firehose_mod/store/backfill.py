"""Backfill progress: one row per repo, saying how far its `listRecords` paging got.

A repo is `pending` (to read, from `cursor` when one is saved), `done`, or `failed` (with
the error; a later run retries it on request). The cursor is saved only after the page it
follows has been committed to the scan queue, so an interrupted backfill re-reads at most
one page per repo, which the ingest store's idempotence absorbs.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from firehose_mod.labels.model import now_iso
from firehose_mod.store.db import Store

_COLUMNS = "did, pds, state, cursor, records, error, attempts, updated"


@dataclass(frozen=True, slots=True)
class BackfillRepo:
    did: str
    pds: str | None
    state: str  # pending | done | failed
    cursor: str | None  # listRecords cursor after the last committed page
    records: int  # records read from this repo so far
    error: str | None
    attempts: int  # runs that started reading this repo
    updated: str


class BackfillStore(Store):
    """Typed access to `backfill_repos`; its own connection, writes serialised by a lock."""

    async def add_dids(self, dids: Iterable[str]) -> int:
        """Record repos to read (pending); repos already known keep their state. Returns how many are new."""
        rows = [(did, now_iso()) for did in dict.fromkeys(dids)]
        if not rows:
            return 0
        async with self._lock:
            return await self._write_many(
                "INSERT OR IGNORE INTO backfill_repos (did, updated) VALUES (?, ?)", rows
            )

    async def add_failed(self, did: str, error: str) -> None:
        """Record a repo that cannot be read at all (e.g. an invalid DID from a relay)."""
        await self._write(
            "INSERT INTO backfill_repos (did, state, error, updated) VALUES (?, 'failed', ?, ?)"
            " ON CONFLICT (did) DO NOTHING",
            (did[:2048], error[:2000], now_iso()),
        )

    async def get(self, did: str) -> BackfillRepo | None:
        async with self._reading(f"SELECT {_COLUMNS} FROM backfill_repos WHERE did = ?", (did,)) as cur:
            row = await cur.fetchone()
        return BackfillRepo(*row) if row else None

    async def next_pending(self, after: str | None = None, limit: int = 100) -> list[BackfillRepo]:
        """Pending repos with a DID greater than `after`, in DID order (keyset paging)."""
        async with self._reading(
            f"SELECT {_COLUMNS} FROM backfill_repos WHERE state = 'pending' AND did > ? ORDER BY did LIMIT ?",
            (after or "", limit),
        ) as cur:
            return [BackfillRepo(*r) for r in await cur.fetchall()]

    async def retry_failed(self, dids: Iterable[str] | None = None) -> int:
        """Failed repos (all, or those in `dids`) back to pending; they resume from their cursor."""
        return await self._set_pending("state = 'pending', error = NULL", "state = 'failed'", dids)

    async def restart(self, dids: Iterable[str] | None = None) -> int:
        """Forget the progress of repos (all, or those in `dids`): read them again from the start."""
        return await self._set_pending("state = 'pending', cursor = NULL, records = 0, error = NULL", "1", dids)

    async def _set_pending(self, assignments: str, where: str, dids: Iterable[str] | None) -> int:
        now = now_iso()
        if dids is None:
            return await self._write(f"UPDATE backfill_repos SET {assignments}, updated = ? WHERE {where}", (now,))
        async with self._lock:
            return await self._write_many(
                f"UPDATE backfill_repos SET {assignments}, updated = ? WHERE did = ? AND {where}",
                [(now, did) for did in dict.fromkeys(dids)],
            )

    async def start(self, did: str, pds: str) -> None:
        """A run begins reading `did` from `pds`."""
        await self._write(
            "UPDATE backfill_repos SET pds = ?, attempts = attempts + 1, updated = ? WHERE did = ?",
            (pds, now_iso(), did),
        )

    async def progress(self, did: str, cursor: str, records: int) -> None:
        """A page of `records` is committed; the next page starts at `cursor`."""
        await self._write(
            "UPDATE backfill_repos SET cursor = ?, records = records + ?, updated = ? WHERE did = ?",
            (cursor, records, now_iso(), did),
        )

    async def done(self, did: str, records: int = 0) -> None:
        """The last page (of `records`) is committed: the repo is read."""
        await self._write(
            "UPDATE backfill_repos SET state = 'done', cursor = NULL, records = records + ?, error = NULL,"
            " updated = ? WHERE did = ?",
            (records, now_iso(), did),
        )

    async def failed(self, did: str, error: str) -> None:
        """Reading `did` failed; its saved cursor is kept so a retry resumes there."""
        await self._write(
            "UPDATE backfill_repos SET state = 'failed', error = ?, updated = ? WHERE did = ?",
            (error[:2000], now_iso(), did),
        )

    async def counts(self, dids: Iterable[str] | None = None) -> dict[str, int]:
        """Repos by state (all, or those in `dids`), plus `total`."""
        out = {"pending": 0, "done": 0, "failed": 0}
        if dids is None:
            async with self._reading("SELECT state, count(*) FROM backfill_repos GROUP BY state") as cur:
                out.update({state: n for state, n in await cur.fetchall()})
        else:
            for did in dict.fromkeys(dids):
                repo = await self.get(did)
                if repo is not None:
                    out[repo.state] += 1
        out["total"] = out["pending"] + out["done"] + out["failed"]
        return out

    async def failures(self, limit: int = 100) -> list[BackfillRepo]:
        """Failed repos with their errors, most recent first: for the operator."""
        async with self._reading(
            f"SELECT {_COLUMNS} FROM backfill_repos WHERE state = 'failed' ORDER BY updated DESC LIMIT ?", (limit,)
        ) as cur:
            return [BackfillRepo(*r) for r in await cur.fetchall()]

    async def _write_many(self, sql: str, rows: list[tuple]) -> int:
        """Run `sql` for every row in one transaction (callers hold the lock)."""
        changed = 0
        async with self._transaction():
            for row in rows:
                cur = await self._db.execute(sql, row)
                changed += cur.rowcount
        return changed
