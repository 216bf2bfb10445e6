"""The live feed: which labels are published, the recent frames in memory, and who listens.

Fan-out is pull-based (as in jetstream): every subscriber runs its own loop over the log
from its own cursor, so a slow reader holds no queue in server memory. This class keeps the
newest frames in a bounded in-memory window so that live subscribers do not each query the
database, and wakes waiting subscribers when the head moves.

Labels can be committed by this process (the emit path pokes the feed at once) or by
another one (`firehose-mod label emit`, scan workers): a poll every `poll_interval`
seconds picks those up. A label is published only after it was read back from the
committed database, so no subscriber ever sees a label that could still roll back.
"""

from __future__ import annotations

import bisect
import itertools
import time
from dataclasses import dataclass, field

import anyio
import structlog

from firehose_mod.server.frames import labels_frame
from firehose_mod.store import LabelLog

log = structlog.get_logger(__name__)


@dataclass
class Subscriber:
    """One connected subscribeLabels client, as operators see it in status and metrics."""

    id: int
    remote: str
    user_agent: str
    requested_cursor: int | None
    cursor: int
    connected_at: float = field(default_factory=time.time)
    frames_sent: int = 0
    bytes_sent: int = 0
    state: str = "backfill"


class LabelFeed:
    """Published head, recent frames and subscriber registry of one server process."""

    def __init__(self, log_: LabelLog, *, recent: int = 20000, page_size: int = 200, poll_interval: float = 0.25):
        self.log = log_
        self.recent = recent
        self.page_size = page_size
        self.poll_interval = poll_interval
        self.head = 0
        self._base = 0  # every label with base < seq <= head is in the window
        self._seqs: list[int] = []
        self._frames: list[bytes] = []
        self._changed = anyio.Event()
        self._poke = anyio.Event()
        self.subscribers: dict[int, Subscriber] = {}
        self._ids = itertools.count(1)
        self.published_total = 0
        log_.on_commit(lambda _written: self._poke.set())

    async def start(self) -> None:
        """Set the head from the database; call before serving."""
        self.head = self._base = await self.log.head()

    async def run(self) -> None:
        """Publish committed labels until cancelled."""
        while True:
            with anyio.move_on_after(self.poll_interval):
                await self._poke.wait()
            self._poke = anyio.Event()
            await self.refresh()

    async def refresh(self) -> int:
        """Read what was committed since the head and publish it; returns how many labels."""
        total = 0
        while True:
            rows = await self.log.cbor_after(self.head, 1000)
            if not rows:
                break
            for seq, cbor in rows:
                self._seqs.append(seq)
                self._frames.append(labels_frame(seq, cbor))
            self.head = rows[-1][0]
            total += len(rows)
        if total:
            self.published_total += total
            if len(self._seqs) > 2 * self.recent:
                cut = len(self._seqs) - self.recent
                self._base = self._seqs[cut - 1]
                del self._seqs[:cut], self._frames[:cut]
            self._changed.set()
            self._changed = anyio.Event()
        return total

    async def frames_after(self, cursor: int) -> list[tuple[int, bytes]]:
        """The next frames after `cursor`: from memory when recent, else one database page."""
        if cursor >= self._base:
            i = bisect.bisect_right(self._seqs, cursor)
            return list(zip(self._seqs[i : i + self.page_size * 4], self._frames[i : i + self.page_size * 4]))
        rows = await self.log.cbor_after(cursor, self.page_size)
        return [(seq, labels_frame(seq, cbor)) for seq, cbor in rows]

    async def wait_beyond(self, cursor: int) -> None:
        """Return once a label with seq > cursor is published."""
        while self.head <= cursor:
            await self._changed.wait()

    # -- subscriber registry ----------------------------------------------------------------
    def register(self, remote: str, user_agent: str, requested: int | None, cursor: int) -> Subscriber:
        sub = Subscriber(next(self._ids), remote, user_agent, requested, cursor)
        self.subscribers[sub.id] = sub
        return sub

    def unregister(self, sub: Subscriber) -> None:
        self.subscribers.pop(sub.id, None)

    def status(self) -> dict:
        """Head and every subscriber with its cursor and lag: 'why don't my labels show up'."""
        now = time.time()
        return {
            "head": self.head,
            "subscribers": [
                {
                    "id": s.id,
                    "remote": s.remote,
                    "user_agent": s.user_agent,
                    "requested_cursor": s.requested_cursor,
                    "cursor": s.cursor,
                    "lag": self.head - s.cursor,
                    "state": s.state,
                    "frames_sent": s.frames_sent,
                    "connected_seconds": round(now - s.connected_at, 1),
                }
                for s in self.subscribers.values()
            ],
        }
