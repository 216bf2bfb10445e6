"""`firehose-mod db copy`, the rest of the deployment: every table other than the label log.

ops/db_copy.py copies the label log (labels, label_state, the head) and the decisions; this
module copies every other table the SQLite file and the PostgreSQL database both have (source
cursors, tracks, the scan queue, dead letters, repo events, operators and their sessions,
nonces, reports, the review desk, transparency posts, the plyr.fm tables, backfill and import
progress, ...), generically: nothing here names a table.

What is copied is decided from both catalogues: the tables present on both sides (public
schema on PostgreSQL; not SQLite's internal, FTS or shadow tables), their common columns, each
converted to its PostgreSQL column's type (boolean from 0/1, bytea, integers, floats, text,
json/jsonb checked). A table only on SQLite is reported "not on PostgreSQL" with its row count
(its rows stay behind); a SQLite column PostgreSQL lacks is reported as dropped; a PostgreSQL
column SQLite lacks takes its default. Tables go in foreign-key order (parents first).

Each table is a merge of both sides in primary-key order (byte order on both sides): rows only
in the source are inserted (COPY), rows that differ are updated (only the columns that differ),
rows only on PostgreSQL are deleted, each batch one transaction. So a killed copy resumes where
it stopped, a finished one finds nothing to do, and a second run after the daemon stopped
brings the mutable rows (a cursor that moved on, a job that finished) to their final state.
PostgreSQL's guards are respected: a table whose triggers refuse UPDATE (append-only: reports,
moderation events, ...) only ever gets INSERTs, one refusing DELETE gets no deletes, and
columns under `BEFORE UPDATE OF` triggers (an operator's name, role, token) are never set.

Refused before anything is written (`CopyRefused`): a PostgreSQL table holding rows this
source does not have, unless the label log already proved the database a copy of this source
(then rows the source has since deleted, such as pruned nonces, are deleted too), and even then
rows above the source's highest id, rows an append-only table holds differently, or a guarded
column that differs.

After the rows, every id sequence (bigserial / identity) is set past both the highest id and
SQLite's AUTOINCREMENT counter, so the next row PostgreSQL writes gets the id SQLite would have
given. Verification merges both sides again: counts equal and every row equal after the same
conversion; rows PostgreSQL cannot take (a NULL where it requires a value, a value its type
cannot hold) are left out and reported.
"""

from __future__ import annotations

import datetime as dt
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from typing import Any

import asyncpg
import structlog

log = structlog.get_logger(__name__)

Progress = Callable[[str, int, int], None]  # (phase, done, total)

# Copied by ops/db_copy.py's label-log copy (or bookkeeping of each backend): never here.
# label_prev: SQLite's links from a label to the one before it on its subject (migration 17);
# PostgreSQL finds a subject's history through its own index of labels by uri instead.
EXCLUDED = frozenset({"labels", "label_state", "label_head", "label_prev", "decisions", "schema_version"})
PAGE = 5000  # rows read per page on each side
SHOWN = 3  # keys named in a refusal or a problem

_TEXT = {"text", "varchar", "bpchar", "name", "citext"}
_INTS = {"int2": 2**15, "int4": 2**31, "int8": 2**63}
_FLOATS = {"float4", "float8"}
# pg_trigger.tgtype bits
_ROW, _BEFORE, _DELETE, _UPDATE = 1, 2, 8, 16


class CopyRefused(Exception):
    """The target holds rows that are not this source's; the message says how to go on."""


class Unfit(ValueError):
    """A source value PostgreSQL's column cannot take."""


