"""`com.atproto.label.subscribeLabels`: one pull loop per subscriber over the label log.

- no cursor: live only, from the head at connect time;
- `cursor=N`: every label with seq > N (`0` = everything), then live, with no gap and no
  duplicate: the loop only ever asks for seq > its own cursor, so a label committed during
  the backfill is sent exactly once, in order;
- a cursor above the head: `FutureCursor` error frame, then close 1008;
- a send blocked longer than `send_timeout` (the client stopped reading): `ConsumerTooSlow`
  error frame, then close. Server memory per client stays at one page of frames plus the
  socket's write buffer whatever the client does.

Frames are pre-framed WebSocket messages, identical for every subscriber, written straight to
the connection's transport (`SubscriberSocket`): one syscall carries many labels. aiohttp's
own writes (pongs, close) are whole frames too, so the two interleave at frame boundaries only.

The JSON-text variant, `JSON_PREFIX` + the XRPC path, is the same stream (same handler, feed,
cursors, order, limits, timeouts and close codes) with each binary frame replaced by a text
message: `{"seq":N,"labels":[label]}` (the label as queryLabels shows it) or
`{"error":..., "message":...}` (frames.py). It exists for consumers written against a labeler
that spoke JSON (plyr.fm's backend appends the XRPC path to a configured base URL, so the
variant has to be a path prefix, not a query parameter).
"""

from __future__ import annotations

import fcntl
import struct
import termios

import anyio
import structlog
from aiohttp import WSMsgType, web

from firehose_mod.server.feed import LabelFeed, Subscriber
from firehose_mod.server.frames import error_frame, json_error_frame
from firehose_mod.server.metrics import ServerMetrics

log = structlog.get_logger(__name__)

CHUNK_BYTES = 64 * 1024  # bytes per socket write; a page of frames is several writes
CLOSE_TIMEOUT = 2.0  # seconds a client gets to answer our close frame before it is cut
MAX_CLIENT_MESSAGE = 64 * 1024  # subscribers have nothing to send us
JSON_PREFIX = "/compat/json"  # + /xrpc/com.atproto.label.subscribeLabels: the JSON-text variant


class ConsumerTooSlow(Exception):
    pass


class SubscriberSocket:
    """A subscriber's connection as the feed and the pump write to it."""

    def __init__(self, ws: web.WebSocketResponse, request: web.Request):
        self.ws = ws
        self._request = request
        self._transport = request.transport
        self._protocol = request.protocol

    @property
    def open(self) -> bool:
        return not self.ws.closed and self._transport is not None and not self._transport.is_closing()

    @property
    def paused(self) -> bool:
        """The transport's buffer is above its high-water mark: wait for the client."""
        return self._protocol.writing_paused

    def write(self, data: bytes) -> None:
        self._transport.write(data)

    def delivered(self, written: int) -> int:
        """Of `written` bytes handed to the transport, those the client's side has acknowledged:
        what is neither in the transport's buffer nor in the kernel's send queue (Linux
        SIOCOUTQ; elsewhere the kernel's queue counts as taken). It grows only while the client
        reads, since its receive window opens only then."""
        if self._transport is None:
            return written
        unsent = self._transport.get_write_buffer_size()
        sock = self._transport.get_extra_info("socket")
        if sock is not None:
            try:
                unsent += struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0"))[0]
            except OSError:
                pass
        return written - unsent

    async def drain(self) -> None:
        # aiohttp's flow-control wait (resolved by resume_writing, or raises on connection loss).
        await self._protocol._drain_helper()

    async def close(self, code: int, reason: str, frame: bytes | str | None = None) -> None:
        """Send `frame` (an error: bytes as a binary message, str as text), then the close frame;
        cut the connection after CLOSE_TIMEOUT."""
        with anyio.move_on_after(CLOSE_TIMEOUT) as scope:
            try:
                if frame is not None and not self.ws.closed:
                    if isinstance(frame, str):
                        await self.ws.send_str(frame)
                    else:
                        await self.ws.send_bytes(frame)
                await self.ws.close(code=code, message=reason.encode())
            except ConnectionError:
                pass
        if scope.cancelled_caught:
            self.abort()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()


def websocket_response() -> web.WebSocketResponse:
    # No per-client deflate (CPU per subscriber per frame); pings are ours (`_keepalive`).
    return web.WebSocketResponse(compress=False, max_msg_size=MAX_CLIENT_MESSAGE, autoping=False,
                                 timeout=CLOSE_TIMEOUT)


