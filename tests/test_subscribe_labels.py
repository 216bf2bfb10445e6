"""subscribeLabels over a real WebSocket: the SDK as client, every cursor case, fan-out, faults."""

from __future__ import annotations

import asyncio
from functools import partial

import anyio
import httpx
import libipld
import pytest
from atproto import AsyncFirehoseSubscribeLabelsClient, models, parse_subscribe_labels_message
from atproto_crypto.verify import verify_signature
from websockets.exceptions import ConnectionClosed

from firehose_mod.store import EmitRequest, LabelLog

from tests.conftest import Running, uri
from tests.stream_client import Received, collect, decode, subscribe, tiny_receive_buffer_socket

pytestmark = pytest.mark.anyio
LABEL_LOG_BACKENDS = ("sqlite", "postgres")  # tests/conftest.py


async def fill(log: LabelLog, n: int, start: int = 0) -> None:
    for i in range(start, start + n, 500):
        await log.emit_many([EmitRequest(uri(j), "porn") for j in range(i, min(i + 500, start + n))])


async def test_atproto_sdk_client_receives_and_verifies_every_label(running: Running):
    await fill(running.log, 30)
    did_key = running.log.key.did_key
    client = AsyncFirehoseSubscribeLabelsClient(params={"cursor": 0}, base_uri=f"{running.ws_base}/xrpc")
    got: list[tuple[int, bool]] = []

    async def on_message(frame) -> None:
        msg = parse_subscribe_labels_message(frame)
        assert isinstance(msg, models.ComAtprotoLabelSubscribeLabels.Labels)
        for label in msg.labels:
            unsigned = label.model_dump(exclude_none=True, by_alias=True)
            unsigned.pop("sig"), unsigned.pop("$type", None)
            got.append((msg.seq, verify_signature(did_key, libipld.encode_dag_cbor(unsigned), label.sig)))
        if len(got) == 30:
            asyncio.get_running_loop().create_task(client.stop())

    with anyio.fail_after(20):
        await client.start(on_message)
    assert got == [(seq, True) for seq in range(1, 31)]


async def test_sdk_client_gets_future_cursor_as_an_error(running: Running):
    from atproto_firehose.exceptions import FirehoseError

    await fill(running.log, 2)
    client = AsyncFirehoseSubscribeLabelsClient(params={"cursor": 99}, base_uri=f"{running.ws_base}/xrpc")
    with anyio.fail_after(10), pytest.raises(FirehoseError) as info:
        await client.start(lambda _frame: None)
    assert "FutureCursor" in repr(info.value.args)


async def test_cursor_zero_replays_everything_then_follows_live(running: Running):
    await fill(running.log, 10)
    async with subscribe(running.ws_base, 0) as ws:
        got = await collect(ws, Received(), count=10)
        await running.log.emit(uri(100), "sexual")
        await collect(ws, got, count=11)
    assert got.seqs == list(range(1, 12))
    assert got.labels[-1].uri == uri(100) and got.labels[-1].val == "sexual"


async def test_cursor_n_sends_only_labels_after_n(running: Running):
    await fill(running.log, 10)
    async with subscribe(running.ws_base, 7) as ws:
        got = await collect(ws, Received(), count=3)
        await running.log.emit(uri(100), "porn")
        await collect(ws, got, count=4)
    assert got.seqs == [8, 9, 10, 11]


async def test_no_cursor_is_live_only(running: Running):
    await fill(running.log, 5)
    async with subscribe(running.ws_base) as ws:
        await anyio.sleep(0.2)  # connected; nothing of the backlog may come
        await running.log.emit(uri(100), "porn")
        await running.log.emit(uri(101), "porn")
        got = await collect(ws, Received(), count=2)
    assert got.seqs == [6, 7]


async def test_cursor_at_head_sends_nothing_until_a_new_label(running: Running):
    await fill(running.log, 3)
    async with subscribe(running.ws_base, 3) as ws:
        with anyio.move_on_after(0.3):
            await ws.recv()
            pytest.fail("a frame arrived for a cursor at the head")
        await running.log.emit(uri(100), "porn")
        got = await collect(ws, Received(), count=1)
    assert got.seqs == [4]


async def test_future_cursor_is_an_error_frame_then_close_1008(running: Running):
    await fill(running.log, 3)
    async with subscribe(running.ws_base, 4) as ws:
        header, body = decode(await ws.recv())
        assert header == {"op": -1}
        assert body["error"] == "FutureCursor"
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
    assert closed.value.rcvd.code == 1008 and closed.value.rcvd.reason == "FutureCursor"


async def test_labels_written_during_backfill_arrive_exactly_once_in_order(running: Running):
    await fill(running.log, 3000)
    written = 3000

    async def writer():
        nonlocal written
        for i in range(300):
            await running.log.emit(uri(10_000 + i), "porn")
            written += 1
            if i % 10 == 0:
                await anyio.sleep(0)

    async with subscribe(running.ws_base, 0) as ws, anyio.create_task_group() as tg:
        tg.start_soon(writer)
        got = await collect(ws, Received(), count=3300, timeout=60)
    assert written == 3300
    assert got.seqs == list(range(1, 3301))
    assert [label.uri for label in got.labels[3000:]] == [uri(10_000 + i) for i in range(300)]