# -- conversions -------------------------------------------------------------------------
def _convert(typ: str, v: Any) -> Any:
    """A SQLite value as the PostgreSQL column of type `typ` (pg_type.typname) takes it."""
    if v is None:
        return None
    if typ == "bool":
        if isinstance(v, (int, float)) and v in (0, 1):
            return bool(v)
        if isinstance(v, str) and v.lower() in ("0", "1", "true", "false", "t", "f"):
            return v.lower() in ("1", "true", "t")
        raise Unfit(f"{v!r} is no boolean (0 or 1)")
    if typ in _INTS:
        if isinstance(v, float):
            if not v.is_integer():
                raise Unfit(f"{v!r} is no integer")
            v = int(v)
        elif isinstance(v, str):
            try:
                v = int(v)
            except ValueError:
                raise Unfit(f"{v!r} is no integer") from None
        elif not isinstance(v, int):
            raise Unfit(f"{v!r} is no integer")
        if not -_INTS[typ] <= v < _INTS[typ]:
            raise Unfit(f"{v} is out of range for {typ}")
        return int(v)
    if typ in _FLOATS:
        try:
            return float(v)
        except (TypeError, ValueError):
            raise Unfit(f"{v!r} is no number") from None
    if typ == "numeric":
        try:
            return Decimal(str(v))
        except ArithmeticError:
            raise Unfit(f"{v!r} is no number") from None
    if typ == "bytea":
        if isinstance(v, (bytes, bytearray, memoryview)):
            return bytes(v)
        if isinstance(v, str):
            return v.encode()
        raise Unfit(f"{v!r} is no blob")
    if typ in ("json", "jsonb"):
        text = v.decode() if isinstance(v, (bytes, bytearray, memoryview)) else v if isinstance(v, str) else json.dumps(v)
        try:
            json.loads(text)
        except ValueError:
            raise Unfit(f"{text[:40]!r} is no JSON") from None
        if "\\u0000" in text and typ == "jsonb":
            raise Unfit("jsonb cannot hold \\u0000")
        return text
    if typ in ("timestamptz", "timestamp", "date"):
        if not isinstance(v, str):
            raise Unfit(f"{v!r} is no timestamp")
        try:
            parsed = dt.datetime.fromisoformat(v)
        except ValueError:
            raise Unfit(f"{v!r} is no ISO 8601 timestamp") from None
        return parsed.date() if typ == "date" else parsed
    if typ == "uuid":
        try:
            return uuid.UUID(str(v))
        except ValueError:
            raise Unfit(f"{v!r} is no UUID") from None
    if typ in _TEXT:
        if isinstance(v, (bytes, bytearray, memoryview)):
            try:
                v = bytes(v).decode()
            except UnicodeDecodeError:
                raise Unfit("a blob that is no UTF-8 text") from None
        elif not isinstance(v, str):
            v = str(v)
        if "\x00" in v:
            raise Unfit("text with a NUL character")
        return v
    return v  # another type: as it is (asyncpg says if it cannot take it)


def _converter(typ: str) -> Callable[[Any], Any]:
    """_convert for one column type, with the common case (the value already right) first."""
    if typ in _TEXT:
        return lambda v: v if type(v) is str and "\x00" not in v else _convert(typ, v)
    if typ in _INTS:
        limit = _INTS[typ]
        return lambda v: v if type(v) is int and -limit <= v < limit else _convert(typ, v)
    if typ in _FLOATS:
        return lambda v: v if type(v) is float else _convert(typ, v)
    if typ == "bytea":
        return lambda v: v if type(v) is bytes else _convert(typ, v)
    if typ == "bool":
        return lambda v: v == 1 if type(v) is int and (v == 0 or v == 1) else _convert(typ, v)
    return lambda v: _convert(typ, v)


def _canonical(typ: str, v: Any) -> Any:
    """One form for comparing a converted source value with what PostgreSQL gives back."""
    if v is None:
        return None
    if typ == "bytea":
        return bytes(v)
    if typ in ("json", "jsonb"):
        return json.loads(v)
    return v


