"""From source frames to durable queue: batch decoded frames, commit each batch with its cursor.

A batch is committed when it holds `max_batch` items or `max_delay` seconds after its
first item, whichever comes first, and always with the cursor of its last frame: the
cursor saved on disk never covers an event that is not in the queue with it.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import anyio
import structlog

from firehose_mod.ingest.events import Decoded, DeadLetter, RepoEvent, TrackEvent
from firehose_mod.store.ingest import IngestStore

log = structlog.get_logger(__name__)


class IngestPipeline:
    """The sink of one source: batches, commits, counts, and wakes the scan workers."""

    def __init__(self, store: IngestStore, source: str, *, max_batch: int = 1000, max_delay: float = 0.2,
                 on_commit: Callable[[int], None] | None = None, rescan: bool = False):
        self.store = store
        self.source = source
        self.max_batch = max_batch
        self.max_delay = max_delay
        self.on_commit = on_commit
        self.rescan = rescan  # a replay: known versions are scanned again
        self._events: list[TrackEvent | RepoEvent] = []
        self._dead: list[DeadLetter] = []
        self._cursor: int | None = None
        self._first_at: float | None = None
        self._lock = anyio.Lock()
        self.stats = {"commits": 0, "enqueued": 0, "duplicates": 0, "dead_letters": 0, "frames": 0}
        self.committed_cursor: int | None = None

    async def sink(self, decoded: Decoded) -> None:
        """Take one frame's worth of output; commits when the batch is full."""
        self.stats["frames"] += 1
        self._events.extend(decoded.events)
        self._dead.extend(decoded.dead)
        for d in decoded.dead:
            log.warning("ingest.dead_letter", source=self.source, reason=d.reason, detail=d.detail[:200],
                        did=d.did, uri=d.uri, cursor=d.cursor)
        if decoded.cursor is not None:
            self._cursor = decoded.cursor if self._cursor is None else max(self._cursor, decoded.cursor)
        if self._first_at is None:
            self._first_at = time.monotonic()
        if len(self._events) + len(self._dead) >= self.max_batch:
            await self.flush()

    async def flush(self) -> None:
        """Commit what is pending (events, dead letters, cursor) in one transaction."""
        async with self._lock:
            if self._first_at is None:
                return
            events, dead, cursor, first_at = self._events, self._dead, self._cursor, self._first_at
            self._events, self._dead, self._first_at = [], [], None
            # Shielded: the batch has left the source, so a cancellation (a read timeout, a stop)
            # must not roll it back while the source's cursor has already moved past it.
            with anyio.CancelScope(shield=True):
                try:
                    result = await self.store.commit(self.source, cursor, events, dead, rescan=self.rescan)
                except Exception:
                    # Nothing was committed: keep the batch for the next try (or a `reset`).
                    self._events, self._dead, self._first_at = events + self._events, dead + self._dead, first_at
                    raise
            self.committed_cursor = cursor
            self.stats["commits"] += 1
            self.stats["enqueued"] += result.enqueued
            self.stats["duplicates"] += result.duplicates
            self.stats["dead_letters"] += result.dead
            if result.enqueued:
                log.info("ingest.committed", source=self.source, cursor=cursor, enqueued=result.enqueued,
                         duplicates=result.duplicates)
                if self.on_commit:
                    self.on_commit(result.enqueued)

    async def reset(self) -> None:
        """Drop what is buffered and not committed: the source is about to re-read from the
        committed cursor (after a failure), so the next commit must not carry a later one."""
        async with self._lock:
            dropped = len(self._events) + len(self._dead)
            self._events, self._dead, self._first_at, self._cursor = [], [], None, self.committed_cursor
        if dropped:
            log.info("ingest.batch_dropped", source=self.source, events=dropped, why="re-read from the committed cursor")

    async def run_flusher(self) -> None:
        """Commit a partial batch `max_delay` after its first item (runs until cancelled)."""
        try:
            while True:
                await anyio.sleep(self.max_delay / 2)
                if self._first_at is not None and time.monotonic() - self._first_at >= self.max_delay:
                    await self.flush()
        finally:
            with anyio.CancelScope(shield=True):
                await self.flush()  # an orderly stop commits what was received