async def serve_subscriber(
    request: web.Request, sub: Subscriber, feed: LabelFeed, metrics: ServerMetrics, *,
    send_timeout: float, ping_interval: float, ping_timeout: float,
) -> web.WebSocketResponse:
    """Run one subscribeLabels connection, already admitted as `sub`, to its end; JSON text
    frames when the request came in under JSON_PREFIX."""
    sub.json_text = request.path.startswith(JSON_PREFIX + "/")  # before any await: the feed reads it
    error = json_error_frame if sub.json_text else error_frame
    ws = websocket_response()
    await ws.prepare(request)
    sock = sub.connection = SubscriberSocket(ws, request)
    bound = log.bind(subscriber=sub.id, remote=sub.remote, frames="json-text" if sub.json_text else "dag-cbor")
    head = await feed.log.head()  # the committed head, even if the feed has not published it yet
    cursor = sub.requested_cursor
    if cursor is not None and cursor > head:
        bound.info("subscriber.future_cursor", cursor=cursor, head=head)
        metrics.disconnects.labels("future_cursor").inc()
        await sock.close(1008, "FutureCursor", error("FutureCursor", f"Cursor {cursor} is in the future (head is {head})."))
        return ws
    sub.cursor = head if cursor is None else cursor
    sub.state = "backfill"
    bound.info("subscriber.connected", cursor=cursor, head=head)
    reason = "client_closed"
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_read_client, ws, metrics, sub, tg.cancel_scope)
            tg.start_soon(_keepalive, sock, sub, ping_interval, ping_timeout)
            try:
                await _pump(sock, feed, sub, send_timeout)
            except ConsumerTooSlow:
                reason = "consumer_too_slow"
            except ConnectionError:
                pass
            tg.cancel_scope.cancel()
        if reason == "consumer_too_slow":  # after the reader stopped: close() reads the answer itself
            bound.warning("subscriber.too_slow", cursor=sub.cursor, lag=feed.head - sub.cursor)
            await sock.close(1008, "ConsumerTooSlow", error(
                "ConsumerTooSlow", f"Stream consumer too slow (no progress in {send_timeout}s)."))
    finally:
        if sub.keepalive_failed:
            reason = "ping_timeout"
        elif reason == "client_closed" and ws.close_code not in (None, 1000, 1001):
            reason = f"close_{ws.close_code}"
        metrics.disconnects.labels(reason).inc()
        bound.info("subscriber.disconnected", reason=reason, cursor=sub.cursor, frames_sent=sub.frames_sent)
    return ws


async def _pump(sock: SubscriberSocket, feed: LabelFeed, sub: Subscriber, timeout: float) -> None:
    while True:
        seqs, frames = await feed.frames_after(sub.cursor, sub.json_text)
        if not seqs:
            sub.state = "live"  # from now on the feed pushes to it while its socket has room
            await feed.wait_live(sub)
            continue
        i = 0
        while i < len(seqs):
            j, size = i, 0
            while j < len(seqs) and (size < CHUNK_BYTES or j == i):
                size += len(frames[j])
                j += 1
            if not sock.open:
                return  # closing: the close handshake is aiohttp's business
            sock.write(b"".join(frames[i:j]) if j - i > 1 else frames[i])
            sub.cursor = seqs[j - 1]
            sub.frames_sent += j - i
            sub.bytes_sent += size
            feed.frames_sent_total += j - i
            feed.bytes_sent_total += size
            i = j
            if sock.paused:  # the socket buffer is above its high-water mark: wait for the client
                try:
                    with anyio.fail_after(timeout):
                        await sock.drain()
                except TimeoutError:
                    raise ConsumerTooSlow from None


async def _read_client(ws: web.WebSocketResponse, metrics: ServerMetrics, sub: Subscriber,
                       scope: anyio.CancelScope) -> None:
    """Answer pings, note pongs, ignore the rest; a close or a broken frame ends the connection."""
    try:
        async for msg in ws:
            if msg.type is WSMsgType.PING:
                await ws.pong(msg.data)
            elif msg.type is WSMsgType.PONG:
                sub.pong.set()
            elif msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                metrics.client_frames_ignored.inc()
            else:  # ERROR: a frame that breaks the protocol
                break
    except ConnectionError:
        pass
    scope.cancel()


async def _keepalive(sock: SubscriberSocket, sub: Subscriber, interval: float, timeout: float) -> None:
    """A ping every `interval` s; no pong within `timeout` s and nothing read meanwhile: the
    connection is dead, cut it. A subscriber still reading a backlog reaches the ping only after
    the frames queued before it: while the kernel keeps taking its bytes it is alive (how far it
    may fall behind is the send_timeout rule's business, not the ping's)."""
    while True:
        await anyio.sleep(interval)
        sub.pong = anyio.Event()
        reading = sock.delivered(sub.bytes_sent)
        try:
            await sock.ws.ping()
        except ConnectionError:
            return  # the reader sees the end of the connection
        with anyio.move_on_after(timeout):
            await sub.pong.wait()
        if not sub.pong.is_set() and sock.delivered(sub.bytes_sent) <= reading:
            sub.keepalive_failed = True
            sock.abort()
            return
