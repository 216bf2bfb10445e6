"""The front door under abuse: costly queries, connection bursts. Each case once broke the server."""

from __future__ import annotations

import base64
import os
import time
from dataclasses import replace

import anyio
import httpx
import pytest

from firehose_mod.daemon import run_server
from firehose_mod.store import EmitRequest, LabelLog
from firehose_mod.store.query import BudgetExceeded, QueryBudget, QueryConnections

from tests.conftest import Running, uri
from tests.stream_client import Received, collect, subscribe

pytestmark = pytest.mark.anyio

QUERY = "/xrpc/com.atproto.label.queryLabels"
# A statement that runs for as long as it is let: counts to a billion.
ENDLESS = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 1000000000) SELECT count(*) FROM c"


async def fill_fast(running: Running, n: int) -> None:
    """`n` labels through a daemon-style writer (no operator pause between batches)."""
    writer = await LabelLog.open(running.settings.db_path, running.log.key, running.log.src)
    try:
        for i in range(0, n, 1000):
            await writer.emit_many([EmitRequest(uri(j), "porn") for j in range(i, min(i + 1000, n))])
    finally:
        await writer.close()


async def test_heavy_queries_neither_cost_much_nor_delay_a_live_label(running: Running):
    await fill_fast(running, 10_000)
    heavy = [("uriPatterns", "a*")] * 100  # every copy was a scan of the whole table
    async with subscribe(running.ws_base) as ws:
        await anyio.sleep(0.2)
        answers: list[httpx.Response] = []

        async def ask() -> None:
            async with httpx.AsyncClient(timeout=60) as client:
                answers.append(await client.get(f"{running.http_base}{QUERY}", params=heavy))

        async with anyio.create_task_group() as tg:
            for _ in range(8):
                tg.start_soon(ask)
            await anyio.sleep(0.05)  # the queries are in flight
            started = time.monotonic()
            await running.log.emit(uri(99_999_999), "sexual")
            got = await collect(ws, Received(), count=1, timeout=30)
            delay = time.monotonic() - started
    assert got.labels[0].val == "sexual"
    assert delay < 1.0, f"a live label waited {delay:.1f} s behind queries"
    assert [a.status_code for a in answers] == [200] * 8
    assert all(len(a.json()["labels"]) == 50 for a in answers)


async def test_a_query_over_its_budget_is_stopped_and_told_why(running: Running):
    await fill_fast(running, 2_000)
    running.server.query_budget = QueryBudget(seconds=5, steps=5_000)  # a few hundred rows
    async with httpx.AsyncClient() as client:
        wide = await client.get(f"{running.http_base}{QUERY}", params={"uriPatterns": "at://*"})
        narrow = await client.get(f"{running.http_base}{QUERY}", params={"uriPatterns": uri(7)})
    assert wide.status_code == 400 and "budget" in wide.json()["message"]
    assert 'firehose_mod_queries_stopped_total{reason="steps"} 1.0' in running.server.metrics.render().decode()
    assert narrow.status_code == 200 and [d["uri"] for d in narrow.json()["labels"]] == [uri(7)]


async def test_the_time_budget_stops_the_sql_itself(running: Running):
    queries = await QueryConnections.open(running.settings.db_path, count=1)
    try:
        started = time.monotonic()
        with pytest.raises(BudgetExceeded) as stopped:
            await queries.fetchall(ENDLESS, (), QueryBudget(seconds=0.3, steps=10**15))
        assert stopped.value.reason == "time" and time.monotonic() - started < 2
        # The one connection is free again at once: the statement really ended.
        with anyio.fail_after(1):
            assert await queries.fetchall("SELECT 1", (), QueryBudget()) == [(1,)]
    finally:
        await queries.close()


async def test_a_query_whose_caller_is_gone_stops_its_sql(running: Running):
    queries = await QueryConnections.open(running.settings.db_path, count=1)
    try:
        with anyio.move_on_after(0.3):  # the client went away: aiohttp cancels its handler
            await queries.fetchall(ENDLESS, (), QueryBudget(seconds=60, steps=10**15))
        started = time.monotonic()
        with anyio.fail_after(2):
            assert await queries.fetchall("SELECT 2", (), QueryBudget()) == [(2,)]
        assert time.monotonic() - started < 1
    finally:
        await queries.close()


def _handshake(port: int) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (f"GET /xrpc/com.atproto.label.subscribeLabels HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n").encode()


async def test_the_subscriber_cap_holds_against_a_burst(settings, label_log: LabelLog):
    settings = replace(settings, stream_max_subscribers=20)
    statuses: list[bytes] = []
    streams = []
    async with anyio.create_task_group() as tg:
        server = await tg.start(run_server, settings, label_log)

        async def connect() -> None:
            stream = await anyio.connect_tcp("127.0.0.1", server.port)
            streams.append(stream)
            await stream.send(_handshake(server.port))
            head = b""
            while b"\r\n" not in head:
                head += await stream.receive()
            statuses.append(head.split(b" ", 2)[1])

        with anyio.fail_after(60):
            async with anyio.create_task_group() as burst:
                for _ in range(400):
                    burst.start_soon(connect)
        admitted = len(server.feed.subscribers)
        for stream in streams:
            await stream.aclose()
        tg.cancel_scope.cancel()
    assert statuses.count(b"101") == 20 and statuses.count(b"503") == 380
    assert admitted == 20
