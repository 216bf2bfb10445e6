"""Reading a SQLite label log out, for `firehose-mod db copy` (ops/db_copy.py): read-only.

The file is opened with `mode=ro` and `query_only`, and everything is read inside one read
transaction taken at `open`: a single snapshot, so the head, the labels, the label state and
the decisions all agree even if a daemon keeps writing to the file meanwhile (in WAL mode it is
not blocked; its checkpoints wait until we are done). What it writes after the snapshot is
not seen: the copy says so, and running it again takes the rest.

Rows leave as plain tuples in one column order, shared with store/pg/copy.py:
`LabelRow` (seq, src, uri, cid, val, neg, cts, exp, sig, key_id, cbor) with `neg` a bool and
`sig`/`cbor` bytes, and `DecisionRow` (id, uri, cid, action, value, origin, rule,
policy_version, scanners, evidence, label_seq, actor, reason, created).

The other tables (ops/db_copy_tables.py) are read through the same snapshot: `user_tables`,
`count_rows`, `autoincrement_counters` and `read` (a SELECT, rows as plain tuples).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

import aiosqlite

LABEL_COLUMNS = ("seq", "src", "uri", "cid", "val", "neg", "cts", "exp", "sig", "key_id", "cbor")
DECISION_COLUMNS = ("id", "uri", "cid", "action", "value", "origin", "rule", "policy_version", "scanners",
                    "evidence", "label_seq", "actor", "reason", "created")
STATE_COLUMNS = ("uri", "val", "src", "seq")

LabelRow = tuple  # see the module docstring for the order
DecisionRow = tuple

_LABELS = ", ".join(LABEL_COLUMNS)
_DECISIONS = ", ".join(DECISION_COLUMNS)
# The highest seq given out: the last row's, or the floor an operator raised sqlite_sequence to.
_HEAD_SQL = (
    "SELECT max(coalesce((SELECT max(seq) FROM labels), 0),"
    " coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'labels'), 0))"
)


_SHADOW_SUFFIXES = ("_content", "_data", "_idx", "_docsize", "_config", "_segments", "_segdir", "_stat")


def shadow_tables(tables: dict[str, str | None]) -> set[str]:
    """SQLite's internal tables, virtual (FTS) tables and their shadow tables, from name -> sql."""
    virtual = {n for n, sql in tables.items() if (sql or "").upper().startswith("CREATE VIRTUAL TABLE")}
    return {n for n in tables
            if n.startswith("sqlite_") or n in virtual
            or any(n.startswith(v + "_") and n[len(v):] in _SHADOW_SUFFIXES for v in virtual)}


class SourceError(Exception):
    """The SQLite file cannot be read as a label log; the message says why and what to do."""


@dataclass(frozen=True)
class SourceSnapshot:
    """What the read snapshot holds: the head (with a raised floor), the labels and the decisions."""

    head: int
    labels: int
    max_seq: int  # the last label's seq (below `head` when the floor was raised after it)
    decisions: int
    max_decision: int  # the last decision's id (0: none)


def _label(row: tuple) -> LabelRow:
    seq, src, uri, cid, val, neg, cts, exp, sig, key_id, cbor = row
    return (seq, src, uri, cid, val, bool(neg), cts, exp, bytes(sig), key_id, bytes(cbor))


