"""Telling a PgLabelLog's `on_commit` listeners about every commit, whichever process made it.

The write transaction sends `NOTIFY firehose_mod_labels, head` (PostgreSQL delivers it at
commit, in commit order). `CommitListeners.follow` LISTENs on a connection of its own and
reads back what others committed; it also polls every `poll_interval`, so a lost notification
(a dropped listening connection, replaced at once) costs a delay, never a label. This
instance's own writes are handed over as they commit (`committed`), after anything others
committed before them. One lock orders the two paths: every seq reaches the listeners once,
in order.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio
import asyncpg
import structlog
from anyio.abc import TaskStatus

from firehose_mod.store.label_log import StoredLabel

log = structlog.get_logger(__name__)

CHANNEL = "firehose_mod_labels"


class CommitListeners:
    """The `on_commit` listeners of one label log and the high-water mark of what they were told."""

    def __init__(self, read_after: Callable[[int, int], Awaitable[list[StoredLabel]]],
                 head: Callable[[], Awaitable[int]]):
        self._read_after = read_after
        self._head = head
        self.listeners: list[Callable[[list[StoredLabel]], None]] = []
        self.seen = 0  # every seq up to here was handed to the listeners (or skipped: nobody listened)
        self._lock = anyio.Lock()
        self._notified = anyio.Event()

    async def committed(self, written: list[StoredLabel]) -> None:
        """This instance committed `written`: hand it over, after what others committed before it.
        `follow` may already have handed it over (it read it back after the commit)."""
        async with self._lock:
            await self._catch_up(upto=written[0].seq - 1)
            fresh = [s for s in written if s.seq > self.seen]
            if fresh:
                self._deliver(fresh)

    async def follow(self, url: str, poll_interval: float, *,
                     task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """LISTEN for other processes' commits and hand them to the listeners, until cancelled."""
        started = False
        while True:
            try:
                conn = await asyncpg.connect(url, server_settings={"application_name": "firehose-mod listen"})
            except (OSError, asyncpg.PostgresError) as exc:
                if not started:
                    raise
                log.warning("label_log.listen_failed", error=str(exc))
                await anyio.sleep(poll_interval)
                continue
            try:
                await conn.add_listener(CHANNEL, self._on_notify)
                async with self._lock:
                    await self._catch_up()  # whatever was committed while not listening
                if not started:
                    started = True
                    task_status.started()
                while not conn.is_closed():
                    with anyio.move_on_after(poll_interval):
                        await self._notified.wait()
                    self._notified = anyio.Event()
                    async with self._lock:
                        await self._catch_up()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("label_log.follow_failed", error=str(exc))
                await anyio.sleep(poll_interval)
            finally:
                conn.terminate()  # synchronous: nothing to shield from cancellation

    def _on_notify(self, _conn, _pid, _channel, _payload) -> None:
        self._notified.set()

    async def _catch_up(self, upto: int | None = None) -> None:
        """Hand over every committed label after `seen` (up to `upto`); the caller holds the lock."""
        if not self.listeners:  # nobody to tell (an operator command): skip reading the labels
            self.seen = max(self.seen, upto if upto is not None else await self._head())
            return
        while upto is None or self.seen < upto:
            rows = await self._read_after(self.seen, 1000)
            if upto is not None:
                rows = [r for r in rows if r.seq <= upto]
            if not rows:
                if upto is not None:
                    self.seen = upto  # a raised seq floor: no labels in between
                return
            self._deliver(rows)

    def _deliver(self, rows: list[StoredLabel]) -> None:
        self.seen = rows[-1].seq
        for listener in self.listeners:
            listener(rows)
