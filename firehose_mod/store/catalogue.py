"""The copyright catalogue: reference recordings and indexed uploads, with their fingerprints.

One row per ref in `catalogue_refs` (a rights holder's track, a takedown, or an upload under
its at-uri) and one BLOB of packed index entries per ref in `catalogue_hashes`, so loading
the whole index at start is one sequential read. A removed ref keeps its row (who added
what, and when) but loses its hashes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from firehose_mod.labels.model import now_iso
from firehose_mod.store.db import Store


@dataclass(frozen=True, slots=True)
class CatalogueRef:
    id: int
    ref: str
    kind: str  # 'reference' | 'upload'
    title: str | None
    artist: str | None
    source: str | None
    duration: float | None
    sha256: str | None
    chromaprint: np.ndarray | None  # raw uint32 items
    fp_version: str
    entries: int
    added: str
    removed: bool


_COLUMNS = "id, ref, kind, title, artist, source, duration, sha256, chromaprint, fp_version, entries, added, removed"


def _row(r) -> CatalogueRef:
    chroma = np.frombuffer(r[8], "<u4") if r[8] is not None else None
    return CatalogueRef(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], chroma, r[9], r[10], r[11], bool(r[12]))


class CatalogueAdds:
    """Adding references and uploads, whatever the backend: each store's `_put` holds its SQL."""

    async def add_reference(self, ref: str, entries: bytes, *, fp_version: str, entry_count: int,
                            title: str | None = None, artist: str | None = None, source: str | None = None,
                            duration: float | None = None, sha256: str | None = None,
                            chromaprint: np.ndarray | None = None) -> int:
        """Add (or replace) a reference recording; returns its row id."""
        return await self._put("reference", ref, entries, fp_version, entry_count, title, artist, source,
                               duration, sha256, chromaprint)

    async def add_upload(self, ref: str, entries: bytes, *, fp_version: str, entry_count: int,
                         title: str | None = None, artist: str | None = None, source: str | None = None,
                         duration: float | None = None, sha256: str | None = None,
                         chromaprint: np.ndarray | None = None) -> int:
        """Index a scanned upload under its at-uri (a new version replaces the old one)."""
        return await self._put("upload", ref, entries, fp_version, entry_count, title, artist, source,
                               duration, sha256, chromaprint)


def split_live(rows, fp_version: str) -> tuple[dict[str, tuple[int, str]], list[str]]:
    """`live_refs` from rows of (id, ref, added, fp_version): the refs this code's fingerprint
    version can match, and those it cannot (re-import them)."""
    live, stale = {}, []
    for row_id, ref, added, version in rows:
        if version == fp_version:
            live[ref] = (row_id, added)
        else:
            stale.append(ref)
    return live, stale


