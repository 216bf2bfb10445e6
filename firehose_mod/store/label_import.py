"""Label imports from another labeler: where each import's reading stands, and the labels it read.

`firehose-mod import --from URL` reads a source labeler's labels into `label_import_rows`, page
by page. Each page is committed with the cursor after it in one transaction, so an interrupted
read resumes after the last committed page, and a page read twice adds nothing: a row's identity
(`ident`) is the SHA-256 of the label's signed fields, so the same label from the same source is
one row however often it is read. Rows are then applied to the label log in (cts, source order);
`ImportRowWriter.mark` records what applying each row did inside the label log's own transaction
(`LabelLog.emit_many(also=...)`), so an interrupted apply resumes too and a row is applied once.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass

import aiosqlite

from firehose_mod.labels.model import Label, now_iso
from firehose_mod.store.db import Store

_RUN_COLUMNS = "id, source, did, mode, cursor, state, pages, rows, positions, high_seq, started, updated"
_ROW_COLUMNS = "ident, pos, sub, src, uri, cid, val, neg, cts, exp, ver, sig, cts_key, verified, outcome, label_seq"


@dataclass(frozen=True, slots=True)
class ImportRun:
    id: int
    source: str  # the source's base URL
    did: str  # the src asked for ('' = every src the source serves)
    mode: str  # query | stream
    cursor: str | None  # resume reading after this (a queryLabels cursor, or the stream seq)
    state: str  # fetching | fetched
    pages: int
    rows: int  # rows stored (each distinct label once)
    positions: int  # source-order positions handed out so far (queryLabels rows carry no seq)
    high_seq: int | None  # highest source seq seen (stream frames, queryLabels cursors)
    started: str
    updated: str


@dataclass(frozen=True, slots=True)
class ImportRow:
    """One label read from the source: as it was signed there, with where it stands here."""

    ident: bytes
    pos: int  # source order: the stream seq, or the running position of queryLabels rows
    sub: int  # index within the frame or page position
    label: Label
    cts_key: str  # cts in UTC with microseconds: the sort key
    verified: bool | None  # the source's signature checked with its DID document's key (None: not checked)
    outcome: str | None  # None until applied: written | unchanged | invalid: ...
    label_seq: int | None  # our seq, when written


def label_ident(label: Label) -> bytes:
    """The identity of a label as its source signed it: SHA-256 of the signed fields."""
    return hashlib.sha256(label.signing_bytes()).digest()


def _run(row: tuple) -> ImportRun:
    return ImportRun(*row)


def _import_row(row: tuple) -> ImportRow:
    ident, pos, sub, src, uri, cid, val, neg, cts, exp, ver, sig, cts_key, verified, outcome, label_seq = row
    label = Label(src=src, uri=uri, val=val, cts=cts, cid=cid, neg=bool(neg), exp=exp, ver=ver,
                  sig=bytes(sig) if sig is not None else None)
    return ImportRow(bytes(ident), pos, sub, label, cts_key, None if verified is None else bool(verified),
                     outcome, label_seq)


class ImportStore(Store):
    """Typed access to `label_imports` and `label_import_rows`; its own connection."""

    async def begin(self, source: str, did: str, mode: str, *, restart: bool = False) -> ImportRun:
        """The import of `source` (for `did`, by `mode`), created on first use. `restart` forgets
        where reading stood, so everything is read again (rows already stored are not stored twice)."""
        now = now_iso()
        async with self._lock, self._transaction() as db:
            await db.execute(
                "INSERT INTO label_imports (source, did, mode, started, updated) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (source, did, mode) DO NOTHING",
                (source, did, mode, now, now),
            )
            if restart:
                await db.execute(
                    "UPDATE label_imports SET cursor = NULL, state = 'fetching', updated = ?"
                    " WHERE source = ? AND did = ? AND mode = ?",
                    (now, source, did, mode),
                )
            else:  # a finished read is read on from where it stopped: the source may have labelled since
                await db.execute(
                    "UPDATE label_imports SET state = 'fetching' WHERE source = ? AND did = ? AND mode = ?",
                    (source, did, mode),
                )
            async with db.execute(
                f"SELECT {_RUN_COLUMNS} FROM label_imports WHERE source = ? AND did = ? AND mode = ?",
                (source, did, mode),
            ) as cur:
                return _run(await cur.fetchone())

    async def get(self, run_id: int) -> ImportRun:
        async with self._reading(f"SELECT {_RUN_COLUMNS} FROM label_imports WHERE id = ?", (run_id,)) as cur:
            return _run(await cur.fetchone())

    async def save_page(self, run_id: int, rows: list[tuple[int, int, Label, str, bool | None]],
                        cursor: str | None, *, high_seq: int | None = None, positions: int = 0) -> int:
        """Store a page of (pos, sub, label, cts_key, verified) and the cursor after it, in one
        transaction; returns how many rows were new (a label read before is not stored again)."""
        async with self._lock, self._transaction() as db:
            # one executemany (a statement per row was a hop to the connection's thread per label);
            # its rowcount is the rows inserted, i.e. those not stored before
            cur = await db.executemany(
                "INSERT OR IGNORE INTO label_import_rows (import_id, ident, pos, sub, src, uri, cid, val, neg, cts,"
                " exp, ver, sig, cts_key, verified) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(run_id, label_ident(label), pos, sub, label.src, label.uri, label.cid, label.val,
                  int(label.neg), label.cts, label.exp, label.ver, label.sig, cts_key,
                  None if verified is None else int(verified))
                 for pos, sub, label, cts_key, verified in rows],
            )
            new = max(cur.rowcount, 0)
            await db.execute(
                "UPDATE label_imports SET cursor = ?, pages = pages + 1, rows = rows + ?, positions = positions + ?,"
                " high_seq = CASE WHEN ? IS NULL THEN high_seq ELSE max(coalesce(high_seq, 0), ?) END,"
                " updated = ? WHERE id = ?",
                (cursor, new, positions, high_seq, high_seq, now_iso(), run_id),
            )
        return new

    async def note_high_seq(self, run_id: int, high_seq: int) -> None:
        """The source's head seq, learnt after reading (for the seq-floor advice)."""
        await self._write(
            "UPDATE label_imports SET high_seq = max(coalesce(high_seq, 0), ?), updated = ? WHERE id = ?",
            (high_seq, now_iso(), run_id),
        )

    async def fetched(self, run_id: int) -> None:
        """Reading reached the source's head: what is stored is everything it had."""
        await self._write("UPDATE label_imports SET state = 'fetched', updated = ? WHERE id = ?", (now_iso(), run_id))

    async def pending(self, run_id: int, limit: int) -> list[ImportRow]:
        """Up to `limit` rows not applied yet, in (cts, source order)."""
        async with self._reading(
            f"SELECT {_ROW_COLUMNS} FROM label_import_rows WHERE import_id = ? AND outcome IS NULL"
            " ORDER BY cts_key, pos, sub LIMIT ?",
            (run_id, limit),
        ) as cur:
            return [_import_row(r) for r in await cur.fetchall()]

    async def pending_count(self, run_id: int) -> int:
        async with self._reading(
            "SELECT count(*) FROM label_import_rows WHERE import_id = ? AND outcome IS NULL", (run_id,)
        ) as cur:
            (n,) = await cur.fetchone()
        return n

    async def by_subject(self, run_id: int) -> AsyncIterator[ImportRow]:
        """Every row of the import ordered by (uri, val), then source order: each (uri, val)'s history."""
        last: tuple = ("", "", -1, -1)
        while True:
            async with self._reading(
                f"SELECT {_ROW_COLUMNS} FROM label_import_rows WHERE import_id = ? AND (uri, val, pos, sub) > (?, ?, ?, ?)"
                " ORDER BY uri, val, pos, sub LIMIT 1000",
                (run_id, *last),
            ) as cur:
                rows = [_import_row(r) for r in await cur.fetchall()]
            if not rows:
                return
            for row in rows:
                yield row
            r = rows[-1]
            last = (r.label.uri, r.label.val, r.pos, r.sub)

    async def counts(self, run_id: int) -> dict:
        """Rows by outcome (invalid ones together), by src, and by signature check."""
        out: dict = {"rows": 0, "outcomes": {}, "srcs": {}, "verified": 0, "failed": 0, "unchecked": 0}
        async with self._reading(
            "SELECT CASE WHEN outcome LIKE 'invalid%' THEN 'invalid' ELSE coalesce(outcome, 'pending') END, count(*)"
            " FROM label_import_rows WHERE import_id = ? GROUP BY 1", (run_id,)
        ) as cur:
            for outcome, n in await cur.fetchall():
                out["outcomes"][outcome] = n
                out["rows"] += n
        async with self._reading(
            "SELECT src, count(*) FROM label_import_rows WHERE import_id = ? GROUP BY src", (run_id,)
        ) as cur:
            out["srcs"] = {src: n for src, n in await cur.fetchall()}
        async with self._reading(
            "SELECT verified, count(*) FROM label_import_rows WHERE import_id = ? GROUP BY verified", (run_id,)
        ) as cur:
            for verified, n in await cur.fetchall():
                out["unchecked" if verified is None else "verified" if verified else "failed"] += n
        return out

    async def invalid_examples(self, run_id: int, limit: int = 5) -> list[dict]:
        async with self._reading(
            "SELECT uri, val, outcome FROM label_import_rows WHERE import_id = ? AND outcome LIKE 'invalid%'"
            " ORDER BY cts_key, pos, sub LIMIT ?", (run_id, limit)
        ) as cur:
            return [{"uri": u, "val": v, "why": o.removeprefix("invalid: ")} for u, v, o in await cur.fetchall()]


class ImportRowWriter:
    """Marks applied rows inside a transaction someone else holds (the label log's, through
    `DecisionWriter.imports`), so a row is marked exactly when the labels it wrote are committed."""

    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db

    async def mark(self, run_id: int, outcomes: Iterable[tuple[bytes, str, int | None]]) -> None:
        """Each (ident, outcome, our label seq or None)."""
        await self._db.executemany(
            "UPDATE label_import_rows SET outcome = ?, label_seq = ? WHERE import_id = ? AND ident = ?",
            [(outcome, seq, run_id, ident) for ident, outcome, seq in outcomes],
        )
