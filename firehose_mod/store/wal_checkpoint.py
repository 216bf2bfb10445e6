"""The label log's background WAL checkpoint (issue 19): `Checkpointer`, one per SQLite label log.

`LabelLog` calls `committed()` after each write transaction and `catch_up()` before a BEGIN once
the WAL is past `label_log.WAL_RESTART_FRAMES`; bench/LABEL_WRITES.md has what each rule bought."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import structlog

log = structlog.get_logger(__name__)

# After this many labels a background checkpoint starts: every 1,000-label batch.
CHECKPOINT_EVERY_LABELS = 1000


class Checkpointer:
    """Copies the WAL back into the database on a thread and connection of its own (issue 19).

    A 1,000-label batch on a log of millions dirties ~4,000 random index pages; copying them back
    (read from the WAL, write and fsync the database) cost the writer a quarter of its time past
    1M labels when it did it itself at commit. Here a PASSIVE checkpoint starts after a large
    commit (unless the last one is still running) and runs beside the next batches. SQLite starts
    the WAL over from its beginning only at a write transaction whose read began with every frame
    copied (`walRestartLog`: read lock 0), so a wait before COMMIT cannot let it restart (until
    the sixth pass the writer waited there all the same: 2-11 us a label on a 1M-label log);
    once the WAL holds `WAL_RESTART_FRAMES` the next batch waits for the checkpoint before its
    BEGIN, and that transaction writes from the WAL's start. The writer's own
    `wal_autocheckpoint` stays as the backstop (a checkpoint that failed, or could not copy
    everything because a reader held an old snapshot)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="label-log-checkpoint")
        self._conn: sqlite3.Connection | None = None
        self._running: Future | None = None
        self.last: tuple[int, int, int] | None = None  # (busy, frames in the WAL, frames copied)
        self._labels = 0  # labels committed since the last checkpoint started
        self._behind = False  # a commit since then: a checkpoint now would copy more

    def _run(self) -> tuple[int, int, int]:
        if self._conn is None:
            self._conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
            self._conn.execute("PRAGMA busy_timeout = 100")
        return self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()

    def _record(self, done: Future) -> None:
        try:
            self.last = done.result()
        except sqlite3.Error as exc:  # the writer's autocheckpoint still runs: never fatal
            log.warning("label_log.checkpoint_failed", error=str(exc))

    def wal_frames(self) -> int:
        """Frames in the WAL when the last finished checkpoint ran (0 before the first)."""
        self._collect()
        return self.last[1] if self.last is not None else 0

    def committed(self, labels: int) -> None:
        """A write transaction committed `labels`: start a checkpoint every CHECKPOINT_EVERY_LABELS,
        unless one is still running (the next start copies what it would have, later)."""
        self._labels += labels
        self._behind = True
        if self._labels >= CHECKPOINT_EVERY_LABELS:
            self.start()

    def start(self) -> None:
        self._collect()
        if self._running is None:
            self._running = self._pool.submit(self._run)
            self._labels, self._behind = 0, False

    async def catch_up(self) -> None:
        """Every frame copied back, before a BEGIN: that transaction then writes from the WAL's start."""
        await self.wait()
        last = self.last
        # Commits after the checkpoint just waited for started, or it could not copy everything (a
        # reader held an older snapshot; it may be gone now): one more, never a loop.
        if self._behind or (last is not None and 0 <= last[2] < last[1]):
            self.start()
            await self.wait()
        self.last = None  # this transaction restarts the WAL: its size is news

    def _collect(self) -> None:
        running = self._running
        if running is not None and running.done():
            self._running = None
            self._record(running)

    async def wait(self) -> None:
        running, self._running = self._running, None
        if running is None:
            return
        with contextlib.suppress(sqlite3.Error):  # recorded and logged by _record
            await asyncio.wrap_future(running)
        self._record(running)

    def close(self) -> None:
        if self._running is not None:
            try:
                self._running.result()
            except sqlite3.Error:
                pass
            self._running = None
        conn, self._conn = self._conn, None
        if conn is not None:
            self._pool.submit(conn.close).result()
        self._pool.shutdown(wait=True)
