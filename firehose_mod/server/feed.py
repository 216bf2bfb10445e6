"""The live feed: which labels are published, the recent frames in memory, and who listens.

Fan-out is pull-based (as in jetstream): every subscriber runs its own loop over the log
from its own cursor, so a slow reader holds no queue in server memory. This class keeps the
newest frames in a bounded in-memory window so that live subscribers do not each query the
database, and wakes waiting subscribers when the head moves.

Labels can be committed by this process (the writer hands what it committed to the feed,
which publishes it at once) or by another one (`firehose-mod label emit`): a poll every
`poll_interval` seconds reads those back. A label is published only once committed, so no
subscriber ever sees a label that could still roll back.

Subscribers of the JSON-text variant (`subscribe.JSON_PREFIX`) get the same labels through the
same machinery; only the frames differ. The window keeps each label's JSON-text frame beside
its binary one, made from it the first time a JSON subscriber needs it, then shared by all
(nothing is made while no JSON subscriber reads the window).
"""

from __future__ import annotations

import bisect
import itertools
import time
from dataclasses import dataclass, field
from typing import Any

import anyio
import structlog

from firehose_mod.server.frames import json_from_binary, json_labels_frame, labels_frame, ws_binary
from firehose_mod.store import LabelLog, StoredLabel

log = structlog.get_logger(__name__)


@dataclass(eq=False)
class Subscriber:
    """One connected subscribeLabels client, as operators see it in status and metrics."""

    id: int
    remote: str
    user_agent: str
    requested_cursor: int | None
    cursor: int
    connection: Any = None  # a subscribe.SubscriberSocket once the handshake is done
    connected_at: float = field(default_factory=time.time)
    frames_sent: int = 0
    bytes_sent: int = 0
    state: str = "connecting"  # then backfill, then live
    wake: anyio.Event = field(default_factory=anyio.Event)
    pong: anyio.Event = field(default_factory=anyio.Event)
    keepalive_failed: bool = False
    json_text: bool = False  # the JSON-text variant: frames from `frames_after(..., json_text=True)`

    def push(self, data: bytes, frames: int, head: int) -> bool:
        """Write already-framed messages if the socket takes them now; False: let the pump do it."""
        sock = self.connection
        if sock is None or not sock.open or sock.paused:
            return False
        sock.write(data)
        self.cursor = head
        self.frames_sent += frames
        self.bytes_sent += len(data)
        return True