@pytest.mark.backends("sqlite")  # on PostgreSQL: tests/test_pg_streams.py
async def test_labels_from_another_process_connection_reach_subscribers(running: Running, settings):
    other = await LabelLog.open(settings.db_path, running.log.key, running.log.src)
    try:
        async with subscribe(running.ws_base, 0) as ws:
            await other.emit(uri(1), "porn")  # not this process's writer: found by the poll
            got = await collect(ws, Received(), count=1, timeout=5)
    finally:
        await other.close()
    assert got.seqs == [1]


@pytest.mark.backends("sqlite")  # on PostgreSQL: tests/test_pg_streams.py (waits for "live")
async def test_many_subscribers_each_get_every_live_label(running: Running):
    n = 200
    async with anyio.create_task_group() as tg:
        results: list[Received] = []
        ready = anyio.Event()
        connected = 0

        async def one():
            nonlocal connected
            async with subscribe(running.ws_base) as ws:
                connected += 1
                if connected == n:
                    ready.set()
                results.append(await collect(ws, Received(), count=3))

        for _ in range(n):
            tg.start_soon(one)
        with anyio.fail_after(20):
            await ready.wait()
            while len(running.server.feed.subscribers) < n:
                await anyio.sleep(0.01)
        for i in range(3):
            await running.log.emit(uri(i), "porn")
    assert len(results) == n and all(r.seqs == [1, 2, 3] for r in results)


async def test_slow_consumer_is_cut_off_while_others_keep_flowing(settings, label_log: LabelLog):
    from dataclasses import replace

    from firehose_mod.daemon import run_server

    settings = replace(settings, stream_send_timeout=0.5)
    big_did = "did:plc:" + "x" * 2000  # big labels fill the slow client's socket quickly
    async with anyio.create_task_group() as tg:
        server = await tg.start(run_server, settings, label_log)
        base = f"ws://127.0.0.1:{server.port}"
        sock = tiny_receive_buffer_socket(server.port)
        async with subscribe(base, 0, sock=sock, max_queue=1) as slow, subscribe(base, 0) as fast:
            got = Received()
            async with anyio.create_task_group() as readers:
                readers.start_soon(partial(collect, fast, got, count=3001, timeout=30))
                await label_log.emit(uri(99_999), "sexual")
                await slow.recv()  # the slow client reads one frame, then nothing
                for i in range(0, 3000, 250):
                    await label_log.emit_many([EmitRequest(uri(j, big_did), "porn") for j in range(i, i + 250)])
            with anyio.fail_after(15):
                while len(server.feed.subscribers) > 1:
                    await anyio.sleep(0.05)
            (survivor,) = server.feed.subscribers.values()
            assert survivor.cursor == 3001  # the one left is the fast one, fully caught up
            await label_log.emit(uri(99_999), "porn")
            await collect(fast, got, count=3002)
        metrics = server.metrics.render().decode()
        tg.cancel_scope.cancel()
    assert got.seqs == list(range(1, 3003))
    assert 'firehose_mod_disconnects_total{reason="consumer_too_slow"} 1.0' in metrics


async def test_garbage_from_clients_is_ignored_or_closes_only_that_connection(running: Running):
    await fill(running.log, 2)
    async with subscribe(running.ws_base, 0) as ws:
        await ws.send("hello?")
        await ws.send(b"\xff\x00garbage")
        got = await collect(ws, Received(), count=2)
        assert got.seqs == [1, 2]
    # Bytes that are not WebSocket frames at all: the server closes that connection only.
    async with subscribe(running.ws_base, 0) as ws:
        await collect(ws, Received(), count=2)
        ws.transport.write(b"\x00\x01\x02\x03 this is not a websocket frame \xff" * 10)
        with anyio.fail_after(5), pytest.raises(ConnectionClosed):
            while True:
                await ws.recv()
    async with subscribe(running.ws_base, 1) as ws:
        assert (await collect(ws, Received(), count=1)).seqs == [2]


@pytest.mark.parametrize(
    ("query", "message"),
    [("cursor=abc", "integer"), ("cursor=-1", "between"), ("cursor=9007199254740992", "between")],
)
async def test_bad_cursor_is_an_http_400_before_the_upgrade(running: Running, query, message):
    from websockets.exceptions import InvalidStatus

    with pytest.raises(InvalidStatus) as info:
        async with subscribe(running.ws_base, query.split("=", 1)[1]):
            pass
    assert info.value.response.status_code == 400
    assert b"InvalidRequest" in info.value.response.body and message.encode() in info.value.response.body


async def test_plain_http_get_on_the_stream_explains_itself(running: Running):
    async with httpx.AsyncClient() as client:
        r = await client.get(f"{running.http_base}/xrpc/com.atproto.label.subscribeLabels")
    assert r.status_code == 400 and "WebSocket" in r.json()["message"]


async def test_a_raised_seq_floor_keeps_saved_cursors_below_new_labels(running: Running):
    """A database restored from an old backup: subscribers hold cursors above its head."""
    await fill(running.log, 3)
    assert await running.log.raise_seq_floor(1000) == 3
    with pytest.raises(ValueError, match="already at seq 1000"):
        await running.log.raise_seq_floor(500)
    async with subscribe(running.ws_base, 700) as ws:  # a cursor from the lost database
        await running.log.emit(uri(50), "porn")
        got = await collect(ws, Received(), count=1)
    assert got.seqs == [1001]
    async with subscribe(running.ws_base, 2000) as ws:
        header, body = decode(await ws.recv())
    assert body["error"] == "FutureCursor"
