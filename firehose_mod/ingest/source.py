"""What every network source shares: endpoints in turn, backoff, a read deadline, typed stats.

A source follows a list of WebSocket endpoints and hands one `Decoded` per frame to a sink, in
order. `WebSocketSource` owns the loop: connect, read until the connection fails or falls
silent for `read_timeout` seconds, fail over to the next endpoint after a `Backoff` delay, and
resume from the last cursor handed to the sink (less `rewind`, for sources whose cursors are
not unique per event). A subclass says how to build a URL and how to decode a frame (a pure
function), and may `check` a decoded frame before the sink sees it (the firehose's signatures).

Upstream data is user input: whatever `decode` raises for one frame becomes that frame's
`undecodable` dead letter, here and nowhere else, so no frame can stop ingest. Exceptions
raised by `check` (our own code, with the network) and by the sink propagate: the caller
restarts from its committed cursor. `run` otherwise runs until cancelled.

Every source logs the same events (`ingest.connected`, `ingest.reconnecting`) and counts the
same `SourceStats`, so metrics and `firehose-mod status` read any source the same way.

To add a source: subclass `WebSocketSource` with its `name`, `url` and `decode`, build it in
`ingest/build.py`, and accept its name in config.py's `[ingest] source` check.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import anyio
import structlog
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import WebSocketException

from firehose_mod.ingest.events import Decoded, undecodable
from firehose_mod.ingest.filters import Collections
from firehose_mod.ingest.reconnect import Backoff, read_deadline

log = structlog.get_logger(__name__)

Sink = Callable[[Decoded], Awaitable[None]]


def _counter(help_: str):
    return field(default=0, metadata={"help": help_})


@dataclass
class SourceStats:
    """Counters of one source since start; `/metrics` exports each as `firehose_mod_ingest_<name>`."""

    frames: int = _counter("Frames received from the source.")
    bytes: int = _counter("Bytes received from the source.")
    events: int = _counter("Watched events decoded.")
    skipped: int = _counter("Events of other collections or repos, skipped.")
    dead: int = _counter("Frames or records rejected into dead letters.")
    reconnects: int = _counter("Reconnections to the source.")
    # The relay firehose with verify_commits only; zero elsewhere.
    verified: int = _counter("Firehose commits whose signature was checked and valid.")
    unverified: int = _counter("Track events passed through because the signing key could not be fetched.")
    bad_signature: int = _counter("Track events rejected: the commit signature or its tree did not check out.")

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class WebSocketSource:
    """The shared loop of a WebSocket source; subclasses define `name`, `url` and `decode`.

    `cursor` is the last cursor handed to the sink; `endpoint` the endpoint in use (or tried
    next). `watched_dids` is kept by reference: DIDs the caller adds later are honoured.
    `rewind` (in the source's cursor units; default the class's) is how far before `cursor` a
    reconnect resumes.
    """

    name = "source"
    max_message_bytes = 16 * 1024 * 1024  # the WebSocket's own limit; decoders apply their own
    rewind = 0

    def __init__(
        self,
        endpoints: Sequence[str],
        collections: Collections,
        *,
        watched_dids: set[str] | None = None,
        read_timeout: float = 60.0,
        open_timeout: float = 10.0,
        close_timeout: float = 2.0,
        backoff: Backoff | None = None,
        connect: Callable[..., Awaitable[Any]] | None = None,
        rewind: int | None = None,
    ) -> None:
        if not endpoints:
            raise ValueError(f"at least one {self.name} endpoint is needed")
        self.endpoints = list(endpoints)
        self.collections = collections
        self.watched_dids = watched_dids if watched_dids is not None else set()
        self.read_timeout = read_timeout
        self.open_timeout = open_timeout
        self.close_timeout = close_timeout
        self.backoff = backoff or Backoff()
        self._connect = connect or ws_connect
        if rewind is not None:
            self.rewind = rewind
        self.stats = SourceStats()
        self.cursor: int | None = None
        self._index = 0

    @property
    def endpoint(self) -> str:
        """The endpoint in use, or the one the next connection tries."""
        return self.endpoints[self._index % len(self.endpoints)]

    def url(self, endpoint: str, cursor: int | None) -> str:
        """The URL that streams from `endpoint` starting at `cursor` (None: live)."""
        raise NotImplementedError

    def decode(self, frame: bytes | str) -> Decoded:
        """One frame's events, dead letters and cursor (pure). May raise: the frame is then undecodable."""
        raise NotImplementedError

    async def check(self, decoded: Decoded, frame: bytes | str) -> None:
        """Look at a decoded frame before the sink does, and move what fails into dead letters."""

    def session_ends(self, decoded: Decoded) -> str | None:
        """Why this frame ends the connection (an upstream error frame), or None."""
        return None

    async def run(self, sink: Sink, start_cursor: int | None, *, exact_start: bool = False) -> None:
        """Stream from `start_cursor` (None: live) until cancelled; every failure is followed by a
        reconnect. `exact_start` (a replay the operator aimed) skips the rewind on the first connection."""
        self.cursor = start_cursor
        rewind = not exact_start
        while True:
            endpoint = self.endpoint
            reason = await self._session(endpoint, sink, rewind)
            rewind = True
            self.stats.reconnects += 1
            self._index = (self._index + 1) % len(self.endpoints)  # fail over to the next endpoint
            delay = self.backoff.delay()
            log.warning("ingest.reconnecting", source=self.name, endpoint=endpoint, reason=reason,
                        next_endpoint=self.endpoint, cursor=self.cursor, in_seconds=round(delay, 3))
            await anyio.sleep(delay)

    async def _session(self, endpoint: str, sink: Sink, rewind: bool) -> str:
        """One connection; returns why it ended. Sink exceptions and cancellation propagate."""
        start = self.cursor
        if rewind and start is not None:
            start = max(0, start - self.rewind)
        try:
            ws = await self._connect(
                self.url(endpoint, start), open_timeout=self.open_timeout, close_timeout=self.close_timeout,
                max_size=self.max_message_bytes, compression=None, ping_interval=20, ping_timeout=20,
            )
        except (OSError, TimeoutError, WebSocketException) as exc:
            return f"connect failed: {type(exc).__name__}: {str(exc)[:200]}"
        self.backoff.connected()
        log.info("ingest.connected", source=self.name, endpoint=endpoint, cursor=start)
        try:
            async with read_deadline(self.read_timeout) as touch:
                return await self._read(ws, sink, touch)
        except TimeoutError:
            return f"no frame for {self.read_timeout}s"
        except (OSError, WebSocketException) as exc:
            return f"connection lost: {type(exc).__name__}: {str(exc)[:200]}"
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(self.close_timeout + 1):
                try:
                    await ws.close()
                except (OSError, WebSocketException):
                    pass

    async def _read(self, ws, sink: Sink, touch: Callable[[], None]) -> str:
        """Frames to the sink until a frame ends the session; connection errors propagate."""
        stats = self.stats
        while True:
            frame = await ws.recv()
            touch()
            stats.frames += 1
            stats.bytes += len(frame)
            try:
                decoded = self.decode(frame)
            except Exception as exc:  # noqa: BLE001 - any decoding failure is the frame's, not ours
                decoded = undecodable(exc, frame, self.name)
            await self.check(decoded, frame)
            touch()  # a check may have waited on the network
            stats.events += len(decoded.events)
            stats.skipped += decoded.skipped
            stats.dead += len(decoded.dead)
            await sink(decoded)
            touch()
            if decoded.cursor is not None:
                self.cursor = decoded.cursor if self.cursor is None else max(self.cursor, decoded.cursor)
            if (reason := self.session_ends(decoded)) is not None:
                return reason
