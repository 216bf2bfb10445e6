"""`com.atproto.label.subscribeLabels`: one pull loop per subscriber over the label log.

- no cursor: live only, from the head at connect time;
- `cursor=N`: every label with seq > N (`0` = everything), then live, with no gap and no
  duplicate: the loop only ever asks for seq > its own cursor, so a label committed during
  the backfill is sent exactly once, in order;
- a cursor above the head: `FutureCursor` error frame, then close 1008;
- a send blocked longer than `send_timeout` (the client stopped reading): `ConsumerTooSlow`
  error frame, then close. Server memory per client stays at one page of frames plus the
  socket's write buffer whatever the client does.
"""

from __future__ import annotations

import anyio
import structlog
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from firehose_mod.server.feed import LabelFeed, Subscriber
from firehose_mod.server.frames import error_frame
from firehose_mod.server.metrics import ServerMetrics

log = structlog.get_logger(__name__)

CHUNK_BYTES = 64 * 1024  # bytes per socket write; a page of frames is several writes


class ConsumerTooSlow(Exception):
    pass


async def serve_subscriber(
    ws: ServerConnection,
    feed: LabelFeed,
    metrics: ServerMetrics,
    *,
    cursor: int | None,
    remote: str,
    send_timeout: float,
) -> None:
    """Run one subscribeLabels connection to its end."""
    head = await feed.log.head()  # the committed head, even if the feed has not published it yet
    if cursor is not None and cursor > head:
        log.info("subscriber.future_cursor", remote=remote, cursor=cursor, head=head)
        metrics.disconnects.labels("future_cursor").inc()
        await close_with_error(ws, "FutureCursor", f"Cursor {cursor} is in the future (head is {head}).")
        return
    sub = feed.register(remote, ws.request.headers.get("User-Agent", ""), cursor, head if cursor is None else cursor, ws)
    bound = log.bind(subscriber=sub.id, remote=remote)
    bound.info("subscriber.connected", cursor=cursor, head=head)
    reason = "client_closed"
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_drain_client, ws, metrics, tg.cancel_scope)
            try:
                await _pump(ws, feed, metrics, sub, send_timeout)
            except ConsumerTooSlow:
                reason = "consumer_too_slow"
                bound.warning("subscriber.too_slow", cursor=sub.cursor, lag=feed.head - sub.cursor)
                await close_with_error(ws, "ConsumerTooSlow", f"Stream consumer too slow (no progress in {send_timeout}s).")
            except ConnectionClosed:
                pass
            tg.cancel_scope.cancel()
    finally:
        feed.unregister(sub)
        if reason == "client_closed" and ws.close_code not in (None, 1000, 1001):
            reason = f"close_{ws.close_code}"
        metrics.disconnects.labels(reason).inc()
        bound.info("subscriber.disconnected", reason=reason, cursor=sub.cursor, frames_sent=sub.frames_sent)


async def _pump(ws: ServerConnection, feed: LabelFeed, metrics: ServerMetrics, sub: Subscriber, timeout: float) -> None:
    # The frames are pre-framed WebSocket messages (identical for every subscriber), written
    # straight to the socket in chunks: one syscall for many labels. websockets' own writes
    # (pings, close) are whole frames too, so they interleave at frame boundaries only.
    transport = ws.transport
    while True:
        seqs, frames = await feed.frames_after(sub.cursor)
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
            if ws.state is not State.OPEN:
                return  # closing: the close handshake is websockets' business
            transport.write(b"".join(frames[i:j]) if j - i > 1 else frames[i])
            sub.cursor = seqs[j - 1]
            sub.frames_sent += j - i
            sub.bytes_sent += size
            feed.frames_sent_total += j - i
            feed.bytes_sent_total += size
            i = j
            if ws.paused:  # the socket buffer is above websockets' write limit: wait for the client
                try:
                    with anyio.fail_after(timeout):
                        await ws.drain()
                except TimeoutError:
                    raise ConsumerTooSlow from None


async def _drain_client(ws: ServerConnection, metrics: ServerMetrics, scope: anyio.CancelScope) -> None:
    """Read (and ignore) what the client sends, so a closed connection ends the pump at once."""
    try:
        async for _ in ws:
            metrics.client_frames_ignored.inc()
    except ConnectionClosed:
        pass
    scope.cancel()


async def close_with_error(ws: ServerConnection, error: str, message: str) -> None:
    """Send an error frame then close with 1008 and the error name, as the reference server does."""
    with anyio.move_on_after(2):
        try:
            await ws.send(error_frame(error, message))
            await ws.close(1008, error)
        except ConnectionClosed:
            return
    if ws.state.name != "CLOSED":
        ws.transport.abort()