class LabelFeed:
    """Published head, recent frames and subscriber registry of one server process."""

    def __init__(self, log_: LabelLog, *, recent: int = 20000, page_size: int = 200, poll_interval: float = 0.25,
                 max_subscribers: int = 5000):
        self.log = log_
        self.max_subscribers = max_subscribers
        self.recent = recent
        self.page_size = page_size
        self.poll_interval = poll_interval
        self.head = 0
        self._base = 0  # every label with base < seq <= head is in the window
        self._seqs: list[int] = []
        self._frames: list[bytes] = []
        self._json: list[bytes | None] = []  # JSON-text twins of `_frames`, made when first needed
        self._changed = anyio.Event()
        self._poke = anyio.Event()
        self.subscribers: dict[int, Subscriber] = {}
        self._ids = itertools.count(1)
        self.published_total = 0
        self.frames_sent_total = 0
        self.bytes_sent_total = 0
        self._refreshing = False
        log_.on_commit(self._committed)

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
        self._refreshing = True
        try:
            while True:
                rows = await self.log.cbor_after(self.head, 1000)
                if not rows:
                    break
                self._publish(rows)
                total += len(rows)
        finally:
            self._refreshing = False
        return total

    def _committed(self, written: list[StoredLabel]) -> None:
        """This process's writer committed `written`: publish it at once, without reading it back,
        when it follows the head; after a gap (another process wrote in between) refresh reads."""
        if (written and not self._refreshing and written[0].seq == self.head + 1
                and written[-1].seq == self.head + len(written)):
            self._publish([(s.seq, s.cbor) for s in written])
        else:
            self._poke.set()

    def _publish(self, rows: list[tuple[int, bytes]]) -> None:
        previous = self.head
        for seq, cbor in rows:
            self._seqs.append(seq)
            self._frames.append(ws_binary(labels_frame(seq, cbor)))
            self._json.append(None)
        self.head = rows[-1][0]
        self._fan_out(previous, len(rows))
        self.published_total += len(rows)
        if len(self._seqs) > 2 * self.recent:
            cut = len(self._seqs) - self.recent
            self._base = self._seqs[cut - 1]
            del self._seqs[:cut], self._frames[:cut], self._json[:cut]
        self._changed.set()
        self._changed = anyio.Event()

    def _fan_out(self, previous: int, count: int) -> None:
        """Write the new frames straight to every caught-up live subscriber whose socket has
        room: no task switch per subscriber. The others are woken to pull from their cursor.
        JSON-text frames are made once, for the first caught-up JSON subscriber."""
        data = b"".join(self._frames[-count:]) if count > 1 else self._frames[-1]
        text = None
        for sub in self.subscribers.values():
            if sub.state == "live" and sub.cursor == previous:
                out = data
                if sub.json_text:
                    if text is None:
                        end = len(self._frames)
                        text = b"".join(self._json_window(end - count, end))
                    out = text
                if sub.push(out, count, self.head):
                    self.frames_sent_total += count
                    self.bytes_sent_total += len(out)
                    continue
            sub.wake.set()

    def _json_window(self, i: int, end: int) -> list[bytes]:
        """The JSON-text frames of window positions i..end, made from the binary ones if new."""
        frames, text = self._frames, self._json
        for k in range(i, end):
            if text[k] is None:
                text[k] = json_from_binary(frames[k])
        return text[i:end]

    async def frames_after(self, cursor: int, json_text: bool = False) -> tuple[list[int], list[bytes]]:
        """Seqs and WebSocket-framed messages after `cursor` (binary DAG-CBOR, or the JSON-text
        variant's): from memory when recent, else one database page."""
        if cursor >= self._base:
            i = bisect.bisect_right(self._seqs, cursor)
            end = i + self.page_size * 4
            if json_text:  # a page at a time: frames not made yet are made here, in one go
                end = min(i + self.page_size, len(self._seqs))
                return self._seqs[i:end], self._json_window(i, end)
            return self._seqs[i:end], self._frames[i:end]
        rows = await self.log.cbor_after(cursor, self.page_size)
        if json_text:
            return [seq for seq, _ in rows], [json_labels_frame(seq, cbor) for seq, cbor in rows]
        return [seq for seq, _ in rows], [ws_binary(labels_frame(seq, cbor)) for seq, cbor in rows]

    async def wait_beyond(self, cursor: int) -> None:
        """Return once a label with seq > cursor is published."""
        while self.head <= cursor:
            await self._changed.wait()

    async def wait_live(self, sub: Subscriber) -> None:
        """Park a caught-up subscriber until the feed cannot push to it directly."""
        if self.head <= sub.cursor:
            await sub.wake.wait()
        sub.wake = anyio.Event()

    # -- subscriber registry ----------------------------------------------------------------
    def admit(self, remote: str, user_agent: str, requested: int | None) -> Subscriber | None:
        """Count a new subscriber at once, before any await, so a burst cannot overshoot the cap;
        None when the server is full. The caller sets its cursor once it knows the head."""
        if len(self.subscribers) >= self.max_subscribers:
            return None
        sub = Subscriber(next(self._ids), remote, user_agent, requested, self.head)
        self.subscribers[sub.id] = sub
        return sub

    def unregister(self, sub: Subscriber) -> None:
        self.subscribers.pop(sub.id, None)
        sub.connection = None

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
                    "frames": "json-text" if s.json_text else "dag-cbor",
                    "cursor": s.cursor,
                    "lag": self.head - s.cursor,
                    "state": s.state,
                    "frames_sent": s.frames_sent,
                    "connected_seconds": round(now - s.connected_at, 1),
                }
                for s in self.subscribers.values()
            ],
        }
