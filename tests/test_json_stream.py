"""The JSON-text variant of subscribeLabels (`/compat/json/xrpc/...`), for plyr.fm's consumer.

`PlyrConsumer` below mirrors plyr.fm's `backend/src/backend/_internal/label_stream.py`
(zzstoatzz/plyr.fm, b156152f): the URL it builds, how it reads a message, what it takes from
it. Only Redis, logfire and the projection refresh are left out, and stdlib `json` stands in for
`orjson` (both take str or bytes; both raise a ValueError subclass on anything that is not JSON).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import sys
from dataclasses import replace
from functools import partial
from pathlib import Path

import anyio
import httpx
import pytest
import websockets
from websockets.exceptions import ConnectionClosed, ConnectionClosedError, InvalidStatus

from firehose_mod.labels.signing import verify_label
from firehose_mod.server import feed as feed_module
from firehose_mod.server.subscribe import JSON_PREFIX
from firehose_mod.store import EmitRequest, LabelLog

from tests.conftest import Running, uri
from tests.stream_client import Received, collect, decode, subscribe, tiny_receive_buffer_socket

pytestmark = pytest.mark.anyio

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "plyr_consumer_binary.py"
LABEL_KEYS = {"ver", "src", "uri", "cid", "val", "neg", "cts", "exp", "sig"}


class PlyrConsumer:
    """plyr.fm's LabelStreamConsumer, as far as the wire is concerned."""

    def __init__(self, base: str, cursor: int | None = None):
        self.base = base
        self._cursor = cursor  # what _load_cursor would have read from Redis
        self.processed: list[tuple[str, object, bool]] = []  # (uri, val, neg) per invalidated subject
        self.messages: list[dict] = []
        self.raw_types: set[type] = set()

    def _build_url(self) -> str:
        url = f"{self.base}/xrpc/com.atproto.label.subscribeLabels"
        if self._cursor is not None:
            url = f"{url}?cursor={max(self._cursor - 1, 0)}"
        return url

    async def _connect_and_consume(self, until_seq: int, timeout: float = 20) -> None:
        """Theirs loops until shutdown; this one returns once `until_seq` was processed."""
        with anyio.fail_after(timeout):
            async with websockets.connect(self._build_url(), max_size=2**20) as ws:
                async for raw in ws:
                    self.raw_types.add(type(raw))
                    try:
                        message = json.loads(raw)  # orjson.loads(raw)
                    except (ValueError, TypeError):  # (orjson.JSONDecodeError, TypeError)
                        continue
                    self.messages.append(message)
                    await self._process_message(message)
                    if self._cursor is not None and self._cursor >= until_seq:
                        return

    async def _process_message(self, message: dict) -> None:
        labels = message.get("labels") or []
        for label in labels:
            if uri := label.get("uri"):
                self.processed.append((uri, label.get("val"), bool(label.get("neg"))))
        if (seq := message.get("seq")) is not None:
            self._cursor = int(seq)


def json_base(running: Running) -> str:
    return running.ws_base + JSON_PREFIX


def subscribe_json(ws_base: str, cursor: int | None = None, **kw):
    return subscribe(ws_base + JSON_PREFIX, cursor, **kw)


async def fill(log: LabelLog, n: int, start: int = 0, did: str = "did:plc:uploader") -> None:
    for i in range(start, start + n, 500):
        await log.emit_many([EmitRequest(uri(j, did), "porn") for j in range(i, min(i + 500, start + n))])


async def collect_json(ws, out: list[dict], count: int, timeout: float = 20) -> list[dict]:
    with anyio.fail_after(timeout):
        while len(out) < count:
            raw = await ws.recv()
            assert isinstance(raw, str), "a binary message on the JSON-text stream"
            out.append(json.loads(raw))
    return out