# -- the plan ----------------------------------------------------------------------------
@dataclass
class TablePlan:
    name: str
    columns: list[str]  # copied: the common columns, in PostgreSQL's order
    types: list[str]  # their pg_type.typname
    not_null: list[bool]
    pk: list[int]  # indexes into columns
    no_update: bool = False  # a BEFORE UPDATE row trigger without columns: append-only
    no_delete: bool = False
    guarded: set[str] = field(default_factory=set)  # BEFORE UPDATE OF columns: never SET
    serials: dict[str, str] = field(default_factory=dict)  # column -> its sequence
    refs: set[str] = field(default_factory=set)  # tables its foreign keys point at
    dropped: list[str] = field(default_factory=list)  # SQLite columns PostgreSQL lacks
    defaulted: list[str] = field(default_factory=list)  # PostgreSQL columns SQLite lacks
    problem: str | None = None  # cannot be copied (why)

    def __post_init__(self) -> None:
        self.converters = [_converter(t) for t in self.types]
        self.required = [i for i, nn in enumerate(self.not_null) if nn]

    @property
    def single_int_pk(self) -> bool:
        return len(self.pk) == 1 and self.types[self.pk[0]] in _INTS


@dataclass
class TableReport:
    """One table's entry of the JSON report."""

    table: str
    status: str  # copied | unchanged | not on PostgreSQL | incompatible
    source_rows: int = 0
    target_rows_before: int = 0
    inserted: int = 0
    updated: int = 0
    deleted: int = 0
    unfit: int = 0  # source rows PostgreSQL's column types cannot take (left out; see problems)
    refused: int = 0  # rows PostgreSQL's constraints refused (a foreign key, a CHECK; left out; see problems)
    batches: int = 0
    append_only: bool = False
    dropped_columns: list[str] = field(default_factory=list)
    defaulted_columns: list[str] = field(default_factory=list)
    next_ids: dict[str, int] = field(default_factory=dict)
    verified: bool | None = None
    target_rows: int | None = None  # after the copy (verification)
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


async def _pg_catalogue(conn: asyncpg.Connection) -> dict[str, dict]:
    """Per public table: columns (name, typname, not null), pk, fks, triggers, sequences."""
    tables: dict[str, dict] = {}
    for r in await conn.fetch(
            "SELECT c.relname, a.attname, t.typname, a.attnotnull, a.atthasdef OR a.attidentity <> '' AS has_default,"
            " pg_get_serial_sequence(quote_ident(c.relname), a.attname) AS seq"
            " FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace"
            " JOIN pg_type t ON t.oid = a.atttypid"
            " WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND a.attnum > 0 AND NOT a.attisdropped"
            " ORDER BY c.relname, a.attnum"):
        t = tables.setdefault(r["relname"], {"columns": [], "pk": [], "refs": set(), "triggers": [], "seqs": {}})
        t["columns"].append((r["attname"], r["typname"], r["attnotnull"], r["has_default"]))
        if r["seq"]:
            t["seqs"][r["attname"]] = r["seq"]
    for r in await conn.fetch(
            "SELECT c.relname, con.contype::text AS contype, f.relname AS ref,"
            " array(SELECT a.attname FROM unnest(con.conkey) WITH ORDINALITY k(n, i) JOIN pg_attribute a"
            "       ON a.attrelid = con.conrelid AND a.attnum = k.n ORDER BY k.i) AS cols"
            " FROM pg_constraint con JOIN pg_class c ON c.oid = con.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace"
            " LEFT JOIN pg_class f ON f.oid = con.confrelid"
            " WHERE n.nspname = 'public' AND con.contype IN ('p', 'f')"):
        if r["relname"] not in tables:
            continue
        if r["contype"] == "p":
            tables[r["relname"]]["pk"] = list(r["cols"])
        elif r["ref"] != r["relname"]:
            tables[r["relname"]]["refs"].add(r["ref"])
    for r in await conn.fetch(
            "SELECT c.relname, t.tgtype, t.tgqual IS NOT NULL AS conditional,"
            " array(SELECT a.attname FROM pg_attribute a WHERE a.attrelid = t.tgrelid AND a.attnum = ANY(t.tgattr))"
            "   AS cols"
            " FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = 'public' AND NOT t.tgisinternal AND t.tgenabled <> 'D'"):
        if r["relname"] in tables:
            tables[r["relname"]]["triggers"].append((r["tgtype"], r["conditional"], list(r["cols"])))
    return tables


