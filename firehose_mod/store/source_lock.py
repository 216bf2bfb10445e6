"""Exactly one ingest process per database: the source lock.

The process that holds it reads the source and commits its cursor; any other ingest process
waits as a hot standby, polling the lock, and starts from the saved cursor when it gets it.
On SQLite it is an `flock` on a file beside the database (`<db>.ingest-lock`): the processes
share one machine, and the kernel drops the lock the moment its holder dies (kill -9 too), so
a standby takes over within one poll. A separate file, never the database itself: closing a
descriptor of the database would drop SQLite's own POSIX locks (store/db.py).

On PostgreSQL (`PgSourceLock`) the processes share a database, not a machine: the lock is a
session advisory lock (`pg_try_advisory_lock(SOURCE_LOCK)`) on a connection of its own, which
the server drops with its session when the holder dies or its machine falls off the network,
so a standby takes over within one poll after PostgreSQL notices the dead connection: at once
when the holder is killed (its kernel closes the socket), within about `KEEPALIVE` seconds
when its machine vanishes (TCP keepalives on the lock's session, not the OS's two hours).
The holder learns it lost the lock (a dropped connection, an operator's pg_terminate_backend)
through `watch`.

Both have `await lock.acquire(wait=False)`: take the lock if it is free, without waiting.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import anyio
import asyncpg
import structlog

from firehose_mod.store.pg.label_log import DatabaseUnreachable
from firehose_mod.store.pg.schema import SOURCE_LOCK

log = structlog.get_logger(__name__)


class SourceLockLost(RuntimeError):
    """This process read the source and no longer holds its lock: it stops, so that only the
    process now holding the lock reads the source (systemd restarts it as a standby)."""

    def __init__(self, holder: str):
        super().__init__(f"ingest process {holder!r} lost the source lock (its database session ended): stopping so"
                         " that only one process reads the source; it starts again as a standby (systemd Restart=)")


class SourceLock:
    def __init__(self, db_path: Path, *, holder: str, poll: float = 1.0):
        self.path = db_path.with_name(db_path.name + ".ingest-lock")
        self.holder = holder
        self.poll = poll
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def try_acquire(self) -> bool:
        """Take the lock if it is free; True if this process holds it now."""
        if self._fd is not None:
            return True
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, f"{self.holder} pid {os.getpid()}\n".encode())  # who holds it, for an operator
        self._fd = fd
        return True

    def holder_now(self) -> str:
        try:
            return self.path.read_text().strip() or "unknown"
        except OSError:
            return "unknown"

    async def acquire(self, *, wait: bool = True) -> bool:
        """Wait until this process holds the lock (a hot standby until then); with `wait=False`,
        take it only if it is free. True if this process holds it now."""
        if self.try_acquire():
            return True
        if not wait:
            return False
        log.info("ingest.standby", holder=self.holder, held_by=self.holder_now(), lock=str(self.path),
                 why="another ingest process holds the source; this one takes over when it stops")
        while not self.try_acquire():
            await anyio.sleep(self.poll)
        log.warning("ingest.took_over", holder=self.holder, lock=str(self.path))
        return True

    async def watch(self) -> None:
        """Return once this process no longer holds the lock: never, for a held flock (it lasts as
        long as the process; only PgSourceLock can lose its session)."""
        if self._fd is not None:
            await anyio.sleep_forever()

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None


# TCP keepalives of the lock's session (idle, interval, count): how long a vanished machine's
# lock outlives it, about idle + interval * count seconds.
KEEPALIVE = (10, 5, 3)


class PgSourceLock:
    """The source lock of a PostgreSQL database: a session advisory lock on a dedicated connection.

    The connection's application_name says who holds it (`holder_now`). Losing the connection
    loses the lock: `held` turns False and another process may take over.
    """

    def __init__(self, url: str, *, holder: str, poll: float = 1.0):
        self.url = url
        self.holder = holder
        self.poll = poll
        self._conn: asyncpg.Connection | None = None
        self._held = False

    @property
    def held(self) -> bool:
        return self._held and self._conn is not None and not self._conn.is_closed()

    async def _try_acquire(self) -> bool:
        if self.held:
            return True
        if self._conn is None or self._conn.is_closed():
            name = f"firehose-mod source lock: {self.holder} pid {os.getpid()}"
            try:
                idle, interval, count = KEEPALIVE
                self._conn = await asyncpg.connect(self.url, server_settings={
                    "application_name": name[:63], "tcp_keepalives_idle": str(idle),
                    "tcp_keepalives_interval": str(interval), "tcp_keepalives_count": str(count)})
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                raise DatabaseUnreachable(self.url, exc) from exc
        self._held = await self._conn.fetchval("SELECT pg_try_advisory_lock($1)", SOURCE_LOCK)
        return self._held

    async def holder_now(self) -> str:
        """Who holds the lock, from the holder's application_name ("unknown" if nobody or unreadable)."""
        if self._conn is None or self._conn.is_closed():
            return "unknown"
        name = await self._conn.fetchval(
            "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
            " WHERE l.locktype = 'advisory' AND l.granted"
            " AND ((l.classid::bigint << 32) | l.objid::bigint) = $1 LIMIT 1", SOURCE_LOCK)
        return (name or "").removeprefix("firehose-mod source lock: ") or "unknown"

    async def acquire(self, *, wait: bool = True) -> bool:
        """Wait until this process holds the lock (a hot standby until then); with `wait=False`,
        take it only if it is free. True if this process holds it now. A standby whose connection
        drops while it waits connects again at the next poll."""
        if await self._try_acquire():
            return True
        if not wait:
            return False
        log.info("ingest.standby", holder=self.holder, held_by=await self.holder_now(), lock="postgresql",
                 why="another ingest process holds the source; this one takes over when it stops")
        while True:
            await anyio.sleep(self.poll)
            try:
                if await self._try_acquire():
                    break
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, DatabaseUnreachable) as exc:
                log.warning("ingest.standby_poll_failed", holder=self.holder, error=str(exc))
                self.release()
        log.warning("ingest.took_over", holder=self.holder, lock="postgresql")
        return True

    async def watch(self) -> None:
        """Return once this process no longer holds the lock (its session ended, or a check got no
        answer within a few polls): the caller must stop reading the source, as a standby may
        have taken it over."""
        while self.held:
            await anyio.sleep(self.poll)
            try:
                with anyio.fail_after(max(5.0, self.poll * 5)):
                    await self._conn.fetchval("SELECT 1")
            except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.error("ingest.source_lock_lost", holder=self.holder, error=str(exc) or type(exc).__name__)
                self.release()

    def release(self) -> None:
        """Drop the connection, and the lock with its session (synchronous: safe in any cleanup)."""
        if self._conn is not None:
            self._conn.terminate()
            self._conn = None
        self._held = False