class CatalogueStore(CatalogueAdds, Store):
    """Typed access to the catalogue tables; safe to share one connection between tasks."""

    async def _put(self, kind, ref, entries, fp_version, entry_count, title, artist, source, duration, sha256,
                   chromaprint) -> int:
        chroma = None if chromaprint is None else np.asarray(chromaprint, "<u4").tobytes()
        async with self._lock, self._transaction() as db:
            async with db.execute(
                "INSERT INTO catalogue_refs (ref, kind, title, artist, source, duration, sha256, chromaprint,"
                " fp_version, entries, added, removed) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0)"
                " ON CONFLICT (ref) DO UPDATE SET kind = excluded.kind, title = excluded.title,"
                " artist = excluded.artist, source = excluded.source, duration = excluded.duration,"
                " sha256 = excluded.sha256, chromaprint = excluded.chromaprint, fp_version = excluded.fp_version,"
                " entries = excluded.entries, added = excluded.added, removed = 0 RETURNING id",
                (ref, kind, title, artist, source, duration, sha256, chroma, fp_version, entry_count, now_iso()),
            ) as cur:
                (row_id,) = await cur.fetchone()
            await db.execute(
                "INSERT INTO catalogue_hashes (ref_id, data) VALUES (?, ?)"
                " ON CONFLICT (ref_id) DO UPDATE SET data = excluded.data", (row_id, entries),
            )
        return row_id

    async def remove(self, ref: str) -> bool:
        """Mark `ref` removed and drop its hashes; False if it is unknown or already removed."""
        async with self._lock, self._transaction() as db:
            async with db.execute("SELECT id FROM catalogue_refs WHERE ref = ? AND removed = 0", (ref,)) as cur:
                row = await cur.fetchone()
            if row is None:
                return False
            await db.execute("UPDATE catalogue_refs SET removed = 1 WHERE id = ?", (row[0],))
            await db.execute("DELETE FROM catalogue_hashes WHERE ref_id = ?", (row[0],))
        return True

    async def get(self, ref: str) -> CatalogueRef | None:
        async with self._reading(f"SELECT {_COLUMNS} FROM catalogue_refs WHERE ref = ?", (ref,)) as cur:
            row = await cur.fetchone()
        return _row(row) if row else None

    async def find_sha256(self, sha256: str) -> CatalogueRef | None:
        """A live ref with exactly these file bytes (an import already done, a byte-identical upload)."""
        async with self._reading(
            f"SELECT {_COLUMNS} FROM catalogue_refs WHERE sha256 = ? AND removed = 0 ORDER BY id LIMIT 1", (sha256,)
        ) as cur:
            row = await cur.fetchone()
        return _row(row) if row else None

    async def list(self, *, kind: str | None = None, include_removed: bool = False) -> list[CatalogueRef]:
        sql = f"SELECT {_COLUMNS} FROM catalogue_refs WHERE (? IS NULL OR kind = ?)"
        if not include_removed:
            sql += " AND removed = 0"
        async with self._reading(sql + " ORDER BY id", (kind, kind)) as cur:
            return [_row(r) for r in await cur.fetchall()]

    async def reference_signature(self) -> tuple[int, int, int]:
        """(count, highest id, removed) of reference refs: changes when an operator imports or removes."""
        async with self._reading(
            "SELECT count(*), coalesce(max(id), 0), coalesce(sum(removed), 0) FROM catalogue_refs"
            " WHERE kind = 'reference'"
        ) as cur:
            return tuple(await cur.fetchone())

    async def stats(self) -> dict[str, int]:
        """Refs by kind (live), removed refs, index entries and stored bytes: for status and metrics."""
        out = {"reference": 0, "upload": 0, "removed": 0, "entries": 0, "bytes": 0}
        async with self._reading(
            "SELECT kind, removed, count(*), coalesce(sum(entries), 0) FROM catalogue_refs GROUP BY kind, removed"
        ) as cur:
            for kind, removed, n, entries in await cur.fetchall():
                if removed:
                    out["removed"] += n
                else:
                    out[kind] += n
                    out["entries"] += entries
        async with self._reading("SELECT coalesce(sum(length(data)), 0) FROM catalogue_hashes") as cur:
            out["bytes"] = (await cur.fetchone())[0]
        return out

    async def load_all(self, fp_version: str) -> tuple[list[tuple[str, bytes]], list[str]]:
        """([(ref, packed entries)] of every live ref made by `fp_version`, [refs made by another version]).

        Refs of another fingerprint version cannot be matched by this code: re-import them.
        """
        loaded, stale = [], []
        async with self._reading(
            "SELECT r.ref, r.fp_version, h.data FROM catalogue_refs r JOIN catalogue_hashes h ON h.ref_id = r.id"
            " WHERE r.removed = 0 ORDER BY r.id"
        ) as cur:
            async for ref, version, data in cur:
                if version == fp_version:
                    loaded.append((ref, bytes(data)))
                else:
                    stale.append(ref)
        return loaded, stale

    async def live_refs(self, fp_version: str) -> tuple[dict[str, tuple[int, str]], list[str]]:
        """({ref: (row id, added)} of every live ref with hashes made by `fp_version`, [refs made by
        another version]): what an on-disk index segment is checked against at start, without
        reading a single fingerprint."""
        async with self._reading(
            "SELECT r.id, r.ref, r.added, r.fp_version FROM catalogue_refs r"
            " WHERE r.removed = 0 AND EXISTS (SELECT 1 FROM catalogue_hashes h WHERE h.ref_id = r.id) ORDER BY r.id"
        ) as cur:
            return split_live(await cur.fetchall(), fp_version)

    async def load_entries(self, row_ids: list[int]) -> list[tuple[str, int, str, bytes]]:
        """[(ref, row id, added, packed entries)] of these rows (live ones with hashes), by id."""
        out = []
        for i in range(0, len(row_ids), 500):
            part = row_ids[i:i + 500]
            marks = ",".join("?" * len(part))
            async with self._reading(
                "SELECT r.ref, r.id, r.added, h.data FROM catalogue_refs r JOIN catalogue_hashes h ON h.ref_id = r.id"
                f" WHERE r.removed = 0 AND r.id IN ({marks}) ORDER BY r.id", part,
            ) as cur:
                out += [(ref, row_id, added, bytes(data)) for ref, row_id, added, data in await cur.fetchall()]
        return out
