"""What every operator command shares: errors, output, progress."""

from __future__ import annotations

import sys
import time

from firehose_mod.config import Settings


class CommandError(Exception):
    """A command cannot proceed; the message says what to do."""

def require_database(settings: Settings, what: str) -> None:
    """Refuse a command that reads the database when the SQLite file is not there (`what`: what
    its absence means). With PostgreSQL ([store] database_url) the server says what it holds."""
    if not settings.database_url and not settings.db_path.exists():
        raise CommandError(f"no database at {settings.db_path}: {what} (wrong --data-dir?)")

def _out(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()

def _base_url(settings: Settings, url: str | None) -> str:
    return (url or settings.endpoint).rstrip("/")

class ProgressLine:
    """A progress bar on a terminal, a line every few seconds elsewhere (journald, CI)."""

    def __init__(self, every: float = 5.0):
        self._clock = time.monotonic
        self._tty = sys.stderr.isatty()
        self._every = 0.2 if self._tty else every
        self._last = 0.0

    def show(self, fraction: float, text: str, *, force: bool = False) -> None:
        now = self._clock()
        if not force and now - self._last < self._every:
            return
        self._last = now
        if self._tty:
            bar = "#" * int(30 * fraction)
            print(f"\r[{bar:<30}] {fraction:6.1%} {text}", end="", file=sys.stderr, flush=True)
        else:
            print(f"{fraction:6.1%} {text}", file=sys.stderr, flush=True)

    def done(self) -> None:
        if self._tty:
            print("", file=sys.stderr)
