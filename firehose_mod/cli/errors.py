"""What the operator reads when a command cannot start: one line that says how to fix it.

The daemon runs in task groups, so a failed bind or an unwritable database arrives wrapped in
an ExceptionGroup. `describe` unwraps it and maps the causes an operator can fix (address in
use, a host that does not resolve, a read-only or full disk, a bad key or argument) to one
line; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno
import os
import shutil
import socket
import sqlite3
from pathlib import Path

from firehose_mod.cli.common import CommandError
from firehose_mod.config import ConfigError, Settings
from firehose_mod.labels.model import LabelError
from firehose_mod.labels.signing import KeyError_
from firehose_mod.store.db import DatabaseBusy, SchemaError
from firehose_mod.store.pg.label_log import DatabaseUnreachable
from firehose_mod.store.source_lock import SourceLockLost
from firehose_mod.syntax import IdentifierError


def leaves(exc: BaseException) -> list[BaseException]:
    """The exceptions inside (nested) exception groups, in order."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in leaves(inner)]
    return [exc]


def describe(exc: BaseException, settings: Settings, command: str) -> str | None:
    """One line for an error the operator can fix; None for a bug (the traceback is then shown)."""
    messages = [_describe_one(leaf, settings, command) for leaf in leaves(exc)]
    if not messages or any(m is None for m in messages):
        return None
    return messages[0]


def _describe_one(exc: BaseException, settings: Settings, command: str) -> str | None:
    if isinstance(exc, KeyError_) and isinstance(exc.__cause__, OSError):  # writing a new key failed
        return _disk(settings, exc.__cause__.errno, settings.key_path, exc.__cause__.strerror) or str(exc)
    if isinstance(exc, (LabelError, KeyError_, SchemaError, DatabaseBusy, CommandError, ConfigError,
                        IdentifierError, DatabaseUnreachable, SourceLockLost)):
        return str(exc)
    listen = f"{settings.host}:{settings.port}"
    if isinstance(exc, socket.gaierror):
        if command in ("run", "serve"):
            return (f"cannot listen on {settings.host!r}: the name does not resolve ({exc.strerror}); set [server] host"
                    " (FIREHOSE_MOD_HOST, --host) to an address of this machine, e.g. 127.0.0.1")
        return f"a host name does not resolve ({exc.strerror}): check the URL and this machine's DNS"
    if isinstance(exc, OSError) and "bind" in str(exc):  # asyncio's create_server wording
        if exc.errno == errno.EADDRINUSE:
            return (f"cannot listen on {listen}: the address is in use (another firehose-mod, or another server);"
                    " stop it, or choose another port with --port or FIREHOSE_MOD_PORT")
        if exc.errno == errno.EADDRNOTAVAIL:
            return (f"cannot listen on {listen}: {settings.host} is not an address of this machine; set [server] host"
                    " (FIREHOSE_MOD_HOST, --host)")
        if exc.errno == errno.EACCES:
            return (f"cannot listen on {listen}: permission denied (ports below 1024 need privileges); use a"
                    " port above 1024 behind a reverse proxy")
    if isinstance(exc, OSError) and (message := _disk(settings, exc.errno, exc.filename, exc.strerror)):
        return message
    if isinstance(exc, sqlite3.OperationalError):
        text = str(exc).lower()
        db = settings.db_path
        if "disk is full" in text or ("disk i/o error" in text and _free_bytes(db.parent) < 1 << 20):
            return _full(settings, db)  # a full disk under WAL often surfaces as SQLITE_IOERR
        if "readonly" in text or "read-only" in text or "unable to open" in text:
            return _unwritable(settings, db, "cannot open it for writing")
        if "disk i/o error" in text:
            return f"disk I/O error on the database {db}: check the disk (dmesg), then retry"
    return None


def _disk(settings: Settings, code: int | None, where: str | Path | None, error: str | None) -> str | None:
    if code in (errno.ENOSPC, errno.EDQUOT):
        return _full(settings, where)
    if code in (errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR):
        return _unwritable(settings, where or settings.data_dir, error or "permission denied")
    return None


def _unwritable(settings: Settings, where: str | Path, error: str) -> str:
    directory = Path(settings.data_dir)
    if directory.exists() and not directory.is_dir():
        why = "it is a file, not a directory"
    elif not directory.is_dir():
        why = "it does not exist"
    elif os.statvfs(directory).f_flag & os.ST_RDONLY:
        why = "it is on a read-only file system"
    elif not os.access(directory, os.W_OK | os.X_OK):
        why = "this user may not write to it"
    else:
        why = error
    return (f"cannot write {where}: the data directory {directory}: {why}; make it writable by this user"
            " (chown/chmod, or the mount), or choose another with --data-dir or FIREHOSE_MOD_DATA_DIR")


def _free_bytes(directory: Path) -> int:
    try:
        return shutil.disk_usage(directory).free
    except OSError:
        return 1 << 62


def _full(settings: Settings, where: str | Path | None) -> str:
    return (f"no space left on the device holding {where or settings.data_dir}: free some space (the media"
            " cache is bounded by [media] cache_max_mb) or move --data-dir to a larger disk")