def _plan(name: str, src_columns: list[str], pg: dict) -> TablePlan:
    src = set(src_columns)
    cols = [c for c in pg["columns"] if c[0] in src]
    plan = TablePlan(name, [c[0] for c in cols], [c[1] for c in cols], [c[2] for c in cols], [])
    plan.dropped = [c for c in src_columns if c not in {p[0] for p in pg["columns"]}]
    plan.defaulted = [c[0] for c in pg["columns"] if c[0] not in src]
    plan.refs = set(pg["refs"])
    plan.serials = {c: s for c, s in pg["seqs"].items() if c in plan.columns}
    for tgtype, conditional, tcols in pg["triggers"]:
        if not tgtype & _ROW or not tgtype & _BEFORE:
            continue
        if tgtype & _DELETE and not conditional:
            plan.no_delete = True
        if tgtype & _UPDATE:
            if tcols and not conditional:
                plan.guarded.update(tcols)
            elif not tcols and not conditional:
                plan.no_update = True
    required = [c[0] for c in pg["columns"] if c[0] not in src and c[2] and not c[3]]
    if required:
        plan.problem = (f"PostgreSQL requires column(s) {', '.join(required)}, which the SQLite table lacks"
                        " (no default): the schemas differ")
    elif not pg["pk"]:
        plan.problem = "the PostgreSQL table has no primary key to match rows by"
    elif missing := [c for c in pg["pk"] if c not in src]:
        plan.problem = f"the SQLite table lacks the primary-key column(s) {', '.join(missing)}"
    else:
        plan.pk = [plan.columns.index(c) for c in pg["pk"]]
    return plan


def _order(plans: list[TablePlan]) -> list[TablePlan]:
    """Parents before the tables whose foreign keys point at them (by name where free)."""
    by_name = {p.name: p for p in plans}
    done: list[TablePlan] = []
    placed: set[str] = set()
    pending = sorted(by_name)
    while pending:
        ready = [n for n in pending if not (by_name[n].refs & set(by_name)) - placed - {n}]
        if not ready:  # a cycle: the rest by name (a foreign key may then refuse: reported)
            log.warning("db_copy.tables_fk_cycle", tables=pending)
            ready = pending
        for n in ready:
            done.append(by_name[n])
            placed.add(n)
        pending = [n for n in pending if n not in placed]
    return done


# -- the copy ----------------------------------------------------------------------------
@dataclass
class _Row:
    key: tuple
    values: tuple | None  # converted; None when unfit
    why: str | None = None


