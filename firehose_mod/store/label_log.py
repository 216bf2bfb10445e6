"""The label log: append-only, signed, durable; `seq` is the subscribeLabels cursor.

Write rules (one writer connection, each emit one `BEGIN IMMEDIATE` transaction):
- emitting a label already in force (same uri, val, cid and exp, not negated, not expired)
  is a no-op and returns None;
- a negation is written only for a label in force;
- a label whose `emit` returned is committed with the configured `synchronous` level
  (FULL by default), so it survives `kill -9` of the process and a power cut;
- an imported label (`EmitRequest.cts` given: another labeler's label, `firehose-mod import`)
  keeps its cts, is skipped when our latest label on (uri, val) is newer than it, and is
  skipped when the log already holds it (same uri, val, neg and cts): importing twice writes
  nothing.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import aiosqlite
import anyio
import structlog
from libipld import encode_dag_cbor

from firehose_mod.labels.model import Label, fast_frozen_init, now_iso, parse_datetime, validate_label_fields
from firehose_mod.labels.sign_worker import ParallelSigner
from firehose_mod.labels.signing import SigningKey
from firehose_mod.store.db import insert_many, open_db, transaction
from firehose_mod.store.decisions import DecisionWriter
from firehose_mod.store.presence import daemon_running
from firehose_mod.store.wal_checkpoint import Checkpointer
from firehose_mod.store.query import QueryBudget, QueryConnections, build_query, prefix_upper_bound

log = structlog.get_logger(__name__)

_COLUMNS = "seq, src, uri, cid, val, neg, cts, exp, sig, key_id, cbor"
# The highest seq given out: the last row's, or the floor an operator raised sqlite_sequence to.
_HEAD_SQL = (
    "SELECT max(coalesce((SELECT seq FROM labels ORDER BY seq DESC LIMIT 1), 0),"
    " coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'labels'), 0))"
)
# Up to this many labels a commit logs a `label.written` line each; a larger batch logs one
# `labels.written` summary.
_LOG_EACH_UP_TO = 10
# seq is given explicitly (head + 1, ...: we hold the write lock); AUTOINCREMENT still moves
# sqlite_sequence to the largest, so `head()` and `raise_seq_floor` keep working.
_LABELS_SQL = ("INSERT INTO labels (seq, src, uri, cid, val, neg, cts, exp, sig, key_id, cbor)"
               " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
_STATE_SQL = ("INSERT INTO label_state (uri, val, src, seq) VALUES (?, ?, ?, ?)"
              " ON CONFLICT (uri, val, src) DO UPDATE SET seq = excluded.seq")
# A label's predecessor on the same (uri, val, src), when it has one (migration 17).
_PREV_SQL = "INSERT INTO label_prev (seq, prev) VALUES (?, ?)"
# Every label on a subject: label_state's row for each (val, src) of the uri, then each one's chain
# of predecessors back through label_prev (migration 17 replaced the index of labels by uri).
_CHAIN = ("WITH RECURSIVE chain(seq) AS (SELECT seq FROM label_state WHERE {where}"
          " UNION ALL SELECT p.prev FROM chain c JOIN label_prev p ON p.seq = c.seq)")
WAL_RESTART_FRAMES = 6144  # past this (24 MiB of WAL) a batch lets the checkpoint finish before BEGIN
WRITER_AUTOCHECKPOINT_PAGES = 32768  # the writer checkpoints when the WAL is past this (default 1,000)
WRITER_CACHE_KIB = 65536  # the writer connection's page cache (SQLite's default is 2,000 KiB)


@fast_frozen_init
@dataclass(frozen=True, slots=True)
class StoredLabel:
    """A label as committed: its seq, the signed label, the did:key that signed it and its wire CBOR."""

    seq: int
    label: Label
    key_id: str
    cbor: bytes


@dataclass(frozen=True, slots=True)
class EmitRequest:
    """What a caller asks for; the log fills in src, cts, ver and sig."""

    uri: str
    val: str
    cid: str | None = None
    neg: bool = False
    exp: str | None = None
    cts: str | None = None  # an imported label's own creation time, kept (see the module docstring)


def _row(row: tuple) -> StoredLabel:
    seq, src, uri, cid, val, neg, cts, exp, sig, key_id, cbor = row
    label = Label(src=src, uri=uri, val=val, cts=cts, cid=cid, neg=bool(neg), exp=exp, sig=bytes(sig))
    return StoredLabel(seq, label, key_id, bytes(cbor))


class LabelLogBase:
    """What both label logs (SQLite here, PostgreSQL in store/pg/) do the same way over their own
    reads: `emit` of one label, and labels signed by an older key re-signed on the way out."""

    key: SigningKey
    _resigned: dict[int, bytes]

    async def emit(
        self, uri: str, val: str, *, cid: str | None = None, neg: bool = False, exp: str | None = None
    ) -> StoredLabel | None:
        """Append one signed label; None when it would change nothing (see the module docstring)."""
        written = await self.emit_many([EmitRequest(uri, val, cid, neg, exp)])
        return written[0] if written else None

    async def _on_the_wire(self, rows) -> list[tuple[int, bytes]]:
        """(seq, wire CBOR) of `rows` of (seq, key_id, cbor): a label signed by a key other than the
        current one (after a rotation) is re-signed with the current key, so verifiers holding the
        new DID document key accept it; the stored original is left untouched."""
        current = self.key.did_key
        out = []
        for s, key_id, cbor in rows:
            if key_id != current:
                cbor = await self._resign(s)
            out.append((s, bytes(cbor)))
        return out

    async def _resign(self, seq: int) -> bytes:
        cached = self._resigned.get(seq)
        if cached is None:
            cached = self.key.sign((await self._stored_at(seq)).label).to_cbor()
            if len(self._resigned) > 100_000:
                self._resigned.clear()
            self._resigned[seq] = cached
        return cached


class LabelLog(LabelLogBase):
    """The public API of the label log; see the module docstring for the write rules."""

    def __init__(self, writer: aiosqlite.Connection, reader: aiosqlite.Connection, key: SigningKey, src: str,
                 *, path: Path | None = None, busy_wait: float | None = None, queries: QueryConnections | None = None):
        self._writer = writer
        self._path = path
        # How long a write waits for another process's lock: None (the daemon) is for ever;
        # an operator command says who holds it after this many seconds.
        self.busy_wait = busy_wait
        # An operator command (a burst, `rescan --apply`) pauses after each commit for as long as
        # the commit held the lock, so the daemon's own writes (ingest, scans), polling in SQLite's
        # busy handler, get the lock between its batches instead of starving behind them (the busy
        # wait is not first come, first served). A label at a time pauses a few milliseconds.
        # Only while a daemon runs on this file (store/presence.py): alone, a command goes full speed.
        self.yield_to_daemon = busy_wait is not None
        self._reader = reader
        # queryLabels runs on connections of its own: the live stream reads from `_reader`.
        self._queries = queries or QueryConnections([reader], owned=False)
        self.key = key
        self.src = src
        self._listeners: list[Callable[[list[StoredLabel]], None]] = []
        # One connection, many tasks: transactions must not interleave on it.
        self._write_lock = anyio.Lock()
        self._resigned: dict[int, bytes] = {}
        # Signs large batches in a helper process and the writer thread at once (started on the
        # first batch that needs it; used on the writer connection's thread only).
        self._signer: ParallelSigner | None = None
        self._signer_key: SigningKey | None = None
        # Copies the WAL back while the next batch is built (see store/wal_checkpoint.py).
        self._checkpointer = Checkpointer(path) if path is not None else None

    @classmethod
    async def open(cls, path: Path, key: SigningKey, src: str, *, synchronous: str = "FULL",
                   busy_wait: float | None = None) -> LabelLog:
        writer = await open_db(path, synchronous=synchronous)
        try:
            # A 1,000-label batch dirties ~4,000 pages (random leaves of the uri indexes): at the
            # default of 1,000 the writer checkpointed (copied and fsynced the database) after every
            # batch. Every 32,768 pages (128 MiB of WAL) it copies each page once per several batches.
            await writer.execute(f"PRAGMA wal_autocheckpoint = {WRITER_AUTOCHECKPOINT_PAGES}")
            # Room for what a batch touches on a large log: its ~4,000 dirty leaves plus the interior
            # pages of the random uri indexes (~26 MB at 5M labels). With SQLite's default 2 MB the
            # batch spilled dirty pages to the WAL before COMMIT, read the leaves its state lookup had
            # just read again for the upsert, and the background checkpoint could not let the WAL
            # start over. Pages are allocated as they are used: a small log stays small.
            await writer.execute(f"PRAGMA cache_size = -{WRITER_CACHE_KIB}")
            # A statement of many rows (store/db.py insert_many) keeps a statement journal of the pages
            # it changes, to undo itself alone; past 64 kB SQLite spills it to a temporary file, which
            # the upsert of a batch's random label_state leaves did (measured: 2.2 us a row, 1.6 here).
            await writer.execute("PRAGMA temp_store = MEMORY")
            reader = await open_db(path, synchronous=synchronous)
        except BaseException:
            await writer.close()
            raise
        try:
            queries = await QueryConnections.open(path)
        except BaseException:
            await reader.close()
            await writer.close()
            raise
        return cls(writer, reader, key, src, path=path, busy_wait=busy_wait, queries=queries)

    async def close(self) -> None:
        await self._queries.close()
        await self._reader.close()
        await self._writer.close()
        self._close_signer()  # after the writer thread is gone: nothing signs any more
        if self._checkpointer is not None:
            self._checkpointer.close()

    def on_commit(self, listener: Callable[[list[StoredLabel]], None]) -> None:
        """Call `listener(written)` after each commit that appended labels."""
        self._listeners.append(listener)

    # -- writing -----------------------------------------------------------------------
    async def emit_many(
        self, requests: Iterable[EmitRequest], *,
        also: Callable[[DecisionWriter, list[StoredLabel]], Awaitable[object]] | None = None,
    ) -> list[StoredLabel]:
        """Append several labels in one transaction; requests that change nothing are skipped.

        `also(decisions, written)` runs inside the same transaction, so the decisions behind the
        labels (written through `decisions`) commit with them. It runs while the labels are signed
        (issue 19): `written` holds each label's seq and fields, but not yet its signature
        (`label.sig` is None, `cbor` empty); what `emit_many` returns and listeners get is signed.
        """
        requests = checked(requests)
        async with self._write_lock:
            started = time.monotonic()
            written = await self._append(requests, also)
            if self.yield_to_daemon and daemon_running(self._path):
                await anyio.sleep(min(1.0, time.monotonic() - started))
        if written:
            log_written(written)
            for listener in self._listeners:
                listener(written)
        return written

    async def _append(self, requests: list[EmitRequest], also=None) -> list[StoredLabel]:
        db = self._writer
        if self._checkpointer is not None and self._checkpointer.wal_frames() > WAL_RESTART_FRAMES:
            # The WAL starts over only at a transaction that began with every frame copied back.
            await self._checkpointer.catch_up()
        async with transaction(db, wait=self.busy_wait, path=self._path):
            written: list[StoredLabel] = []
            # Each step is one call on the connection's own thread: each aiosqlite call is a thread
            # hop, which costs more than the SQL itself. `_execute` is how aiosqlite runs a function
            # there; sqlite3 objects are bound to it. Between the two steps the signing helper signs
            # while `also` writes the decisions (the other core would otherwise be idle).
            batch = await db._execute(self._prepare_sync, db._conn, requests) if requests else None
            try:
                if also is not None:
                    unsigned = batch.unsigned() if batch is not None else []
                    await also(DecisionWriter(db, pending=batch.uris if batch is not None else None), unsigned)
                if batch is not None:
                    written = batch.written or await db._execute(self._finish_sync, db._conn, batch)
            finally:
                if batch is not None and batch.signing is not None:
                    self._signer.abandon(batch.signing)  # raised before the signatures were read
        if self._checkpointer is not None and written:
            self._checkpointer.committed(len(written))
        return written

    def _prepare_sync(self, conn: sqlite3.Connection, requests: list[EmitRequest]) -> _Batch | None:
        """The first step of a batch, on aiosqlite's thread, inside the write transaction: each
        label's seq, the signing begun, label_state and label_prev written (they need no signature)."""
        now = datetime.now(UTC)
        src, key = self.src, self.key
        if self._signer is None or self._signer_key is not key:
            self._close_signer()
            self._signer, self._signer_key = _signer_for(key), key
        clock = _Clock()
        # A request's label is fixed by the request and the clock (its seq is not signed): a batch
        # the helper will sign is sent to it before the state read decides which labels are written,
        # so the helper starts that much earlier. A request that changes nothing then costs the
        # helper a signature; the caller signs only chunks that hold a label written.
        def label_for(r: EmitRequest) -> Label:
            return Label(src, r.uri, r.val, r.cts or clock.now(), r.cid, r.neg, r.exp)

        early = self._signer.ready(len(requests))
        made = [label_for(r) for r in requests] if early else []
        made_fields = [label.unsigned() for label in made]
        signing = self._signer.begin([encode_dag_cbor(f) for f in made_fields]) if early else None
        try:
            current = self._currents(conn, {(r.uri, r.val) for r in requests})
            (head,) = conn.execute(_HEAD_SQL).fetchone()
            todo: list[tuple[int, Label]] = []
            picked: list[int] = []  # the index of each label written among the requests
            links: list[tuple[int, int]] = []  # (seq, the seq of the label before it on its (uri, val))
            for i, r in enumerate(requests):
                seq_cur = current.get((r.uri, r.val))
                cur = seq_cur[1] if seq_cur is not None else None
                if r.cts is not None and not self._import_applies(conn, cur, r):
                    continue
                if not _changes_state(cur, r, now):
                    continue
                label = made[i] if early else label_for(r)
                head += 1
                if seq_cur is not None:
                    links.append((head, seq_cur[0]))
                current[(r.uri, r.val)] = (head, label)  # a repeat later in this batch is a no-op
                todo.append((head, label))
                picked.append(i)
            if not todo:
                return None
            if early:
                fields = [made_fields[i] for i in picked]
            else:  # signed now, in this thread (a small batch, or no helper)
                fields = [label.unsigned() for _, label in todo]
                signing = self._signer.begin([encode_dag_cbor(f) for f in fields])
            batch = _Batch(todo, fields, key.did_key, signing, picked if early else None)
            signing = None  # the batch's now
        finally:
            if signing is not None:
                self._signer.abandon(signing)  # nothing to write, or raised
        insert_many(conn, _STATE_SQL, [(label.uri, label.val, src, seq) for seq, label in todo])
        if links:
            insert_many(conn, _PREV_SQL, links)
        if isinstance(batch.signing, list):  # signed already (a small batch: no helper): no second hop
            batch.written = self._finish_sync(conn, batch)
        return batch

    def _finish_sync(self, conn: sqlite3.Connection, batch: _Batch) -> list[StoredLabel]:
        """The last step: the signatures (the helper's, and the rest signed here), each label's wire
        CBOR, and the `labels` rows. Each label's fields are built once and encoded twice: without
        `sig` (what is signed, in `_prepare_sync`) and with it (the wire CBOR)."""
        signing, batch.signing = batch.signing, None
        sigs = self._signer.finish(signing, batch.picked)
        if batch.picked is not None:
            sigs = [sigs[i] for i in batch.picked]
        did_key = batch.key_id
        written: list[StoredLabel] = []
        rows: list[tuple] = []
        for (seq, label), f, sig in zip(batch.todo, batch.fields, sigs, strict=True):
            f["sig"] = sig
            cbor = encode_dag_cbor(f)
            src, uri, val, cts = label.src, label.uri, label.val, label.cts
            cid, neg, exp = label.cid, label.neg, label.exp
            written.append(StoredLabel(seq, Label(src, uri, val, cts, cid, neg, exp, label.ver, sig), did_key, cbor))
            rows.append((seq, src, uri, cid, val, neg, cts, exp, sig, did_key, cbor))
        insert_many(conn, _LABELS_SQL, rows)
        return written

    def _close_signer(self) -> None:
        signer, self._signer = self._signer, None
        if signer is not None:
            signer.close()

    def _import_applies(self, conn: sqlite3.Connection, current: Label | None, r: EmitRequest) -> bool:
        """An imported label applies unless our latest label on (uri, val) is newer than it, or the
        log already holds this very label (imported before). Inside the write transaction."""
        if current is None:
            return True  # no label on (uri, val) from us: no chain to hold it (a first import: most rows)
        if parse_datetime(current.cts) > parse_datetime(r.cts):
            return False
        if current.cts == r.cts and current.neg == r.neg:
            return False  # the latest label is this very one
        return conn.execute(
            _CHAIN.format(where="uri = ? AND val = ? AND src = ?")
            + " SELECT 1 FROM chain JOIN labels l ON l.seq = chain.seq WHERE l.neg = ? AND l.cts = ? LIMIT 1",
            (r.uri, r.val, self.src, int(r.neg), r.cts),
        ).fetchone() is None

    def _currents(self, conn: sqlite3.Connection,
                  keys: set[tuple[str, str]]) -> dict[tuple[str, str], tuple[int, Label]]:
        """(seq, label) of the latest label of this labeler for each (uri, val) in `keys` (inside the
        write transaction)."""
        out: dict[tuple[str, str], tuple[int, Label]] = {}
        keys_list = list(keys)
        cols = ", ".join("l." + c.strip() for c in _COLUMNS.split(","))
        for i in range(0, len(keys_list), 400):
            chunk = keys_list[i : i + 400]
            values = ", ".join("(?, ?)" for _ in chunk)
            params = [x for pair in chunk for x in pair]
            # CROSS JOIN keeps this order: a primary-key search per key. `(uri, val) IN (VALUES ...)`
            # was planned as a scan of all of label_state, which made each batch slower as the log grew.
            for row in conn.execute(
                f"SELECT {cols} FROM (VALUES {values}) k CROSS JOIN label_state s"
                " ON s.uri = k.column1 AND s.val = k.column2 AND s.src = ? CROSS JOIN labels l ON l.seq = s.seq",
                (*params, self.src),
            ):
                stored = _row(row)
                out[(stored.label.uri, stored.label.val)] = (stored.seq, stored.label)
        return out

    # -- reading -----------------------------------------------------------------------
    async def head(self) -> int:
        """The highest committed seq, or the seq floor an operator raised it to (0 when empty)."""
        async with self._reader.execute(_HEAD_SQL) as cur:
            (head,) = await cur.fetchone()
        return head

    async def raise_seq_floor(self, floor: int) -> int:
        """Make the next seq `floor + 1` (never lower than it would be): after restoring a lost or
        older database, subscribers' saved cursors must stay below the new labels. Returns the
        previous head."""
        if not 0 < floor < 2**53 - 1:
            raise ValueError("the seq floor must be between 1 and 2^53-2")
        async with self._write_lock, transaction(self._writer, wait=self.busy_wait, path=self._path) as db:
            async with db.execute(
                "SELECT max(coalesce((SELECT max(seq) FROM labels), 0),"
                " coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'labels'), 0))"
            ) as cur:
                (previous,) = await cur.fetchone()
            if floor <= previous:
                raise ValueError(f"the log is already at seq {previous}: a floor must be above it")
            cur = await db.execute("UPDATE sqlite_sequence SET seq = ? WHERE name = 'labels'", (floor,))
            if cur.rowcount == 0:
                await db.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('labels', ?)", (floor,))
        log.warning("label_log.seq_floor_raised", previous=previous, floor=floor)
        return previous

    async def read_after(self, seq: int, limit: int) -> list[StoredLabel]:
        """Up to `limit` labels with seq greater than `seq`, in seq order."""
        async with self._reader.execute(
            f"SELECT {_COLUMNS} FROM labels WHERE seq > ? ORDER BY seq LIMIT ?", (seq, limit)
        ) as cur:
            return [_row(r) for r in await cur.fetchall()]

    async def cbor_after(self, seq: int, limit: int) -> list[tuple[int, bytes]]:
        """(seq, wire CBOR) of up to `limit` labels after `seq`: the stream's hot read path
        (labels of an older key re-signed on the way out: `LabelLogBase._on_the_wire`)."""
        async with self._reader.execute(
            "SELECT seq, key_id, cbor FROM labels WHERE seq > ? ORDER BY seq LIMIT ?", (seq, limit)
        ) as cur:
            return await self._on_the_wire(await cur.fetchall())

    async def _stored_at(self, seq: int) -> StoredLabel:
        async with self._reader.execute(f"SELECT {_COLUMNS} FROM labels WHERE seq = ?", (seq,)) as cur:
            return _row(await cur.fetchone())

    async def query(
        self, patterns: list[str], sources: list[str], limit: int, cursor: int = 0,
        budget: QueryBudget = QueryBudget(),
    ) -> list[StoredLabel]:
        """The current label (latest per uri, val, src) of subjects matching `patterns`, by seq.

        A pattern ending in `*` is a prefix, `*` alone matches everything, anything else is
        exact; comparisons are exact and case-sensitive (no SQL LIKE). Runs on the query
        connections within `budget` (`BudgetExceeded` when it runs out).
        """
        where, params = build_query(patterns, sources)
        # For uri patterns, `+s.seq` keeps SQLite off the seq index so it searches the uri
        # key range and sorts the few matches (0.1 ms instead of a 200 ms walk of the whole
        # table at 1M labels); for `*`, walking in seq order is the right plan.
        seq = "s.seq" if "*" in patterns else "+s.seq"
        sql = (
            f"SELECT {', '.join('l.' + c.strip() for c in _COLUMNS.split(','))} FROM label_state s"
            f" JOIN labels l ON l.seq = s.seq WHERE {seq} > ? AND ({where}) ORDER BY {seq} LIMIT ?"
        )
        return [_row(r) for r in await self._queries.fetchall(sql, (cursor, *params, limit), budget)]

    async def in_force(self, uri: str) -> list[Label]:
        """The labels of this labeler currently in force on `uri` (not negated, not expired)."""
        return (await self.in_force_many([uri]))[uri]

    async def in_force_many(self, uris: Sequence[str]) -> dict[str, list[Label]]:
        """`in_force` of each of `uris`, in seq order, in one read per 500 (a bulk check: an import's state
        check of 100,000 subjects was 100,000 reads, each a hop to the reader's thread)."""
        out: dict[str, list[Label]] = {u: [] for u in uris}
        now = datetime.now(UTC)
        todo = list(out)
        for i in range(0, len(todo), 500):
            chunk = todo[i:i + 500]
            async with self._reader.execute(
                f"SELECT {', '.join('l.' + c.strip() for c in _COLUMNS.split(','))} FROM label_state s"
                f" JOIN labels l ON l.seq = s.seq WHERE s.uri IN ({', '.join('?' * len(chunk))}) AND s.src = ?"
                " ORDER BY s.uri, s.seq", (*chunk, self.src),
            ) as cur:
                for r in await cur.fetchall():
                    label = _row(r).label
                    if label.in_force_at(now):
                        out[label.uri].append(label)
        return out

    async def history(self, uri: str) -> list[StoredLabel]:
        """Every label ever written on `uri`, in seq order (for explain and tests): the chain of each
        (val, src) of the uri in label_state (a primary-key range, then a rowid search a label)."""
        async with self._reader.execute(
            _CHAIN.format(where="uri = ?") + f" SELECT {_COLUMNS} FROM labels WHERE seq IN chain ORDER BY seq", (uri,)
        ) as cur:
            return [_row(r) for r in await cur.fetchall()]

    async def count(self) -> int:
        async with self._reader.execute("SELECT count(*) FROM labels") as cur:
            (n,) = await cur.fetchone()
        return n

    async def current_under(self, prefix: str) -> list[StoredLabel]:
        """The latest label of this labeler per (uri, val) for every uri starting with `prefix`.

        A range scan of label_state's primary key (no LIKE), ordered by uri then seq; the
        caller tells in force from negated or expired. Used by explain for an account's records.
        """
        upper = prefix_upper_bound(prefix)
        cols = ", ".join("l." + c.strip() for c in _COLUMNS.split(","))
        sql = f"SELECT {cols} FROM label_state s JOIN labels l ON l.seq = s.seq WHERE s.uri >= ?"
        params: list = [prefix]
        if upper is not None:
            sql += " AND s.uri < ?"
            params.append(upper)
        async with self._reader.execute(sql + " AND s.src = ? ORDER BY s.uri, s.seq", (*params, self.src)) as cur:
            return [_row(r) for r in await cur.fetchall()]


