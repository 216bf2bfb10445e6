"""Opening the SQLite database: pragmas and versioned migrations.

The schema version lives in `PRAGMA user_version`. A database newer than this code, or one
whose label log fails its integrity checks, is corrupt internal state: a loud error, never a
silent repair.
"""

from __future__ import annotations

import errno
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TypeVar

import aiosqlite
import anyio
import structlog

from firehose_mod.store.migrations import MIGRATIONS

log = structlog.get_logger(__name__)
T = TypeVar("T")

# The schema's migrations live in store/migrations.py; db.py applies them.


# SQLite's own busy handler waits this long (ms) before a statement fails with "database is
# locked"; past it, `retry_busy` takes over: logged, counted, and retried with backoff.
BUSY_TIMEOUT_MS = 2000
# WAL mode's write lock: byte 120 of the -shm file (sqlite3 os_unix.c, WAL_WRITE_LOCK).
_WAL_WRITE_LOCK_BYTE = 120

BUSY_STATS = {"retries": 0, "waits": 0, "seconds": 0.0, "gave_up": 0}


class DatabaseBusy(RuntimeError):
    """Another process held the database's write lock for longer than we were told to wait."""


def is_busy(exc: BaseException) -> bool:
    """SQLITE_BUSY / SQLITE_LOCKED as the sqlite3 module reports them."""
    if not isinstance(exc, sqlite3.OperationalError):
        return False
    text = str(exc).lower()
    return "database is locked" in text or "database is busy" in text or "database table is locked" in text


