"""Exactly one ingest process per database: the source lock.

The process that holds it reads the source and commits its cursor; any other ingest process
waits as a hot standby, polling the lock, and starts from the saved cursor when it gets it.
On SQLite it is an `flock` on a file beside the database (`<db>.ingest-lock`): the processes
share one machine, and the kernel drops the lock the moment its holder dies (kill -9 too), so
a standby takes over within one poll. A separate file, never the database itself: closing a
descriptor of the database would drop SQLite's own POSIX locks (store/db.py).
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import anyio
import structlog

log = structlog.get_logger(__name__)


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

    async def acquire(self) -> None:
        """Wait until this process holds the lock (a hot standby until then)."""
        if self.try_acquire():
            return
        log.info("ingest.standby", holder=self.holder, held_by=self.holder_now(), lock=str(self.path),
                 why="another ingest process holds the source; this one takes over when it stops")
        while not self.try_acquire():
            await anyio.sleep(self.poll)
        log.warning("ingest.took_over", holder=self.holder, lock=str(self.path))

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None
