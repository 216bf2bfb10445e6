"""An online, consistent copy of the SQLite database while the daemon keeps writing.

SQLite's backup API (`sqlite3.Connection.backup`) copies a few hundred pages per step and we
sleep between steps, so the daemon's writes and checkpoints are not starved. When another
process writes to the source between two steps, SQLite restarts the copy from the first page;
with a busy daemon that could go on forever, so after `max_restarts` restarts the rest is copied
in one step: one read transaction, one snapshot (in WAL mode writers are not blocked by it,
only checkpoints wait). The copy goes to a temporary file next to DEST, is checked with
`PRAGMA integrity_check`, and only then renamed to DEST.

The database file is never `open()`ed from Python: closing such a handle would drop this
process's POSIX locks on it. Only sqlite3 connections touch it.
"""

from __future__ import annotations

import errno
import os
import sqlite3
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

STEP_PAGES = 256
STEP_SLEEP = 0.005
MAX_RESTARTS = 5


class BackupError(Exception):
    """The backup cannot be made; one line says why."""


@dataclass
class BackupReport:
    dest: str
    pages: int
    bytes: int
    seconds: float
    head_seq: int | None
    labels: int | None
    integrity_ok: bool
    restarts: int
    one_step: bool  # the restart bound was hit: the rest was copied in one read transaction

    def as_dict(self) -> dict:
        return asdict(self)


class _TooManyRestarts(Exception):
    pass


def _sidecars(path: Path) -> list[Path]:
    return [path, *(path.with_name(path.name + s) for s in ("-journal", "-wal", "-shm"))]


def _check_dest(dest: Path, force: bool) -> None:
    parent = dest.parent
    if not parent.exists():
        raise BackupError(f"cannot back up to {dest}: the directory {parent} does not exist")
    if not parent.is_dir():
        raise BackupError(f"cannot back up to {dest}: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise BackupError(f"cannot back up to {dest}: this user may not write to the directory {parent}")
    if dest.is_dir():
        raise BackupError(f"cannot back up to {dest}: it is a directory; give a file name")
    if dest.exists() and not force:
        raise BackupError(f"{dest} already exists; choose another name or pass --force to replace it")


def _explain(exc: BaseException, dest: Path) -> str:
    code = getattr(exc, "errno", None)
    text = str(exc).lower()
    if code in (errno.ENOSPC, errno.EDQUOT) or "disk is full" in text:
        return f"cannot back up to {dest}: no space left on the device holding {dest.parent}; free some space or choose another disk"
    if code in (errno.EACCES, errno.EPERM, errno.EROFS) or "readonly" in text or "read-only" in text:
        return f"cannot back up to {dest}: {dest.parent} is not writable ({exc})"
    return f"cannot back up to {dest}: {exc}"


def backup_database(source: Path, dest: Path, *, force: bool = False, step_pages: int = STEP_PAGES,
                    step_sleep: float = STEP_SLEEP, max_restarts: int = MAX_RESTARTS,
                    progress: Callable[[int, int, int], None] | None = None) -> BackupReport:
    """Copy the database at `source` to `dest` (a new file unless `force`); see the module doc.

    `progress(copied_pages, total_pages, restarts)` is called after every step.
    """
    dest = Path(dest).absolute()
    source = Path(source).absolute()
    if not source.exists():  # stat only; never open() the database file
        raise BackupError(f"no database at {source}: check --data-dir / FIREHOSE_MOD_DATA_DIR")
    _check_dest(dest, force)
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    started = time.monotonic()
    restarts = 0
    one_step = False
    src = dst = None
    try:
        for leftover in _sidecars(tmp):
            leftover.unlink(missing_ok=True)
        try:
            src = sqlite3.connect(f"{source.as_uri()}?mode=ro", uri=True)
            src.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlite3.Error as exc:
            raise BackupError(f"cannot read the database {source}: {exc}") from None
        dst = sqlite3.connect(tmp)
        last = [-1]

        def on_step(status: int, remaining: int, total: int) -> None:
            nonlocal restarts
            copied = total - remaining
            if copied <= last[0]:  # SQLite started over: the source changed under us
                restarts += 1
                if restarts > max_restarts:
                    raise _TooManyRestarts
            last[0] = copied
            if progress is not None:
                progress(copied, total, restarts)
            if remaining:
                time.sleep(step_sleep)  # let the daemon write (and checkpoint) between steps

        try:
            src.backup(dst, pages=step_pages, progress=on_step)
        except _TooManyRestarts:
            restarts -= 1  # the last one was not let through
            one_step = True
            src.backup(dst, pages=-1)  # one read transaction: a single snapshot, always finishes
        src.close()
        src = None
        dst.execute("PRAGMA journal_mode = DELETE")  # one self-contained file, no -wal beside it
        check = [row[0] for row in dst.execute("PRAGMA integrity_check").fetchall()]
        if check != ["ok"]:
            raise BackupError(f"the copy failed PRAGMA integrity_check ({'; '.join(check[:3])}); nothing written"
                              " to DEST. Run `sqlite3 DB 'PRAGMA integrity_check'` on the live database")
        pages = dst.execute("PRAGMA page_count").fetchone()[0]
        try:
            head, count = dst.execute("SELECT max(seq), count(*) FROM labels").fetchone()
        except sqlite3.OperationalError:  # not a firehose-mod database (no label log)
            head = count = None
        dst.close()
        dst = None
        if force:
            os.replace(tmp, dest)
        else:
            try:
                os.link(tmp, dest)  # atomic, and never replaces a DEST that appeared meanwhile
            except FileExistsError:
                raise BackupError(f"{dest} already exists; choose another name or pass --force to replace it") from None
            except OSError as exc:
                if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
                    raise
                os.replace(tmp, dest)  # no hard links on this file system
            tmp.unlink(missing_ok=True)
        try:
            dirfd = os.open(dest.parent, os.O_RDONLY)  # the directory, never the database file
            try:
                os.fsync(dirfd)
            finally:
                os.close(dirfd)
        except OSError:
            pass
        size = dest.stat().st_size
        return BackupReport(dest=str(dest), pages=pages, bytes=size, seconds=round(time.monotonic() - started, 3),
                            head_seq=head, labels=count, integrity_ok=True, restarts=restarts, one_step=one_step)
    except (sqlite3.Error, OSError) as exc:
        raise BackupError(_explain(exc, dest)) from exc
    finally:
        for conn in (src, dst):
            if conn is not None:
                conn.close()
        for leftover in _sidecars(tmp):
            try:
                leftover.unlink(missing_ok=True)
            except OSError:
                pass