class _Batch:
    """A batch between `_prepare_sync` and `_finish_sync`: its labels with their seqs, the fields
    being signed, the signing under way (None once finished) and, once finished, the labels written
    (a batch signed without the helper finishes within `_prepare_sync`: one thread hop, not two)."""

    __slots__ = ("todo", "fields", "key_id", "signing", "picked", "written")

    def __init__(self, todo: list[tuple[int, Label]], fields: list[dict], key_id: str, signing,
                 picked: list[int] | None = None) -> None:
        self.todo, self.fields, self.key_id, self.signing = todo, fields, key_id, signing
        self.picked = picked  # signed from all the requests: the index of each of `todo` among them
        self.written: list[StoredLabel] | None = None  # once `_finish_sync` ran

    @property
    def uris(self) -> dict[int, str]:
        """seq -> uri of the batch's labels (not in `labels` yet: a decision naming one is checked here)."""
        return {seq: label.uri for seq, label in self.todo}

    def unsigned(self) -> list[StoredLabel]:
        """The labels as `also` sees them: seq and fields, no signature yet."""
        return [StoredLabel(seq, label, self.key_id, b"") for seq, label in self.todo]


class _Clock:
    """now_iso() for each label of a batch, rendered once per millisecond: strftime per label was ~5 µs."""

    def __init__(self) -> None:
        self._ms = -1
        self._text = ""

    def now(self) -> str:
        ms = time.time_ns() // 1_000_000
        if ms != self._ms:
            self._ms, self._text = ms, now_iso()
        return self._text


