"""The label log on PostgreSQL: the same public API and write rules as store/label_log.py's
`LabelLog`, shared by several processes (writers, stream servers) over one database.

Gap-free seq: every write transaction first takes one transaction-level advisory lock
(`pg_advisory_xact_lock(WRITE_LOCK)`), reads the head, numbers its labels head+1.. and
writes the new head, all before it commits; PostgreSQL releases the lock only after the
commit is visible. So the next writer numbers after a committed head, commit order is seq
order, and any snapshot that sees seq N sees every seq below it: a subscriber reading
`seq > cursor` can never skip a seq that commits later. (A bare sequence would not do:
a transaction holding seq 11 may commit after seq 12 was read and streamed.)

Wake-ups across processes: the write transaction also sends a NOTIFY (delivered at commit);
`follow()` (store/pg/commits.py) hands what other processes committed to the `on_commit`
listeners, so they see every seq once, in order, whoever wrote it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from urllib.parse import urlsplit

import anyio
import asyncpg
import structlog
from anyio.abc import TaskStatus

from firehose_mod.labels.model import Label, now_iso, parse_datetime
from firehose_mod.labels.signing import SigningKey
from firehose_mod.store.db import DatabaseBusy
from firehose_mod.store.label_log import LabelLogBase, EmitRequest, StoredLabel, _changes_state, checked, log_written
from firehose_mod.store.pg.commits import CHANNEL, CommitListeners
from firehose_mod.store.pg.decisions import PgDecisionWriter
from firehose_mod.store.pg.schema import WRITE_LOCK, migrate
from firehose_mod.store.query import BudgetExceeded, QueryBudget, build_query, prefix_upper_bound

log = structlog.get_logger(__name__)

_COLUMNS = "seq, src, uri, cid, val, neg, cts, exp, sig, key_id, cbor"
_L_COLUMNS = ", ".join("l." + c.strip() for c in _COLUMNS.split(","))


def server_of(url: str) -> str:
    """The server and database of a PostgreSQL URL, for logs and messages: never its password."""
    parts = urlsplit(url)
    return f"postgresql://{parts.hostname or 'localhost'}:{parts.port or 5432}{parts.path or '/'}"


class DatabaseUnreachable(RuntimeError):
    """The PostgreSQL of `database_url` could not be reached or refused us; the message names the
    server and database (never the password) and how to fix it."""

    def __init__(self, url: str, exc: BaseException):
        user = urlsplit(url).username or "the current user"
        super().__init__(
            f"cannot connect to PostgreSQL at {server_of(url)} as {user}: {exc.__class__.__name__}: {exc};"
            " check [store] database_url (FIREHOSE_MOD_DATABASE_URL), that the server runs and accepts"
            " this user from this host (pg_hba.conf), and that the database exists"
        )


def _stored(row) -> StoredLabel:
    seq, src, uri, cid, val, neg, cts, exp, sig, key_id, cbor = row
    label = Label(src=src, uri=uri, val=val, cts=cts, cid=cid, neg=neg, exp=exp, sig=bytes(sig))
    return StoredLabel(seq, label, key_id, bytes(cbor))


# One statement (one round trip) appends the labels, moves their state rows and the head, and
# queues the NOTIFY that PostgreSQL sends at commit. The state's foreign key is checked at the end
# of the statement, when the labels are in.
_WRITE_SQL = """
WITH new AS (
    INSERT INTO labels (seq, src, uri, cid, val, neg, cts, exp, sig, key_id, cbor)
    SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[], $6::boolean[],
                         $7::text[], $8::text[], $9::bytea[], $10::text[], $11::bytea[])
), state AS (
    INSERT INTO label_state (uri, val, src, seq)
    SELECT u, v, $12, q FROM unnest($13::text[], $14::text[], $15::bigint[]) AS t(u, v, q)
    ON CONFLICT (uri, val, src) DO UPDATE SET seq = excluded.seq
), head AS (
    UPDATE label_head SET head = $16 WHERE id = 1
)
SELECT pg_notify($17, $16::text)
"""


def _write_args(written: list[StoredLabel], head: int) -> list:
    columns = list(zip(*((s.seq, s.label.src, s.label.uri, s.label.cid, s.label.val, s.label.neg, s.label.cts,
                           s.label.exp, s.label.sig, s.key_id, s.cbor) for s in written)))
    latest = {(s.label.uri, s.label.val): s.seq for s in written}  # ON CONFLICT takes one row per key
    src = written[0].label.src
    return [*(list(c) for c in columns), src, [k[0] for k in latest], [k[1] for k in latest],
            list(latest.values()), head, CHANNEL]


def _numbered(sql: str) -> str:
    """store/query.py's `?` placeholders as asyncpg's $1, $2, ... (the SQL holds no literal '?')."""
    parts = sql.split("?")
    return "".join(p + (f"${i}" if i < len(parts) else "") for i, p in enumerate(parts, 1))


class PgLabelLog(LabelLogBase):
    """The label log over a PostgreSQL database; see the module docstring for seq and wake-ups."""

    def __init__(self, writer: asyncpg.Connection, readers: asyncpg.Pool, url: str, key: SigningKey, src: str,
                 *, busy_wait: float | None = None):
        self._writer = writer
        self._readers = readers
        self._url = url
        self.key = key
        self.src = src
        # None (the daemon): wait for other writers as long as it takes; an operator command
        # gives up after this many seconds and names the process that holds the write lock.
        self.busy_wait = busy_wait
        self.yield_to_daemon = False  # PostgreSQL queues lock waiters in order: no starvation to avoid
        self._commits = CommitListeners(self.read_after, self.head)
        self._write_lock = anyio.Lock()  # one connection: its transactions must not interleave
        self._resigned: dict[int, bytes] = {}

    @classmethod
    async def open(cls, url: str, key: SigningKey, src: str, *, busy_wait: float | None = None,
                   readers: int = 4) -> PgLabelLog:
        """Connect (and migrate) without following other processes: `on_commit` then reports this
        instance's own writes only. `connect()` also follows."""
        settings = {"application_name": "firehose-mod"}
        try:
            writer = await asyncpg.connect(url, server_settings=settings)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise DatabaseUnreachable(url, exc) from exc
        try:
            await migrate(writer)
            pool = await asyncpg.create_pool(url, min_size=1, max_size=readers, server_settings=settings)
        except BaseException:
            await writer.close()
            raise
        self = cls(writer, pool, url, key, src, busy_wait=busy_wait)
        try:
            self._commits.seen = await self.head()
        except BaseException:
            await self.close()
            raise
        return self

    @classmethod
    @asynccontextmanager
    async def connect(cls, url: str, key: SigningKey, src: str, *, busy_wait: float | None = None,
                      poll_interval: float = 1.0) -> AsyncIterator[PgLabelLog]:
        """An open log that follows other processes' commits (`follow`) until the block exits."""
        label_log = await cls.open(url, key, src, busy_wait=busy_wait)
        try:
            async with anyio.create_task_group() as tg:
                await tg.start(label_log.follow, poll_interval)
                try:
                    yield label_log
                finally:
                    tg.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            # The follower only ever ends cancelled: an error is the caller's own, so it leaves
            # as itself (an operator command reports DatabaseBusy, not a task group).
            if len(group.exceptions) == 1:
                raise group.exceptions[0] from None
            raise
        finally:
            with anyio.CancelScope(shield=True):
                await label_log.close()

    async def close(self) -> None:
        await self._readers.close()
        await self._writer.close()

    def on_commit(self, listener: Callable[[list[StoredLabel]], None]) -> None:
        """Call `listener(written)` after each commit that appended labels (any process's, once
        `follow` runs), in seq order, each seq once."""
        self._commits.listeners.append(listener)

    async def follow(self, poll_interval: float = 1.0, *,
                     task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Hand other processes' commits to the listeners until cancelled (store/pg/commits.py)."""
        await self._commits.follow(self._url, poll_interval, task_status=task_status)

    # -- writing -----------------------------------------------------------------------
    async def emit_many(
        self, requests: Iterable[EmitRequest], *,
        also: Callable[[PgDecisionWriter, list[StoredLabel]], Awaitable[object]] | None = None,
    ) -> list[StoredLabel]:
        """Append several labels in one transaction; requests that change nothing are skipped.

        `also(decisions, written)` runs inside the same transaction, after the labels are inserted,
        with a `PgDecisionWriter` (decisions, review items and events, reports, import marks).
        """
        requests = checked(requests)
        async with self._write_lock:
            written = await self._append(requests, also)
        if written:
            log_written(written)
            await self._commits.committed(written)
        return written

    @asynccontextmanager
    async def _locked(self) -> AsyncIterator[asyncpg.Connection]:
        """A write transaction holding the log's advisory lock (see the module docstring)."""
        db = self._writer
        async with db.transaction():
            if self.busy_wait is not None:
                await db.execute(f"SET LOCAL lock_timeout = {int(self.busy_wait * 1000) or 1}")
            try:
                await db.execute("SELECT pg_advisory_xact_lock($1)", WRITE_LOCK)
            except asyncpg.LockNotAvailableError:
                holders = await self._lock_holders()
                raise DatabaseBusy(
                    f"another process held the label log's write lock for more than {self.busy_wait} s"
                    f" ({', '.join(holders) or 'holder gone'}); try again, or stop it"
                ) from None
            if self.busy_wait is not None:
                await db.execute("SET LOCAL lock_timeout = 0")
            yield db

    async def _lock_holders(self) -> list[str]:
        async with self._readers.acquire() as c:
            rows = await c.fetch(
                "SELECT a.pid, a.application_name, a.client_addr FROM pg_locks l JOIN pg_stat_activity a"
                " ON a.pid = l.pid WHERE l.locktype = 'advisory' AND l.granted"
                " AND ((l.classid::bigint << 32) | l.objid::bigint) = $1", WRITE_LOCK)
        return [f"pid {r['pid']} ({r['application_name']}, {r['client_addr'] or 'local'})" for r in rows]

    async def _append(self, requests: list[EmitRequest], also=None) -> list[StoredLabel]:
        written: list[StoredLabel] = []
        now = datetime.now(UTC)
        imported: set[tuple[str, str, bool, str]] = set()
        async with self._locked() as db:
            seq = await db.fetchval("SELECT head FROM label_head WHERE id = 1")
            current = await self._currents(db, {(r.uri, r.val) for r in requests})
            for r in requests:
                if r.cts is not None:
                    mark = (r.uri, r.val, r.neg, r.cts)
                    if mark in imported or not await self._import_applies(db, current.get((r.uri, r.val)), r):
                        continue
                    imported.add(mark)
                if not _changes_state(current.get((r.uri, r.val)), r, now):
                    continue
                label = self.key.sign(
                    Label(src=self.src, uri=r.uri, val=r.val, cts=r.cts or now_iso(), cid=r.cid, neg=r.neg, exp=r.exp)
                )
                seq += 1
                current[(r.uri, r.val)] = label  # a repeat later in this batch is a no-op
                written.append(StoredLabel(seq, label, self.key.did_key, label.to_cbor()))
            if written:
                await db.execute(_WRITE_SQL, *_write_args(written, seq))
            if also is not None:
                await also(PgDecisionWriter(db), written)
        return written

    async def _import_applies(self, db: asyncpg.Connection, current: Label | None, r: EmitRequest) -> bool:
        """As in store/label_log.py: unless our latest label is newer, or the log already holds it."""
        if current is not None and parse_datetime(current.cts) > parse_datetime(r.cts):
            return False
        found = await db.fetchval(
            "SELECT 1 FROM labels WHERE uri = $1 AND val = $2 AND neg = $3 AND cts = $4 AND src = $5 LIMIT 1",
            r.uri, r.val, r.neg, r.cts, self.src,
        )
        return found is None

    async def _currents(self, db: asyncpg.Connection, keys: set[tuple[str, str]]) -> dict[tuple[str, str], Label]:
        """The latest label of this labeler for each (uri, val) in `keys` (inside the write transaction)."""
        if not keys:
            return {}
        keys_list = list(keys)
        rows = await db.fetch(
            f"SELECT {_L_COLUMNS} FROM label_state s JOIN labels l ON l.seq = s.seq"
            " WHERE s.src = $1 AND (s.uri, s.val) IN (SELECT * FROM unnest($2::text[], $3::text[]))",
            self.src, [k[0] for k in keys_list], [k[1] for k in keys_list],
        )
        out = {}
        for row in rows:
            stored = _stored(row)
            out[(stored.label.uri, stored.label.val)] = stored.label
        return out

    async def raise_seq_floor(self, floor: int) -> int:
        """Make the next seq `floor + 1` (never lower than it would be); returns the previous head."""
        if not 0 < floor < 2**53 - 1:
            raise ValueError("the seq floor must be between 1 and 2^53-2")
        async with self._write_lock, self._locked() as db:
            previous = await db.fetchval("SELECT head FROM label_head WHERE id = 1")
            if floor <= previous:
                raise ValueError(f"the log is already at seq {previous}: a floor must be above it")
            await db.execute("UPDATE label_head SET head = $1 WHERE id = 1", floor)
        log.warning("label_log.seq_floor_raised", previous=previous, floor=floor)
        return previous

    # -- reading -----------------------------------------------------------------------
    async def _fetch(self, sql: str, *args) -> list:
        async with self._readers.acquire() as c:
            return await c.fetch(sql, *args)

    async def head(self) -> int:
        """The highest committed seq, or the seq floor an operator raised it to (0 when empty)."""
        async with self._readers.acquire() as c:
            return await c.fetchval("SELECT head FROM label_head WHERE id = 1")

    async def read_after(self, seq: int, limit: int) -> list[StoredLabel]:
        """Up to `limit` labels with seq greater than `seq`, in seq order."""
        rows = await self._fetch(f"SELECT {_COLUMNS} FROM labels WHERE seq > $1 ORDER BY seq LIMIT $2", seq, limit)
        return [_stored(r) for r in rows]

    async def cbor_after(self, seq: int, limit: int) -> list[tuple[int, bytes]]:
        """(seq, wire CBOR) of up to `limit` labels after `seq`; labels signed by an older key are
        re-signed with the current one on the way out (`LabelLogBase._on_the_wire`)."""
        return await self._on_the_wire(await self._fetch(
            "SELECT seq, key_id, cbor FROM labels WHERE seq > $1 ORDER BY seq LIMIT $2", seq, limit))

    async def _stored_at(self, seq: int) -> StoredLabel:
        (row,) = await self._fetch(f"SELECT {_COLUMNS} FROM labels WHERE seq = $1", seq)
        return _stored(row)

    async def query(
        self, patterns: list[str], sources: list[str], limit: int, cursor: int = 0,
        budget: QueryBudget = QueryBudget(),
    ) -> list[StoredLabel]:
        """The current label (latest per uri, val, src) of subjects matching `patterns`, by seq;
        the same pattern rules as `LabelLog.query`. The budget's time is the statement timeout
        (PostgreSQL has no step count): `BudgetExceeded("time")` when it runs out."""
        where, params = build_query(patterns, sources)
        if where == "1":
            where = "true"
        elif where.startswith("(1) AND"):
            where = "(true)" + where[3:]
        sql = _numbered(
            f"SELECT {_L_COLUMNS} FROM label_state s JOIN labels l ON l.seq = s.seq"
            f" WHERE s.seq > ? AND ({where}) ORDER BY s.seq LIMIT ?"
        )
        async with self._readers.acquire() as c, c.transaction(readonly=True):
            await c.execute(f"SET LOCAL statement_timeout = {max(1, int(budget.seconds * 1000))}")
            try:
                rows = await c.fetch(sql, cursor, *params, limit)
            except asyncpg.QueryCanceledError:
                raise BudgetExceeded("time") from None
        return [_stored(r) for r in rows]

    async def in_force(self, uri: str) -> list[Label]:
        """The labels of this labeler currently in force on `uri` (not negated, not expired)."""
        return (await self.in_force_many([uri]))[uri]

    async def in_force_many(self, uris: Sequence[str]) -> dict[str, list[Label]]:
        """`in_force` of each of `uris`, in seq order, in one query."""
        out: dict[str, list[Label]] = {u: [] for u in uris}
        rows = await self._fetch(
            f"SELECT {_L_COLUMNS} FROM label_state s JOIN labels l ON l.seq = s.seq"
            " WHERE s.uri = ANY($1::text[]) AND s.src = $2 ORDER BY s.uri, s.seq", list(out), self.src)
        now = datetime.now(UTC)
        for s in map(_stored, rows):
            if s.label.in_force_at(now):
                out[s.label.uri].append(s.label)
        return out

    async def history(self, uri: str) -> list[StoredLabel]:
        """Every label ever written on `uri`, in seq order (for explain and tests)."""
        return [_stored(r) for r in await self._fetch(
            f"SELECT {_COLUMNS} FROM labels WHERE uri = $1 ORDER BY seq", uri)]

    async def count(self) -> int:
        async with self._readers.acquire() as c:
            return await c.fetchval("SELECT count(*) FROM labels")

    async def current_under(self, prefix: str) -> list[StoredLabel]:
        """The latest label of this labeler per (uri, val) for every uri starting with `prefix`,
        ordered by uri then seq (a range scan of label_state's key, no LIKE)."""
        upper = prefix_upper_bound(prefix)
        sql = f"SELECT {_L_COLUMNS} FROM label_state s JOIN labels l ON l.seq = s.seq WHERE s.src = $1 AND s.uri >= $2"
        params: list = [self.src, prefix]
        if upper is not None:
            sql += " AND s.uri < $3"
            params.append(upper)
        return [_stored(r) for r in await self._fetch(sql + " ORDER BY s.uri, s.seq", *params)]
