"""The copyright catalogue on PostgreSQL: store/catalogue.py's `CatalogueStore`, shared by every
scan worker of a deployment.

The rows are the source of truth, as in SQLite; each scan machine keeps its own memory-mapped
index segments over them in its data directory (scan/catalogue.py), checked against
`live_refs` at start, so a reference imported on one machine reaches every worker's index.
"""

from __future__ import annotations

import numpy as np

from firehose_mod.labels.model import now_iso
from firehose_mod.store.catalogue import _COLUMNS, CatalogueAdds, CatalogueRef, _row, split_live
from firehose_mod.store.pg.pool import PgPoolStore

__all__ = ["PgCatalogueStore"]


class PgCatalogueStore(CatalogueAdds, PgPoolStore):
    """The catalogue tables over a PostgreSQL database (the same methods as CatalogueStore)."""

    APPLICATION = "firehose-mod catalogue"

    async def _put(self, kind, ref, entries, fp_version, entry_count, title, artist, source, duration, sha256,
                   chromaprint) -> int:
        chroma = None if chromaprint is None else np.asarray(chromaprint, "<u4").tobytes()
        async with self._pool.acquire() as db, db.transaction():
            row_id = await db.fetchval(
                "INSERT INTO catalogue_refs (ref, kind, title, artist, source, duration, sha256, chromaprint,"
                " fp_version, entries, added, removed) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, false)"
                " ON CONFLICT (ref) DO UPDATE SET kind = excluded.kind, title = excluded.title,"
                " artist = excluded.artist, source = excluded.source, duration = excluded.duration,"
                " sha256 = excluded.sha256, chromaprint = excluded.chromaprint, fp_version = excluded.fp_version,"
                " entries = excluded.entries, added = excluded.added, removed = false RETURNING id",
                ref, kind, title, artist, source, duration, sha256, chroma, fp_version, entry_count, now_iso())
            await db.execute(
                "INSERT INTO catalogue_hashes (ref_id, data) VALUES ($1, $2)"
                " ON CONFLICT (ref_id) DO UPDATE SET data = excluded.data", row_id, entries)
        return row_id

    async def remove(self, ref: str) -> bool:
        """Mark `ref` removed and drop its hashes; False if it is unknown or already removed."""
        async with self._pool.acquire() as db, db.transaction():
            row_id = await db.fetchval(
                "UPDATE catalogue_refs SET removed = true WHERE ref = $1 AND NOT removed RETURNING id", ref)
            if row_id is None:
                return False
            await db.execute("DELETE FROM catalogue_hashes WHERE ref_id = $1", row_id)
        return True

    async def get(self, ref: str) -> CatalogueRef | None:
        row = await self._pool.fetchrow(f"SELECT {_COLUMNS} FROM catalogue_refs WHERE ref = $1", ref)
        return _row(row) if row else None

    async def find_sha256(self, sha256: str) -> CatalogueRef | None:
        """A live ref with exactly these file bytes (an import already done, a byte-identical upload)."""
        row = await self._pool.fetchrow(
            f"SELECT {_COLUMNS} FROM catalogue_refs WHERE sha256 = $1 AND NOT removed ORDER BY id LIMIT 1", sha256)
        return _row(row) if row else None

    async def list(self, *, kind: str | None = None, include_removed: bool = False) -> list[CatalogueRef]:
        sql = f"SELECT {_COLUMNS} FROM catalogue_refs WHERE ($1::text IS NULL OR kind = $1)"
        if not include_removed:
            sql += " AND NOT removed"
        return [_row(r) for r in await self._pool.fetch(sql + " ORDER BY id", kind)]

    async def reference_signature(self) -> tuple[int, int, int]:
        """(count, highest id, removed) of reference refs: changes when an operator imports or removes."""
        row = await self._pool.fetchrow(
            "SELECT count(*), coalesce(max(id), 0), count(*) FILTER (WHERE removed) FROM catalogue_refs"
            " WHERE kind = 'reference'")
        return tuple(row)

    async def stats(self) -> dict[str, int]:
        """Refs by kind (live), removed refs, index entries and stored bytes: for status and metrics."""
        out = {"reference": 0, "upload": 0, "removed": 0, "entries": 0, "bytes": 0}
        for kind, removed, n, entries in await self._pool.fetch(  # ::bigint: sum() of a bigint is a numeric
                "SELECT kind, removed, count(*), coalesce(sum(entries), 0)::bigint FROM catalogue_refs"
                " GROUP BY kind, removed"):
            if removed:
                out["removed"] += n
            else:
                out[kind] += n
                out["entries"] += entries
        out["bytes"] = await self._pool.fetchval(
            "SELECT coalesce(sum(octet_length(data)), 0)::bigint FROM catalogue_hashes")
        return out

    async def load_all(self, fp_version: str) -> tuple[list[tuple[str, bytes]], list[str]]:
        """([(ref, packed entries)] of every live ref made by `fp_version`, [refs made by another version])."""
        loaded, stale = [], []
        async with self._pool.acquire() as db, db.transaction():  # a cursor: never the whole catalogue at once
            async for ref, version, data in db.cursor(
                    "SELECT r.ref, r.fp_version, h.data FROM catalogue_refs r JOIN catalogue_hashes h"
                    " ON h.ref_id = r.id WHERE NOT r.removed ORDER BY r.id"):
                if version == fp_version:
                    loaded.append((ref, bytes(data)))
                else:
                    stale.append(ref)
        return loaded, stale

    async def live_refs(self, fp_version: str) -> tuple[dict[str, tuple[int, str]], list[str]]:
        """({ref: (row id, added)} of every live ref with hashes made by `fp_version`, [refs made by
        another version]), without reading a fingerprint (what index segments are checked against)."""
        return split_live(await self._pool.fetch(
            "SELECT r.id, r.ref, r.added, r.fp_version FROM catalogue_refs r WHERE NOT r.removed"
            " AND EXISTS (SELECT 1 FROM catalogue_hashes h WHERE h.ref_id = r.id) ORDER BY r.id"), fp_version)

    async def load_entries(self, row_ids: list[int]) -> list[tuple[str, int, str, bytes]]:
        """[(ref, row id, added, packed entries)] of these rows (live ones with hashes), by id."""
        rows = await self._pool.fetch(
            "SELECT r.ref, r.id, r.added, h.data FROM catalogue_refs r JOIN catalogue_hashes h ON h.ref_id = r.id"
            " WHERE NOT r.removed AND r.id = ANY($1::bigint[]) ORDER BY r.id", list(row_ids))
        return [(ref, row_id, added, bytes(data)) for ref, row_id, added, data in rows]
