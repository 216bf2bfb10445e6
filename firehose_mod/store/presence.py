"""Whether a daemon is running on a SQLite database: a shared `flock` on `<db>.daemon`.

An operator command's bulk writes (`import`, `rescan --apply`, a burst of `label` commands) pause
after each commit for as long as the commit held the write lock, so a running daemon's own writes
(ingest, scans), polling in SQLite's busy handler, get the lock between the batches instead of
starving behind them. With no daemon running that pause only halves the command's speed (an import
of 1M labels spent half its apply phase asleep). So every process that writes as a daemon holds a
shared lock on this file for as long as its label log is open, and a command pauses only while
someone holds it. The kernel drops the lock with the process, however it ends: no stale pid file.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

__all__ = ["DaemonPresence", "daemon_running", "presence_path"]


def presence_path(db_path: Path) -> Path:
    return db_path.with_name(db_path.name + ".daemon")


class DaemonPresence:
    """Held by a daemon: a shared lock on the database's presence file, until `release`."""

    def __init__(self, db_path: Path):
        self._fd: int | None = None
        try:
            fd = os.open(presence_path(db_path), os.O_RDWR | os.O_CREAT, 0o644)
        except OSError:
            return  # a read-only directory: commands then pause as if a daemon ran (the safe side)
        fcntl.flock(fd, fcntl.LOCK_SH)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def daemon_running(db_path: Path | None) -> bool:
    """True if a daemon holds the presence lock of `db_path` (or it cannot be told: no path, no
    access); a few microseconds, so it is asked before every pause."""
    if db_path is None:
        return True
    try:
        fd = os.open(presence_path(db_path), os.O_RDONLY)
    except FileNotFoundError:
        return False  # no daemon ever ran here (a daemon creates it)
    except OSError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True  # held (shared) by a daemon
    finally:
        os.close(fd)  # closing drops our exclusive lock if we got it
    return False
