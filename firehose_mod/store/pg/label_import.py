"""Label imports on PostgreSQL: store/label_import.py's `ImportStore` and `ImportRowWriter`.

The same tables and rules (read store/label_import.py's docstring), migration 5 of
store/pg/schema.py: a page is stored with the cursor after it in one transaction, a label read
twice is one row (ON CONFLICT DO NOTHING on its ident), and `PgImportRowWriter.mark` records what
applying each row did inside the PostgreSQL label log's own transaction.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable

import asyncpg

from firehose_mod.labels.model import Label, now_iso
from firehose_mod.store.label_import import (
    _ROW_COLUMNS,
    _RUN_COLUMNS,
    ImportRow,
    ImportRun,
    _import_row,
    _run,
    label_ident,
)
from firehose_mod.store.pg.pool import PgPoolStore

__all__ = ["PgImportRowWriter", "PgImportStore"]

_RUN_KEY = "source = $1 AND did = $2 AND mode = $3"
# A page in one statement: one array per column, unnested into rows.
_SAVE_PAGE = (
    "WITH new AS (INSERT INTO label_import_rows (import_id, ident, pos, sub, src, uri, cid, val, neg, cts, exp, ver,"
    " sig, cts_key, verified) SELECT $1, * FROM unnest($2::bytea[], $3::bigint[], $4::integer[], $5::text[],"
    " $6::text[], $7::text[], $8::text[], $9::boolean[], $10::text[], $11::text[], $12::integer[], $13::bytea[],"
    " $14::text[], $15::boolean[]) ON CONFLICT (import_id, ident) DO NOTHING RETURNING 1) SELECT count(*) FROM new"
)


class PgImportStore(PgPoolStore):
    """`label_imports` and `label_import_rows` over a PostgreSQL database."""

    APPLICATION = "firehose-mod import"

    async def begin(self, source: str, did: str, mode: str, *, restart: bool = False) -> ImportRun:
        """The import of `source` (for `did`, by `mode`), created on first use. `restart` forgets
        where reading stood, so everything is read again (rows already stored are not stored twice)."""
        now = now_iso()
        async with self._pool.acquire() as db, db.transaction():
            await db.execute("INSERT INTO label_imports (source, did, mode, started, updated)"
                             " VALUES ($1, $2, $3, $4, $4) ON CONFLICT (source, did, mode) DO NOTHING",
                             source, did, mode, now)
            if restart:
                await db.execute(f"UPDATE label_imports SET cursor = NULL, state = 'fetching', updated = $4"
                                 f" WHERE {_RUN_KEY}", source, did, mode, now)
            else:  # a finished read is read on from where it stopped: the source may have labelled since
                await db.execute(f"UPDATE label_imports SET state = 'fetching' WHERE {_RUN_KEY}", source, did, mode)
            return _run(await db.fetchrow(f"SELECT {_RUN_COLUMNS} FROM label_imports WHERE {_RUN_KEY}",
                                          source, did, mode))

    async def get(self, run_id: int) -> ImportRun:
        return _run(await self._pool.fetchrow(f"SELECT {_RUN_COLUMNS} FROM label_imports WHERE id = $1", run_id))

    async def save_page(self, run_id: int, rows: list[tuple[int, int, Label, str, bool | None]],
                        cursor: str | None, *, high_seq: int | None = None, positions: int = 0) -> int:
        """Store a page of (pos, sub, label, cts_key, verified) and the cursor after it, in one
        transaction; returns how many rows were new (a label read before is not stored again)."""
        columns = list(zip(*[(label_ident(label), pos, sub, label.src, label.uri, label.cid, label.val, label.neg,
                              label.cts, label.exp, label.ver, label.sig, cts_key, verified)
                             for pos, sub, label, cts_key, verified in rows])) or [[]] * 14
        async with self._pool.acquire() as db, db.transaction():
            new = await db.fetchval(_SAVE_PAGE, run_id, *map(list, columns))
            await db.execute(
                "UPDATE label_imports SET cursor = $1, pages = pages + 1, rows = rows + $2, positions = positions + $3,"
                " high_seq = CASE WHEN $4::bigint IS NULL THEN high_seq ELSE greatest(coalesce(high_seq, 0), $4) END,"
                " updated = $5 WHERE id = $6", cursor, new, positions, high_seq, now_iso(), run_id)
        return new

    async def note_high_seq(self, run_id: int, high_seq: int) -> None:
        """The source's head seq, learnt after reading (for the seq-floor advice)."""
        await self._pool.execute("UPDATE label_imports SET high_seq = greatest(coalesce(high_seq, 0), $1),"
                                 " updated = $2 WHERE id = $3", high_seq, now_iso(), run_id)

    async def fetched(self, run_id: int) -> None:
        """Reading reached the source's head: what is stored is everything it had."""
        await self._pool.execute("UPDATE label_imports SET state = 'fetched', updated = $1 WHERE id = $2",
                                 now_iso(), run_id)

    async def pending(self, run_id: int, limit: int) -> list[ImportRow]:
        """Up to `limit` rows not applied yet, in (cts, source order)."""
        rows = await self._pool.fetch(
            f"SELECT {_ROW_COLUMNS} FROM label_import_rows WHERE import_id = $1 AND outcome IS NULL"
            " ORDER BY cts_key, pos, sub LIMIT $2", run_id, limit)
        return [_import_row(r) for r in rows]

    async def pending_count(self, run_id: int) -> int:
        return await self._pool.fetchval(
            "SELECT count(*) FROM label_import_rows WHERE import_id = $1 AND outcome IS NULL", run_id)

    async def by_subject(self, run_id: int) -> AsyncIterator[ImportRow]:
        """Every row of the import ordered by (uri, val), then source order: each (uri, val)'s history."""
        last: tuple = ("", "", -1, -1)
        while True:
            rows = [_import_row(r) for r in await self._pool.fetch(
                f"SELECT {_ROW_COLUMNS} FROM label_import_rows WHERE import_id = $1"
                " AND (uri, val, pos, sub) > ($2::text, $3::text, $4::bigint, $5::integer)"
                " ORDER BY uri, val, pos, sub LIMIT 1000", run_id, *last)]
            if not rows:
                return
            for row in rows:
                yield row
            r = rows[-1]
            last = (r.label.uri, r.label.val, r.pos, r.sub)

    async def counts(self, run_id: int) -> dict:
        """Rows by outcome (invalid ones together), by src, and by signature check."""
        out: dict = {"rows": 0, "outcomes": {}, "srcs": {}, "verified": 0, "failed": 0, "unchecked": 0}
        for outcome, n in await self._pool.fetch(
                "SELECT CASE WHEN outcome LIKE 'invalid%' THEN 'invalid' ELSE coalesce(outcome, 'pending') END,"
                " count(*) FROM label_import_rows WHERE import_id = $1 GROUP BY 1", run_id):
            out["outcomes"][outcome] = n
            out["rows"] += n
        out["srcs"] = {src: n for src, n in await self._pool.fetch(
            "SELECT src, count(*) FROM label_import_rows WHERE import_id = $1 GROUP BY src", run_id)}
        for verified, n in await self._pool.fetch(
                "SELECT verified, count(*) FROM label_import_rows WHERE import_id = $1 GROUP BY verified", run_id):
            out["unchecked" if verified is None else "verified" if verified else "failed"] += n
        return out

    async def invalid_examples(self, run_id: int, limit: int = 5) -> list[dict]:
        rows = await self._pool.fetch(
            "SELECT uri, val, outcome FROM label_import_rows WHERE import_id = $1 AND outcome LIKE 'invalid%'"
            " ORDER BY cts_key, pos, sub LIMIT $2", run_id, limit)
        return [{"uri": u, "val": v, "why": o.removeprefix("invalid: ")} for u, v, o in rows]


class PgImportRowWriter:
    """Marks applied rows inside a transaction someone else holds on `conn` (the PostgreSQL label
    log's, through `PgDecisionWriter.imports`), so a row is marked exactly when its labels commit."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn

    async def mark(self, run_id: int, outcomes: Iterable[tuple[bytes, str, int | None]]) -> None:
        """Each (ident, outcome, our label seq or None)."""
        await self._conn.executemany(
            "UPDATE label_import_rows SET outcome = $1, label_seq = $2 WHERE import_id = $3 AND ident = $4",
            [(outcome, seq, run_id, ident) for ident, outcome, seq in outcomes])