def lock_holders(path: Path | str | None) -> list[str]:
    """'pid N (command)' of every other process holding the write lock on the database at `path`.

    Read from /proc/locks (Linux): in WAL mode the write lock is byte 120 of the -shm file.
    Best effort: an empty list where /proc is not there or the holder is gone.
    """
    if path is None:
        return []
    try:
        shm = os.stat(f"{path}-shm")
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return []
    holders = []
    for line in lines:
        f = line.split()
        if len(f) < 8 or f[1] != "POSIX" or f[3] != "WRITE":
            continue
        try:
            pid, inode = int(f[4]), int(f[5].rsplit(":", 1)[1])
            start, end = int(f[6]), (float("inf") if f[7] == "EOF" else int(f[7]))
        except (ValueError, IndexError):
            continue
        if inode != shm.st_ino or not start <= _WAL_WRITE_LOCK_BYTE <= end or pid == os.getpid():
            continue
        try:
            cmd = " ".join(Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").replace("\0", " ").split())
        except OSError:
            cmd = "?"
        holders.append(f"pid {pid} ({cmd[:120]})")
    return holders


async def retry_busy(op: Callable[[], Awaitable[T]], *, what: str, wait: float | None = None,
                     path: Path | str | None = None) -> T:
    """Run `op`, retrying with backoff while another connection holds the write lock.

    `wait=None` retries for as long as it takes (the daemon: a busy database is never fatal);
    otherwise `DatabaseBusy` after `wait` seconds, naming who holds the lock. Only statements
    that had no effect when they failed busy may be retried: BEGIN, COMMIT, one autocommit
    statement.
    """
    started = time.monotonic()
    delay = 0.05
    warned_at = 0.0
    while True:
        try:
            result = await op()
        except sqlite3.OperationalError as exc:
            if not is_busy(exc):
                raise
            waited = time.monotonic() - started
            if wait is not None and waited >= wait:
                BUSY_STATS["gave_up"] += 1
                holders = lock_holders(path)
                who = ", ".join(holders) if holders else "another process"
                raise DatabaseBusy(
                    f"the database {path or ''} is locked by {who}: waited {waited:.0f} s to {what}."
                    " Stop or finish that process (or retry later), or wait longer with FIREHOSE_MOD_DB_BUSY_WAIT"
                ) from None
            BUSY_STATS["retries"] += 1
            if waited - warned_at >= 10 or warned_at == 0:
                warned_at = waited or 1e-9
                log.warning("db.busy", what=what, waited_seconds=round(waited, 1), holders=lock_holders(path),
                            hint="another process holds the database's write lock; retrying")
            await anyio.sleep(delay)
            delay = min(2.0, delay * 2)
            continue
        if delay > 0.05:
            BUSY_STATS["waits"] += 1
            BUSY_STATS["seconds"] += time.monotonic() - started
        return result


@asynccontextmanager
async def transaction(db: aiosqlite.Connection, *, wait: float | None = None,
                      path: Path | str | None = None) -> AsyncIterator[aiosqlite.Connection]:
    """`BEGIN IMMEDIATE` ... `COMMIT`, rolled back on any error or cancellation.

    BEGIN and COMMIT are shielded: a statement handed to aiosqlite's thread runs to its end
    even when the awaiting task is cancelled, so cancelling half-way would leave the
    connection's transaction state unknown to us. BEGIN IMMEDIATE takes the write lock up
    front (so nothing inside the body meets a busy database) and is retried while another
    process holds it; see `retry_busy`.
    """
    with anyio.CancelScope(shield=True):
        await retry_busy(lambda: db.execute("BEGIN IMMEDIATE"), what="begin a write", wait=wait, path=path)
    try:
        yield db
    except BaseException:
        with anyio.CancelScope(shield=True):
            if db.in_transaction:
                await db.execute("ROLLBACK")
        raise
    with anyio.CancelScope(shield=True):
        try:
            await retry_busy(lambda: db.execute("COMMIT"), what="commit", wait=wait, path=path)
        except BaseException:
            if db.in_transaction:
                await db.execute("ROLLBACK")
            raise


async def close_shielded(closeable) -> None:
    """`await closeable.close()` even inside a cancelled scope: an aiosqlite connection left
    open keeps its thread alive and the process from exiting."""
    with anyio.CancelScope(shield=True):
        await closeable.close()


class Store:
    """One writer connection shared by many tasks; subclasses hold the SQL of one concern.

    - `_lock` serialises writes: transactions must not interleave on a shared connection.
    - Every write goes through `_transaction()` or `_write()`, which wait out another
      process's write lock (`retry_busy`) instead of failing.
    - Reads outside a write (status, metrics, the CLI, the scan engine) use `_reading()`: a connection of
      their own, so a read can never leave a stale snapshot open on the writer connection (which makes SQLite refuse the next write
      at once, with no busy wait: issue 22's "database is locked").
    """

    def __init__(self, db: aiosqlite.Connection, *, path: Path | None = None, busy_wait: float | None = None):
        self._db = db
        self._lock = anyio.Lock()
        self._path = path
        self.busy_wait = busy_wait  # None: wait for the write lock as long as it takes (the daemon)
        self._reader: aiosqlite.Connection | None = None
        self._reader_lock = anyio.Lock()

    @classmethod
    async def open(cls, path: Path, *, synchronous: str = "FULL", readonly: bool = False,
                   busy_wait: float | None = None):
        db = await open_db(path, synchronous=synchronous, readonly=readonly)
        # A read-only store never writes, so its one connection serves its reads too.
        return cls(db, path=None if readonly else path, busy_wait=busy_wait)

    async def close(self) -> None:
        if self._reader is not None and self._reader is not self._db:
            await self._reader.close()
        await self._db.close()

    def _transaction(self):
        """`transaction()` on the writer connection with this store's busy wait; hold `_lock`."""
        return transaction(self._db, wait=self.busy_wait, path=self._path)

    async def _write(self, sql: str, params: tuple | list = ()) -> int:
        """One autocommit statement (retried while another process holds the lock); its rowcount."""
        async with self._lock:
            cur = await retry_busy(lambda: self._db.execute(sql, params), what="write", wait=self.busy_wait,
                                   path=self._path)
            return cur.rowcount

    @asynccontextmanager
    async def _reading(self, sql: str, params: tuple | list | dict = ()) -> AsyncIterator[aiosqlite.Cursor]:
        """A cursor over one read on the store's read connection (opened on first use)."""
        if self._reader is None:
            async with self._reader_lock:
                if self._reader is None:
                    self._reader = await open_reader(self._path) if self._path else self._db
        async with self._reader.execute(sql, params) as cur:
            yield cur


class SchemaError(RuntimeError):
    """The database cannot be used by this version of firehose-mod."""


_ROWS_A_STATEMENT = 64  # rows an `insert_many` statement carries (13 columns: 832 variables)


def insert_many(conn: sqlite3.Connection, sql: str, rows: list[tuple]) -> None:
    """`conn.executemany(sql, rows)` for an `INSERT ... VALUES (?, ...)` whose VALUES clause ends the
    statement or is followed by an ON CONFLICT clause, in statements of 64 rows (issue 19): executemany
    steps and resets the statement once per row, ~1 us a row more than the insert itself. Rows go in
    in order, as executemany's would (a later row's upsert sees an earlier one's). The last few rows
    go through executemany, so each table has two statement texts for the statement cache, not one
    per batch size. On the caller's thread (aiosqlite's `_execute`)."""
    n = len(rows)
    full = n - n % _ROWS_A_STATEMENT
    if full:
        head, sep, tail = sql.partition(" VALUES ")
        one, _, rest = tail.partition(")")
        many = f"{head} VALUES {', '.join([one + ')'] * _ROWS_A_STATEMENT)}{rest}"
        for i in range(0, full, _ROWS_A_STATEMENT):
            conn.execute(many, [v for row in rows[i : i + _ROWS_A_STATEMENT] for v in row])
    if full < n:
        conn.executemany(sql, rows[full:])


async def open_db(path: Path, *, synchronous: str = "FULL", readonly: bool = False) -> aiosqlite.Connection:
    """Open (and migrate, unless read-only) the database at `path` in WAL mode."""
    if readonly:
        conn = await aiosqlite.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Fail here, in this thread, if the database cannot be written (a read-only data
        # directory): an error raised in aiosqlite's thread can outlive the event loop. Never
        # open() the file itself to find out: closing any descriptor of it drops every POSIX
        # lock this process holds on it, the other connections' included, and another process
        # could then checkpoint and delete the WAL under them.
        target = path if path.exists() else path.parent
        if not os.access(target, os.W_OK):
            raise PermissionError(errno.EACCES, "cannot write here", str(target))
        conn = await aiosqlite.connect(path, isolation_level=None)
    try:
        await conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        if not readonly:
            await conn.execute("PRAGMA journal_mode = WAL")
            await conn.execute(f"PRAGMA synchronous = {synchronous.upper()}")
            await _migrate(conn, path)
        else:
            await _check_version(conn, path)
    except BaseException:
        await conn.close()
        raise
    return conn


async def open_reader(path: Path) -> aiosqlite.Connection:
    """A second connection to an open database, for reads only (`query_only`).

    Not `mode=ro`: a read-only connection cannot rebuild the WAL index after another
    process's commit and fails with "disk I/O error" where a normal one just reads on.
    """
    conn = await aiosqlite.connect(path, isolation_level=None)
    try:
        await conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        await conn.execute("PRAGMA query_only = 1")
        await _check_version(conn, path)
    except BaseException:
        await conn.close()
        raise
    return conn


async def _check_version(conn: aiosqlite.Connection, path: Path) -> int:
    async with conn.execute("PRAGMA user_version") as cur:
        (version,) = await cur.fetchone()
    if version > len(MIGRATIONS):
        raise SchemaError(
            f"{path} has schema version {version} but this firehose-mod knows only {len(MIGRATIONS)}: "
            "upgrade firehose-mod, or point FIREHOSE_MOD_DATA_DIR at another directory"
        )
    return version


async def _migrate(conn: aiosqlite.Connection, path: Path) -> None:
    if await _check_version(conn, path) == len(MIGRATIONS):
        return  # up to date: no write lock needed (another process may hold it for a while)
    async with transaction(conn, path=path):
        version = await _check_version(conn, path)
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            for statement in _statements(script):
                await conn.execute(statement)
            await conn.execute(f"PRAGMA user_version = {number}")


def _statements(script: str) -> list[str]:
    """Split a migration on statement ends, keeping trigger bodies whole."""
    out, buf = [], []
    for line in script.strip().splitlines():
        if line.strip().startswith("--") or not line.strip():
            continue
        buf.append(line)
        joined = "\n".join(buf)
        if line.rstrip().endswith(";") and (
            "BEGIN" not in joined.upper() or line.strip().upper().endswith("END;")
        ):
            out.append(joined)
            buf = []
    return out