class SqliteLabelSource:
    """One read snapshot of a SQLite label log (see the module docstring)."""

    def __init__(self, conn: aiosqlite.Connection, path: Path, snapshot: SourceSnapshot, has_decisions: bool):
        self._conn = conn
        self.path = path
        self.snapshot = snapshot
        self._has_decisions = has_decisions

    @classmethod
    async def open(cls, path: Path) -> SqliteLabelSource:
        """Open `path` read-only and take the snapshot. SourceError when it is no label log."""
        path = Path(path).absolute()
        if not path.is_file():  # stat only: never open() a database file (it would drop SQLite's locks)
            raise SourceError(f"no SQLite database at {path}: give --from sqlite:PATH of the data directory's"
                              " firehose-mod.sqlite3 (or a `db backup` copy)")
        try:
            conn = await aiosqlite.connect(f"{path.as_uri()}?mode=ro", uri=True, isolation_level=None)
        except sqlite3.Error as exc:
            raise SourceError(f"cannot open {path} read-only: {exc}") from None
        try:
            await conn.execute("PRAGMA query_only = 1")
            await conn.execute("PRAGMA busy_timeout = 10000")
            tables = {r[0] for r in await conn.execute_fetchall("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if not {"labels", "label_state"} <= tables:
                raise SourceError(f"{path} holds no firehose-mod label log (no labels table): check --from")
            await conn.execute("BEGIN")  # one snapshot for the whole copy (see the module docstring)
            (head,) = (await conn.execute_fetchall(_HEAD_SQL))[0]
            count, max_seq = (await conn.execute_fetchall("SELECT count(*), coalesce(max(seq), 0) FROM labels"))[0]
            has_decisions = "decisions" in tables
            decisions, max_decision = (0, 0)
            if has_decisions:
                decisions, max_decision = (await conn.execute_fetchall(
                    "SELECT count(*), coalesce(max(id), 0) FROM decisions"))[0]
        except sqlite3.Error as exc:
            await conn.close()
            raise SourceError(f"cannot read {path}: {exc}") from None
        except BaseException:
            await conn.close()
            raise
        return cls(conn, path, SourceSnapshot(head, count, max_seq, decisions, max_decision), has_decisions)

    async def close(self) -> None:
        await self._conn.close()  # ends the read transaction

    async def head_now(self) -> int | None:
        """The head as it is now, outside the snapshot (a fresh connection); None if unreadable."""
        try:
            async with aiosqlite.connect(f"{self.path.as_uri()}?mode=ro", uri=True) as conn:
                (head,) = (await conn.execute_fetchall(_HEAD_SQL))[0]
        except sqlite3.Error:
            return None
        return head

    # -- labels ---------------------------------------------------------------------------
    async def labels_after(self, seq: int, limit: int) -> list[LabelRow]:
        """Up to `limit` labels of the snapshot with seq greater than `seq`, in seq order."""
        rows = await self._conn.execute_fetchall(
            f"SELECT {_LABELS} FROM labels WHERE seq > ? ORDER BY seq LIMIT ?", (seq, limit))
        return [_label(r) for r in rows]

    async def labels_at(self, seqs: list[int]) -> dict[int, LabelRow]:
        """The labels at these seqs (absent seqs are missing from the answer)."""
        out: dict[int, LabelRow] = {}
        for i in range(0, len(seqs), 500):
            chunk = seqs[i : i + 500]
            rows = await self._conn.execute_fetchall(
                f"SELECT {_LABELS} FROM labels WHERE seq IN ({', '.join('?' * len(chunk))})", chunk)
            out.update((r[0], _label(r)) for r in rows)
        return out

    async def count_between(self, low: int, high: int) -> int:
        """How many labels have low < seq <= high."""
        rows = await self._conn.execute_fetchall("SELECT count(*) FROM labels WHERE seq > ? AND seq <= ?", (low, high))
        return rows[0][0]

    async def state_after(self, seq: int, limit: int) -> list[tuple]:
        """label_state rows (uri, val, src, seq) with seq greater than `seq`, in seq order."""
        return [tuple(r) for r in await self._conn.execute_fetchall(
            "SELECT uri, val, src, seq FROM label_state WHERE seq > ? ORDER BY seq LIMIT ?", (seq, limit))]

    # -- decisions ------------------------------------------------------------------------
    async def decisions_after(self, id_: int, limit: int) -> list[DecisionRow]:
        """Up to `limit` decision rows with id greater than `id_`, in id order."""
        if not self._has_decisions:
            return []
        return [tuple(r) for r in await self._conn.execute_fetchall(
            f"SELECT {_DECISIONS} FROM decisions WHERE id > ? ORDER BY id LIMIT ?", (id_, limit))]

    async def decisions_at(self, ids: list[int]) -> dict[int, DecisionRow]:
        if not self._has_decisions or not ids:
            return {}
        rows = await self._conn.execute_fetchall(
            f"SELECT {_DECISIONS} FROM decisions WHERE id IN ({', '.join('?' * len(ids))})", ids)
        return {r[0]: tuple(r) for r in rows}

    async def count_decisions_upto(self, id_: int) -> int:
        if not self._has_decisions:
            return 0
        return (await self._conn.execute_fetchall("SELECT count(*) FROM decisions WHERE id <= ?", (id_,)))[0][0]

    # -- the other tables (ops/db_copy_tables.py) -------------------------------------------
    async def user_tables(self) -> dict[str, list[str]]:
        """name -> its columns, for every table but SQLite's internal, virtual (FTS) and shadow ones."""
        tables = {r[0]: r[1] for r in await self._conn.execute_fetchall(
            "SELECT name, sql FROM sqlite_master WHERE type = 'table'")}
        skip = shadow_tables(tables)
        out: dict[str, list[str]] = {}
        for name in sorted(tables):
            if name in skip:
                continue
            rows = await self._conn.execute_fetchall("SELECT name FROM pragma_table_info(?) ORDER BY cid", (name,))
            out[name] = [r[0] for r in rows]
        return out

    async def count_rows(self, table: str) -> int:
        quoted = '"' + table.replace('"', '""') + '"'
        return (await self._conn.execute_fetchall(f"SELECT count(*) FROM {quoted}"))[0][0]

    async def autoincrement_counters(self) -> dict[str, int]:
        """sqlite_sequence: the highest id each AUTOINCREMENT table ever gave out."""
        try:
            rows = await self._conn.execute_fetchall("SELECT name, seq FROM sqlite_sequence")
        except sqlite3.OperationalError:  # no AUTOINCREMENT table was ever written
            return {}
        return {name: seq for name, seq in rows if isinstance(seq, int)}

    async def read(self, sql: str, params: tuple = ()) -> list[tuple]:
        """A SELECT on the snapshot (query_only: nothing else runs)."""
        return [tuple(r) for r in await self._conn.execute_fetchall(sql, params)]