class TableCopier:
    """Copies the tables the SQLite source and the PostgreSQL target share; see the module docstring.

    `source` is store/label_export.py's SqliteLabelSource (its one read snapshot), `target`
    store/pg/copy.py's PgCopyTarget (its connection, its `before_commit` test seam)."""

    def __init__(self, source, target, *, batch: int = 5000, progress: Progress | None = None):
        self.source, self.target = source, target
        self.batch = max(1, batch)
        self.progress = progress
        self.plans: list[TablePlan] = []
        self.reports: dict[str, TableReport] = {}
        self.not_on_postgresql: dict[str, int] = {}
        self._sqlite_seq: dict[str, int] = {}

    @property
    def _db(self) -> asyncpg.Connection:
        return self.target.connection

    async def plan(self) -> list[TablePlan]:
        """Decide what is copied, from both catalogues."""
        src_tables = await self.source.user_tables()
        pg = await _pg_catalogue(self._db)
        self._sqlite_seq = await self.source.autoincrement_counters()
        plans = []
        for name, columns in sorted(src_tables.items()):
            if name in EXCLUDED:
                continue
            count = await self.source.count_rows(name)
            if name not in pg:
                self.not_on_postgresql[name] = count
                self.reports[name] = TableReport(name, "not on PostgreSQL", source_rows=count)
                continue
            plan = _plan(name, columns, pg[name])
            report = self.reports[name] = TableReport(
                name, "incompatible" if plan.problem else "pending", source_rows=count, append_only=plan.no_update,
                dropped_columns=plan.dropped, defaulted_columns=plan.defaulted)
            report.target_rows_before = await self._db.fetchval(f"SELECT count(*) FROM {_q(name)}")
            if plan.problem:
                report.problems.append(plan.problem)
                log.warning("db_copy.table_incompatible", table=name, problem=plan.problem)
                continue
            for column in plan.dropped:  # a schema difference: the values are lost unless PostgreSQL gets the column
                held = (await self.source.read(f"SELECT count({_q(column)}) FROM {_q(name)}"))[0][0]
                log.warning("db_copy.column_not_on_postgresql", table=name, column=column, values=held)
                if held:
                    report.problems.append(f"column {column} is not on PostgreSQL: its {held} value(s) were not copied")
            plans.append(plan)
        self.plans = _order(plans)
        return self.plans

    # -- reading both sides, in key order -------------------------------------------------
    async def _source_rows(self, p: TablePlan) -> AsyncIterator[_Row]:
        cols = ", ".join(_q(c) for c in p.columns)
        order = ", ".join(_q(p.columns[i]) for i in p.pk)
        last: tuple | None = None
        while True:
            where = f" WHERE ({order}) > ({', '.join('?' * len(p.pk))})" if last is not None else ""
            rows = await self.source.read(f"SELECT {cols} FROM {_q(p.name)}{where} ORDER BY {order} LIMIT ?",
                                          (*(last or ()), PAGE))
            for raw in rows:
                yield self._convert_row(p, raw)
            if len(rows) < PAGE:
                return
            last = tuple(rows[-1][i] for i in p.pk)

    def _convert_row(self, p: TablePlan, raw: tuple) -> _Row:
        try:
            values = tuple([f(v) for f, v in zip(p.converters, raw, strict=True)])
        except Unfit:
            pass
        else:
            if not any(values[i] is None for i in p.required):
                return _Row(tuple([values[i] for i in p.pk]), values)
        return self._convert_row_slowly(p, raw)

    def _convert_row_slowly(self, p: TablePlan, raw: tuple) -> _Row:
        """A row that has a value PostgreSQL cannot take: which, and why."""
        out = []
        why = None
        for name, typ, not_null, v in zip(p.columns, p.types, p.not_null, raw, strict=True):
            try:
                c = _convert(typ, v)
            except Unfit as exc:
                why, c = f"{name}: {exc}", None
            if c is None and not_null and why is None:
                why = f"{name} is NULL, which PostgreSQL refuses (NOT NULL)"
            out.append(c)
        key = tuple(out[i] if out[i] is not None else raw[i] for i in p.pk)
        return _Row(key, None if why else tuple(out), why)

    async def _target_rows(self, p: TablePlan) -> AsyncIterator[_Row]:
        cols = ", ".join(_q(c) for c in p.columns)
        keys = [_q(p.columns[i]) + (' COLLATE "C"' if p.types[i] in _TEXT else "") for i in p.pk]
        params = [f"${n + 1}::{p.types[i]}" for n, i in enumerate(p.pk)]
        order = ", ".join(keys)
        last: tuple | None = None
        while True:
            where = f" WHERE ({order}) > ({', '.join(params)})" if last is not None else ""
            rows = await self._db.fetch(
                f"SELECT {cols} FROM {_q(p.name)}{where} ORDER BY {order} LIMIT ${len(last or ()) + 1}",
                *(last or ()), PAGE)
            for r in rows:
                values = tuple(r)
                yield _Row(tuple(values[i] for i in p.pk), values)
            if len(rows) < PAGE:
                return
            last = tuple(rows[-1][i] for i in p.pk)

    async def _merge(self, p: TablePlan) -> AsyncIterator[tuple[_Row | None, _Row | None]]:
        """Pairs (source row, target row) by key; None on the side that lacks the key.

        The copy writes the target while this still reads it page by page, and that is safe: a
        row is only written at a key below the target row in hand (or after the target's last
        page was read), and the next page starts above the last key of the page in hand, so a
        row the copy wrote is never read back as one only the target has."""
        src, tgt = self._source_rows(p), self._target_rows(p)
        s, t = await anext(src, None), await anext(tgt, None)
        while s is not None or t is not None:
            if t is None or (s is not None and s.key < t.key):
                yield s, None
                s = await anext(src, None)
            elif s is None or t.key < s.key:
                yield None, t
                t = await anext(tgt, None)
            else:
                yield s, t
                s, t = await anext(src, None), await anext(tgt, None)

    def _differs(self, p: TablePlan, s: _Row, t: _Row) -> list[int]:
        """Indexes of the columns whose values differ (after conversion)."""
        if s.values == t.values:
            return []
        return [i for i, typ in enumerate(p.types)
                if _canonical(typ, s.values[i]) != _canonical(typ, t.values[i])]

    def _ceiling(self, p: TablePlan) -> int | None:
        """SQLite's AUTOINCREMENT counter of a table whose key is an id from a sequence (None: no such key)."""
        if not p.single_int_pk or p.columns[p.pk[0]] not in p.serials:
            return None
        return self._sqlite_seq.get(p.name, 0)

    # -- before anything is written -------------------------------------------------------
    async def preflight(self, *, proven: bool) -> None:
        """CopyRefused unless every non-empty target table holds only what this source (still or
        once) had; `proven`: the label log showed the target to be a copy of this source."""
        reasons: list[str] = []
        for p in self.plans:
            if not self.reports[p.name].target_rows_before:
                continue
            extra, frozen, guarded = [], [], []
            top = 0
            async for s, t in self._merge(p):
                if s is not None and p.single_int_pk and isinstance(s.key[0], int):
                    top = max(top, s.key[0])
                if s is None:
                    extra.append(t.key)
                elif t is not None and s.values is not None:
                    diff = self._differs(p, s, t)
                    if diff and p.no_update:
                        frozen.append(s.key)
                    elif any(p.columns[i] in p.guarded for i in diff):
                        guarded.append(s.key)
            ceiling = self._ceiling(p)
            extra_above = [] if ceiling is None else [k for k in extra if k[0] > max(ceiling, top)]
            if extra_above:
                reasons.append(f"{p.name} holds {len(extra_above)} row(s) with ids the source never gave out"
                               f" ({_keys(extra_above)})")
            elif extra and (not proven or p.no_delete):
                reasons.append(f"{p.name} holds {len(extra)} row(s) the source does not have ({_keys(extra)})")
            if frozen:
                reasons.append(f"{p.name} (append-only) holds {len(frozen)} row(s) that differ from the source's"
                               f" ({_keys(frozen)})")
            if guarded:
                reasons.append(f"{p.name} holds {len(guarded)} row(s) whose {', '.join(sorted(p.guarded))} differ"
                               f" from the source's ({_keys(guarded)})")
        if reasons:
            raise CopyRefused(
                "the PostgreSQL database holds rows that are not this source's: " + "; ".join(reasons[:5])
                + ": copy into an empty database (createdb a new one and point --to at it), or --from the SQLite"
                " database this one was copied from")

    # -- the copy -------------------------------------------------------------------------
    async def copy(self) -> list[TableReport]:
        for p in self.plans:
            await self._copy_table(p)
        return list(self.reports.values())

    async def _copy_table(self, p: TablePlan) -> None:
        report = self.reports[p.name]
        started = time.monotonic()
        inserts: list[tuple] = []
        updates: list[tuple[tuple[int, ...], tuple]] = []
        deletes: list[tuple] = []
        done = 0
        unfit: list[str] = []
        async for s, t in self._merge(p):
            if s is not None:
                done += 1
                if s.values is None:
                    report.unfit += 1
                    if len(unfit) < SHOWN:
                        unfit.append(f"{_key(s.key)}: {s.why}")
                    continue
            if t is None:
                inserts.append(s.values)
            elif s is None:
                if p.no_delete:  # the preflight refused such a target; never delete under the guard
                    continue
                deletes.append(t.key)
            elif diff := self._differs(p, s, t):
                if p.no_update:
                    continue  # refused by the preflight; the verification names it if it happens
                updates.append((tuple(i for i in diff if p.columns[i] not in p.guarded and i not in p.pk), s.values))
            if len(inserts) + len(updates) + len(deletes) >= self.batch:
                await self._apply(p, report, inserts, updates, deletes, done)
                inserts, updates, deletes = [], [], []
                if self.progress is not None:
                    self.progress(f"table {p.name}", done, report.source_rows)
        if inserts or updates or deletes:
            await self._apply(p, report, inserts, updates, deletes, done)
        if self.progress is not None:
            self.progress(f"table {p.name}", done, report.source_rows)
        if report.unfit:
            report.problems.append(f"{report.unfit} row(s) PostgreSQL cannot take were left out: {'; '.join(unfit)}")
            log.warning("db_copy.rows_unfit", table=p.name, rows=report.unfit, first=unfit)
        await self._set_sequences(p, report)
        report.status = "copied" if report.inserted or report.updated or report.deleted else "unchanged"
        report.seconds = round(time.monotonic() - started, 3)
        log.info("db_copy.table", table=p.name, inserted=report.inserted, updated=report.updated,
                 deleted=report.deleted, unfit=report.unfit, seconds=report.seconds)

    async def _apply(self, p: TablePlan, report: TableReport, inserts: list[tuple],
                     updates: list[tuple[tuple[int, ...], tuple]], deletes: list[tuple], done: int) -> None:
        """One batch, one transaction. If PostgreSQL refuses a row (a constraint SQLite did not
        enforce: a foreign key to a missing row, a CHECK), the batch goes again row by row, each
        in a savepoint, and the refused rows are left out and reported (the verification lists
        them as missing)."""
        db = self._db
        where = " AND ".join(f"{_q(p.columns[i])} = ${n + 1}" for n, i in enumerate(p.pk))
        updates = [(cols, values) for cols, values in updates if cols]

        def update_sql(cols: tuple[int, ...]) -> str:
            sets = ", ".join(f"{_q(p.columns[i])} = ${len(p.pk) + n + 1}" for n, i in enumerate(cols))
            return f"UPDATE {_q(p.name)} SET {sets} WHERE {where}"

        def update_args(cols: tuple[int, ...], r: tuple) -> tuple:
            return (*(r[i] for i in p.pk), *(r[i] for i in cols))

        try:
            async with db.transaction():
                if deletes:
                    await db.executemany(f"DELETE FROM {_q(p.name)} WHERE {where}", deletes)
                groups: dict[tuple[int, ...], list[tuple]] = {}
                for cols, values in updates:
                    groups.setdefault(cols, []).append(values)
                for cols, rows in groups.items():
                    await db.executemany(update_sql(cols), [update_args(cols, r) for r in rows])
                if inserts:
                    await db.copy_records_to_table(p.name, records=inserts, columns=p.columns, schema_name="public")
                if self.target.before_commit is not None:
                    self.target.before_commit(p.name, done)
            report.inserted += len(inserts)
            report.updated += len(updates)
            report.deleted += len(deletes)
        except (asyncpg.IntegrityConstraintViolationError, asyncpg.DataError) as exc:
            log.warning("db_copy.batch_refused", table=p.name, error=str(exc), rows=len(inserts) + len(updates))
            await self._apply_each(p, report, inserts, updates, deletes, done, where, update_sql, update_args)
        report.batches += 1

    async def _apply_each(self, p: TablePlan, report: TableReport, inserts, updates, deletes, done, where,
                          update_sql, update_args) -> None:
        db = self._db
        marks = ", ".join(f"${n + 1}" for n in range(len(p.columns)))
        insert_sql = f"INSERT INTO {_q(p.name)} ({', '.join(_q(c) for c in p.columns)}) VALUES ({marks})"
        steps = ([("deleted", f"DELETE FROM {_q(p.name)} WHERE {where}", k, k) for k in deletes]
                 + [("updated", update_sql(cols), update_args(cols, r), tuple(r[i] for i in p.pk)) for cols, r in updates]
                 + [("inserted", insert_sql, r, tuple(r[i] for i in p.pk)) for r in inserts])
        counts = {"deleted": 0, "updated": 0, "inserted": 0}
        refused: list[str] = []
        async with db.transaction():
            for what, sql, args, key in steps:
                try:
                    async with db.transaction():  # a savepoint
                        await db.execute(sql, *args)
                    counts[what] += 1
                except (asyncpg.IntegrityConstraintViolationError, asyncpg.DataError) as exc:
                    report.refused += 1
                    refused.append(f"{_key(key)}: {type(exc).__name__}: {exc}")
            if self.target.before_commit is not None:
                self.target.before_commit(p.name, done)
        report.inserted += counts["inserted"]
        report.updated += counts["updated"]
        report.deleted += counts["deleted"]
        if refused:
            report.problems.append(f"PostgreSQL refused {len(refused)} row(s) (left as they were): "
                                   + "; ".join(refused[:SHOWN]) + (" ..." if len(refused) > SHOWN else ""))
            log.warning("db_copy.rows_refused", table=p.name, rows=len(refused), first=refused[:SHOWN])

    async def _set_sequences(self, p: TablePlan, report: TableReport) -> None:
        """Every sequence of the table past its highest id and SQLite's AUTOINCREMENT counter."""
        for column, seq in p.serials.items():
            top = await self._db.fetchval(f"SELECT coalesce(max({_q(column)}), 0) FROM {_q(p.name)}")
            floor = max(top, self._sqlite_seq.get(p.name, 0) if p.single_int_pk and p.columns[p.pk[0]] == column else 0)
            last, called = await self._db.fetchrow(f"SELECT last_value, is_called FROM {seq}")
            current = last if called else last - 1
            if floor > current:
                await self._db.execute("SELECT setval($1::regclass, $2)", seq, floor)
                current = floor
            report.next_ids[column] = current + 1

    # -- verification ---------------------------------------------------------------------
    async def verify(self, problems: list[str]) -> None:
        """Merge both sides again: counts and every row equal (after the same conversion)."""
        for p in self.plans:
            report = self.reports[p.name]
            missing, extra, differing = [], [], []
            fit = n = 0
            async for s, t in self._merge(p):
                if t is not None:
                    n += 1
                if s is not None and s.values is None:
                    continue  # unfit: reported by the copy
                if s is not None:
                    fit += 1
                if t is None:
                    missing.append(s.key)
                elif s is None:
                    extra.append(t.key)
                elif self._differs(p, s, t):
                    differing.append(s.key)
                if self.progress is not None and s is not None and fit % PAGE == 0:
                    self.progress(f"verify {p.name}", fit, report.source_rows)
            found = []
            if n != fit:
                found.append(f"{p.name}: {fit} rows in the source, {n} on PostgreSQL")
            for what, keys in (("missing on PostgreSQL", missing), ("only on PostgreSQL", extra),
                               ("differing", differing)):
                if keys:
                    found.append(f"{p.name}: {len(keys)} row(s) {what} ({_keys(keys)})")
            for column, next_id in report.next_ids.items():
                top = await self._db.fetchval(f"SELECT coalesce(max({_q(column)}), 0) FROM {_q(p.name)}")
                if next_id <= top:
                    found.append(f"{p.name}: the next {column} would be {next_id}, not past {top}")
            found += [f"{p.name}: {x}" for x in report.problems]
            report.target_rows, report.verified = n, not found
            problems.extend(found)
        for report in self.reports.values():
            if report.status == "incompatible":
                problems.extend(f"{report.table}: {p}" for p in report.problems)


def _key(key: tuple) -> str:
    return ", ".join(v.hex()[:16] if isinstance(v, bytes) else str(v) for v in key)


def _keys(keys: list[tuple]) -> str:
    shown = "; ".join(_key(k) for k in keys[:SHOWN])
    return f"key {shown}" + (f" and {len(keys) - SHOWN} more" if len(keys) > SHOWN else "")