def checked(requests: Iterable[EmitRequest]) -> list[EmitRequest]:
    """The requests of one emit_many, each checked against the lexicon before anything is written."""
    requests = list(requests)
    for r in requests:
        validate_label_fields(r.uri, r.val, r.cid, r.exp)
        if r.cts is not None:
            parse_datetime(r.cts)
    return requests


def log_written(written: list[StoredLabel]) -> None:
    """A `label.written` line per label of a small commit, one `labels.written` summary for a large
    one: a line per label costs more than writing the label (issue 19)."""
    if len(written) <= _LOG_EACH_UP_TO:
        for s in written:
            log.info("label.written", seq=s.seq, uri=s.label.uri, val=s.label.val, neg=s.label.neg)
    else:
        log.info("labels.written", count=len(written), first_seq=written[0].seq, last_seq=written[-1].seq,
                 negations=sum(s.label.neg for s in written))


def _signer_for(key: SigningKey) -> ParallelSigner:
    secret = key._k1().secret if key.curve == "secp256k1" else None
    return ParallelSigner(key.curve, secret, key.sign_bytes,
                          on_error=lambda why: log.warning("label_log.signing_helper", problem=why,
                                                           hint="signing in the writer thread meanwhile"))


def _changes_state(current: Label | None, r: EmitRequest, now: datetime) -> bool:
    in_force = current is not None and current.in_force_at(now)
    if r.neg:
        return in_force
    if not in_force:
        return True
    # Re-emitting with another cid (a new record version) or another expiry is a real change.
    return current.cid != r.cid or current.exp != r.exp