def load_example():
    spec = importlib.util.spec_from_file_location("plyr_consumer_binary", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def test_their_consumer_gets_every_label_once_in_order_then_live_beside_a_binary_subscriber(running: Running):
    log = running.log
    await fill(log, 25)
    await log.emit(uri(3), "porn", neg=True)  # 26: a negation
    await log.emit(uri(900), "copyright-violation", cid="bafyreie5737gdxlw5i64vzichcalba3z2v5n6icifvx5xytvske7mr3hpm",
                   exp="2099-01-01T00:00:00.000Z")  # 27: cid and exp
    plyr = PlyrConsumer(json_base(running), cursor=0)  # a cursor of 0 saved: the URL asks for cursor=0
    assert plyr._build_url().endswith("/compat/json/xrpc/com.atproto.label.subscribeLabels?cursor=0")
    binary = Received()
    async with subscribe(running.ws_base, 0) as bws, anyio.create_task_group() as tg:
        tg.start_soon(partial(collect, bws, binary, count=30))
        async with anyio.create_task_group() as consumer:
            consumer.start_soon(plyr._connect_and_consume, 30)
            with anyio.fail_after(10):
                while plyr._cursor < 27:
                    await anyio.sleep(0.01)
            frames = {s["frames"] for s in running.server.feed.status()["subscribers"]}
            assert frames == {"json-text", "dag-cbor"}
            for n in range(3):  # live, after the backfill
                await log.emit(uri(1000 + n), "sexual")
    assert plyr.raw_types == {str}  # text frames only
    assert [m["seq"] for m in plyr.messages] == list(range(1, 31)) == binary.seqs
    assert all(set(m) == {"seq", "labels"} and len(m["labels"]) == 1 for m in plyr.messages)
    json_labels = [m["labels"][0] for m in plyr.messages]
    # The same labels as the binary stream, each in its lexicon JSON form (as queryLabels has it).
    assert json_labels == [label.to_json() for label in binary.labels]
    assert all(set(d) <= LABEL_KEYS and {"ver", "src", "uri", "val", "cts", "sig"} <= set(d) for d in json_labels)
    assert all(set(d["sig"]) == {"$bytes"} and "=" not in d["sig"]["$bytes"] for d in json_labels)
    assert "neg" not in json_labels[0] and json_labels[25]["neg"] is True
    assert json_labels[26]["cid"].startswith("bafyrei") and json_labels[26]["exp"] == "2099-01-01T00:00:00.000Z"
    assert all(verify_label(log.key.did_key, label) for label in binary.labels)
    assert plyr.processed[25] == (uri(3), "porn", True)
    assert [p[0] for p in plyr.processed] == [label.uri for label in binary.labels]


async def test_labels_older_than_the_window_come_from_the_database_the_same(settings, label_log: LabelLog):
    from firehose_mod.daemon import run_server

    await fill(label_log, 450)  # before the server starts: below its window, read page by page
    async with anyio.create_task_group() as tg:
        server = await tg.start(run_server, settings, label_log)
        base = f"ws://127.0.0.1:{server.port}"
        async with subscribe_json(base, 0) as jws, subscribe(base, 0) as bws:
            got = await collect_json(jws, [], 450)
            binary = await collect(bws, Received(), count=450)
        tg.cancel_scope.cancel()
    assert [m["seq"] for m in got] == binary.seqs == list(range(1, 451))
    assert [m["labels"][0] for m in got] == [label.to_json() for label in binary.labels]


async def test_their_reconnect_rewinds_one_and_misses_nothing(running: Running):
    await fill(running.log, 5)
    plyr = PlyrConsumer(json_base(running), cursor=0)
    await plyr._connect_and_consume(5)
    assert plyr._cursor == 5
    await fill(running.log, 3, start=100)  # written while they were away
    plyr.messages.clear()
    await plyr._connect_and_consume(8)  # ?cursor=4
    assert [m["seq"] for m in plyr.messages] == [5, 6, 7, 8]


async def test_no_cursor_is_live_only_on_the_json_stream_too(running: Running):
    await fill(running.log, 5)
    async with subscribe_json(running.ws_base) as ws:
        await anyio.sleep(0.2)
        await running.log.emit(uri(100), "porn")
        got = await collect_json(ws, [], 1)
    assert [m["seq"] for m in got] == [6]


async def test_future_cursor_is_a_json_error_frame_then_close_1008(running: Running):
    await fill(running.log, 3)
    async with subscribe(running.ws_base, 4) as ws:  # the binary stream's answer, for comparison
        _header, binary_error = decode(await ws.recv())
        with pytest.raises(ConnectionClosed):
            await ws.recv()
    async with subscribe_json(running.ws_base, 4) as ws:
        raw = await ws.recv()
        assert isinstance(raw, str)
        assert json.loads(raw) == binary_error == {
            "error": "FutureCursor", "message": "Cursor 4 is in the future (head is 3)."}
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
    assert closed.value.rcvd.code == 1008 and closed.value.rcvd.reason == "FutureCursor"
    # Their consumer: the error is a dict without labels or seq (nothing processed, cursor kept);
    # the close raises out of `async for`, which their run() logs before reconnecting with backoff.
    plyr = PlyrConsumer(json_base(running), cursor=5)  # ?cursor=4
    with pytest.raises(ConnectionClosedError):
        await plyr._connect_and_consume(10, timeout=5)
    assert plyr.messages == [binary_error] and plyr.processed == [] and plyr._cursor == 5


@pytest.mark.parametrize(("cursor", "message"), [("abc", "integer"), ("-1", "between")])
async def test_bad_cursor_is_the_same_http_400(running: Running, cursor, message):
    with pytest.raises(InvalidStatus) as info:
        async with subscribe_json(running.ws_base, cursor):
            pass
    assert info.value.response.status_code == 400 and message.encode() in info.value.response.body
    async with httpx.AsyncClient() as client:
        r = await client.get(f"{running.http_base}{JSON_PREFIX}/xrpc/com.atproto.label.subscribeLabels")
    assert r.status_code == 400 and "WebSocket" in r.json()["message"]


async def test_their_consumer_on_the_binary_path_silently_sees_nothing(running: Running):
    """Why the variant exists: their parser skips every DAG-CBOR frame."""
    await fill(running.log, 3)
    plyr = PlyrConsumer(running.ws_base, cursor=1)
    with anyio.move_on_after(1):
        await plyr._connect_and_consume(3)
    assert plyr.raw_types == {bytes} and plyr.messages == [] and plyr._cursor == 1


async def test_json_frames_are_made_once_per_label_for_all_json_subscribers(running: Running, monkeypatch):
    made: list[int] = []
    real = feed_module.json_from_binary

    def counting(message: bytes) -> bytes:
        made.append(1)
        return real(message)

    monkeypatch.setattr(feed_module, "json_from_binary", counting)
    await fill(running.log, 40)  # in the feed's window: made when the first JSON subscriber reads them
    n = 20
    results: list[list[dict]] = []
    async with anyio.create_task_group() as tg:
        async def one(cursor):
            async with subscribe_json(running.ws_base, cursor) as ws:
                results.append(await collect_json(ws, [], 43 if cursor == 0 else 3))

        for i in range(n):
            tg.start_soon(one, 0 if i % 2 else None)  # half replay from 0, half live only
        with anyio.fail_after(20):
            while len(running.server.feed.subscribers) < n or any(
                    s.state != "live" for s in running.server.feed.subscribers.values()):
                await anyio.sleep(0.01)
        for i in range(3):
            await running.log.emit(uri(500 + i), "porn")
    assert len(results) == n
    assert all([m["seq"] for m in r] == list(range(44 - len(r), 44)) for r in results)
    assert len(made) == 43  # once per label, not once per label per subscriber


async def test_a_slow_json_consumer_is_cut_like_a_binary_one(settings, label_log: LabelLog):
    from firehose_mod.daemon import run_server

    settings = replace(settings, stream_send_timeout=0.5)
    big_did = "did:plc:" + "x" * 2000  # big labels fill the slow client's socket quickly
    async with anyio.create_task_group() as tg:
        server = await tg.start(run_server, settings, label_log)
        base = f"ws://127.0.0.1:{server.port}"
        sock = tiny_receive_buffer_socket(server.port)
        async with subscribe_json(base, 0, sock=sock, max_queue=1) as slow, \
                subscribe_json(base, 0) as fast_json, subscribe(base, 0) as fast_binary:
            got_json: list[dict] = []
            got_binary = Received()
            async with anyio.create_task_group() as readers:
                readers.start_soon(partial(collect_json, fast_json, got_json, 3001, timeout=30))
                readers.start_soon(partial(collect, fast_binary, got_binary, count=3001, timeout=30))
                await label_log.emit(uri(99_999), "sexual")
                await slow.recv()  # the slow client reads one frame, then nothing
                for i in range(0, 3000, 250):
                    await label_log.emit_many([EmitRequest(uri(j, big_did), "porn") for j in range(i, i + 250)])
            with anyio.fail_after(15):
                while len(server.feed.subscribers) > 2:
                    await anyio.sleep(0.05)
            survivors = sorted((s.json_text, s.cursor) for s in server.feed.subscribers.values())
            assert survivors == [(False, 3001), (True, 3001)]  # the fast ones, fully caught up
            await label_log.emit(uri(99_999), "porn")
            await collect_json(fast_json, got_json, 3002)
            await collect(fast_binary, got_binary, count=3002)
        metrics = server.metrics.render().decode()
        tg.cancel_scope.cancel()
    assert [m["seq"] for m in got_json] == got_binary.seqs == list(range(1, 3003))
    assert 'firehose_mod_disconnects_total{reason="consumer_too_slow"} 1.0' in metrics


async def test_the_binary_example_yields_what_their_json_consumer_handled(running: Running):
    example = load_example()
    await fill(running.log, 6)
    await running.log.emit(uri(2), "porn", neg=True)
    async with subscribe_json(running.ws_base, 0) as ws:
        from_json = await collect_json(ws, [], 7)
    from_binary: list[dict] = []
    async with anyio.create_task_group() as tg:
        async def read():
            async with contextlib.aclosing(example.messages(running.ws_base, 0)) as stream:
                async for message in stream:
                    from_binary.append(message)
                    if len(from_binary) == 9:
                        return

        tg.start_soon(read)
        await anyio.sleep(0.2)
        await running.log.emit(uri(700), "sexual")
        await running.log.emit(uri(701), "sexual")
    async with subscribe_json(running.ws_base, 7) as ws:
        from_json = await collect_json(ws, from_json, 9)
    assert from_binary == from_json

    # Their _process_message, fed by the example: the same invalidations as from JSON.
    via_json, via_binary = PlyrConsumer(""), PlyrConsumer("")
    for m in from_json:
        await via_json._process_message(m)
    for m in from_binary:
        await via_binary._process_message(m)
    assert via_binary.processed == via_json.processed and via_binary._cursor == via_json._cursor == 9

    # An error frame decodes to the JSON variant's error dict; the close raises as before.
    got = []
    with pytest.raises(ConnectionClosedError) as closed:
        async for message in example.messages(running.ws_base, 50):
            got.append(message)
    assert got == [{"error": "FutureCursor", "message": "Cursor 50 is in the future (head is 9)."}]
    assert closed.value.rcvd.code == 1008
    assert example.decode_frame("text") is None and example.decode_frame(b"\xff\x00garbage") is None


async def test_the_binary_example_runs_as_a_script(running: Running):
    await fill(running.log, 4)
    result = await anyio.run_process([sys.executable, str(EXAMPLE), running.ws_base, "--cursor", "1", "--count", "3"],
                                     check=False)
    assert result.returncode == 0, result.stderr.decode()
    lines = [json.loads(line) for line in result.stdout.decode().splitlines()]
    assert [m["seq"] for m in lines] == [2, 3, 4]
    assert [m["labels"][0]["uri"] for m in lines] == [uri(1), uri(2), uri(3)]
    result = await anyio.run_process([sys.executable, str(EXAMPLE), running.ws_base, "--cursor", "9"], check=False)
    assert result.returncode == 1 and b"FutureCursor" in result.stderr
