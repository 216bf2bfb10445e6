"""The HTTP side of the label server: keep-alive, limits, 405/501, CORS, the operator token."""

from __future__ import annotations

import base64
import os
import socket
import stat
from dataclasses import replace

import anyio
import httpx
import pytest
from aiohttp import web

from firehose_mod.daemon import run_server
from firehose_mod.server.admin import auth_header, token_path
from firehose_mod.server.app import LabelServer
from firehose_mod.server.feed import LabelFeed
from firehose_mod.server.metrics import ServerMetrics
from firehose_mod.store import EmitRequest
from firehose_mod.server.xrpc import MAX_BODY, json_response, procedure

from tests.conftest import Running
from tests.stream_client import Received, collect, subscribe, tiny_receive_buffer_socket

pytestmark = pytest.mark.anyio

QUERY = "/xrpc/com.atproto.label.queryLabels"
SUBSCRIBE = "/xrpc/com.atproto.label.subscribeLabels"


def raw_exchange(port: int, request: bytes, *, answers: int = 1) -> list[bytes]:
    """Send `request` on one TCP connection and read `answers` HTTP responses (with bodies)."""
    out: list[bytes] = []
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request)
        buf = b""
        while len(out) < answers:
            while b"\r\n\r\n" not in buf:
                chunk = sock.recv(65536)
                if not chunk:
                    return out
                buf += chunk
            head, _, rest = buf.partition(b"\r\n\r\n")
            length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), 0)
            while len(rest) < length:
                rest += sock.recv(65536)
            out.append(head + b"\r\n\r\n" + rest[:length])
            buf = rest[length:]
    return out


def ws_handshake(port: int, *extra: str) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [f"GET {SUBSCRIBE}?cursor=0 HTTP/1.1", f"Host: 127.0.0.1:{port}", "Upgrade: websocket",
             "Connection: Upgrade", f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13", *extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def test_two_requests_are_answered_on_one_connection(running: Running):
    port = running.server.port
    get = f"GET /xrpc/_health HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
    query = f"GET {QUERY}?uriPatterns=* HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
    answers = await anyio.to_thread.run_sync(lambda: raw_exchange(port, get + query, answers=2))
    assert len(answers) == 2, answers
    assert answers[0].startswith(b"HTTP/1.1 200") and b'"version"' in answers[0]
    assert answers[1].startswith(b"HTTP/1.1 200") and b'"labels":[]' in answers[1]
    async with httpx.AsyncClient() as client:  # and a keep-alive client reuses its connection
        for _ in range(3):
            r = await client.get(f"{running.http_base}/xrpc/_health")
            assert r.headers.get("connection", "").lower() != "close"


async def test_unknown_methods_and_paths_answer_in_the_atproto_error_shape(running: Running):
    async with httpx.AsyncClient() as client:
        unknown = await client.get(f"{running.http_base}/xrpc/com.example.nothing")
        post = await client.post(f"{running.http_base}/xrpc/_health", json={})
        delete = await client.delete(f"{running.http_base}/metrics")
        missing = await client.get(f"{running.http_base}/nothing/here")
    assert unknown.status_code == 501 and unknown.json()["error"] == "MethodNotImplemented"
    assert post.status_code == 405 and post.json()["error"] == "MethodNotAllowed" and "GET" in post.headers["allow"]
    assert delete.status_code == 405 and set(delete.json()) == {"error", "message"}
    assert missing.status_code == 404 and missing.json()["error"] == "NotFound"


async def test_procedure_bodies_are_bounded(settings, label_log):
    """An XRPC procedure added the documented way gets JSON bodies up to MAX_BODY; more is a 413."""

    async def echo(request: web.Request, body: dict) -> web.Response:
        return json_response({"got": body})

    feed = LabelFeed(label_log)  # built as run_server builds it, plus one route
    await feed.start()
    extended = LabelServer(settings, feed, ServerMetrics(feed))
    extended.app.router.add_post("/xrpc/com.example.echo", procedure(echo))
    async with anyio.create_task_group() as tg:
        await tg.start(extended.serve)
        url = f"http://127.0.0.1:{extended.port}/xrpc/com.example.echo"
        async with httpx.AsyncClient() as client:
            ok = await client.post(url, json={"x": 1})
            big = await client.post(url, json={"x": "a" * MAX_BODY})

            async def chunks():  # no Content-Length: bounded while reading
                for _ in range(MAX_BODY // 1000 + 2):
                    yield b" " * 1000

            chunked = await client.post(url, content=chunks(), headers={"Content-Type": "application/json"})
            not_json = await client.post(url, content=b"{", headers={"Content-Type": "application/json"})
        tg.cancel_scope.cancel()
    assert ok.status_code == 200 and ok.json() == {"got": {"x": 1}}
    assert big.status_code == 413 and big.json()["error"] == "PayloadTooLarge"
    assert chunked.status_code == 413
    assert not_json.status_code == 400 and not_json.json()["error"] == "InvalidRequest"


async def test_cors_is_what_the_reference_pds_sends(running: Running):
    async with httpx.AsyncClient() as client:
        preflight = await client.options(f"{running.http_base}{QUERY}", headers={
            "Origin": "https://app.example", "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "atproto-accept-labelers,content-type"})
        query = await client.get(f"{running.http_base}{QUERY}", params={"uriPatterns": "*"},
                                 headers={"Origin": "https://app.example"})
        error = await client.get(f"{running.http_base}/xrpc/com.example.nothing")
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == "*"
    assert preflight.headers["access-control-allow-methods"] == "GET,HEAD,PUT,PATCH,POST,DELETE"
    assert preflight.headers["access-control-allow-headers"] == "atproto-accept-labelers,content-type"
    assert preflight.headers["access-control-max-age"] == "86400"
    assert query.headers["access-control-allow-origin"] == "*"
    assert error.headers["access-control-allow-origin"] == "*"


async def test_admin_status_takes_the_operator_token_and_no_cors(running: Running):
    path = token_path(running.settings.data_dir)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    url = f"{running.http_base}/admin/status"
    async with httpx.AsyncClient() as client:
        bare = await client.get(url)
        proxied = await client.get(url, headers={"X-Real-IP": "127.0.0.1", "Forwarded": "for=127.0.0.1"})
        wrong = await client.get(url, headers={"Authorization": "Bearer not-the-token"})
        ok = await client.get(url, headers={**auth_header(running.settings.data_dir), "Origin": "https://evil.example"})
        preflight = await client.options(url, headers={"Origin": "https://evil.example",
                                                       "Access-Control-Request-Method": "GET"})
    for refused in (bare, proxied, wrong):
        assert refused.status_code == 401 and refused.json()["error"] == "AuthenticationRequired"
        assert refused.headers["www-authenticate"].startswith("Bearer")
    assert ok.status_code == 200 and ok.json()["head"] == 0
    for r in (bare, ok, preflight):
        assert "access-control-allow-origin" not in r.headers


async def test_metrics_show_subscribers_by_id_and_status_shows_their_address(running: Running):
    await running.log.emit("did:plc:someone", "porn")
    async with subscribe(running.ws_base, 0, additional_headers={"X-Forwarded-For": "203.0.113.9"}) as ws:
        await collect(ws, Received(), count=1)
        async with httpx.AsyncClient() as client:
            metrics = (await client.get(f"{running.http_base}/metrics")).text
            status = (await client.get(f"{running.http_base}/admin/status",
                                       headers=auth_header(running.settings.data_dir))).json()
    assert status["subscribers"][0]["remote"] == "203.0.113.9"
    assert "firehose_mod_subscriber_lag{subscriber=" in metrics and "203.0.113.9" not in metrics


@pytest.mark.parametrize("header", ["X-Forwarded-For: 198.51.100.1", "Upgrade: websocket", "User-Agent: twice/1.0"])
async def test_a_repeated_header_we_act_on_is_a_400(running: Running, header):
    port = running.server.port
    request = ws_handshake(port, header, "X-Forwarded-For: 198.51.100.2" if header.startswith("X-F") else header)
    (answer,) = await anyio.to_thread.run_sync(lambda: raw_exchange(port, request))
    assert answer.split(b" ", 2)[1] == b"400", answer[:200]
    assert header.split(":")[0].encode() in answer
    async with subscribe(running.ws_base, 0):  # the server is fine
        pass


async def test_a_subscriber_that_answers_no_ping_is_cut(settings, label_log):
    settings = replace(settings, stream_ping_interval=0.2, stream_ping_timeout=0.3)
    async with anyio.create_task_group() as tg:
        server = await tg.start(run_server, settings, label_log)
        stream = await anyio.connect_tcp("127.0.0.1", server.port)  # handshakes, then never reads again
        await stream.send(ws_handshake(server.port))
        await stream.receive()
        with anyio.fail_after(5):
            while not server.feed.subscribers:
                await anyio.sleep(0.02)
            while server.feed.subscribers:
                await anyio.sleep(0.05)
        metrics = server.metrics.render().decode()
        await stream.aclose()
        tg.cancel_scope.cancel()
    assert 'firehose_mod_disconnects_total{reason="ping_timeout"} 1.0' in metrics


async def test_a_subscriber_reading_a_long_backlog_is_not_cut_for_a_pong_queued_behind_it(settings, label_log):
    # Its pong can only come once it has read the frames queued before the ping: far more than
    # ping_timeout here. It is reading all along, so it stays connected and gets everything.
    settings = replace(settings, stream_ping_interval=0.1, stream_ping_timeout=0.2)
    total = 20_000
    await label_log.emit_many([EmitRequest(f"at://did:plc:backlog/fm.plyr.track/{i:06d}", "porn")
                               for i in range(total)])
    async with anyio.create_task_group() as tg:
        server = await tg.start(run_server, settings, label_log)
        got = Received()
        async with subscribe(f"ws://127.0.0.1:{server.port}", 0, ping_interval=None,
                             sock=tiny_receive_buffer_socket(server.port)) as ws:
            with anyio.fail_after(120):
                while len(got.seqs) < total:
                    await collect(ws, got, count=len(got.seqs) + 200)
                    await anyio.sleep(0.01)  # a slow reader: about 20,000 frames/s at most, 1 s+ behind
        metrics = server.metrics.render().decode()
        tg.cancel_scope.cancel()
    assert got.seqs == list(range(1, total + 1))
    assert 'reason="ping_timeout"' not in metrics


async def test_oversized_header_lines_and_too_many_headers_are_refused(running: Running):
    port = running.server.port
    long_line = f"GET /xrpc/_health HTTP/1.1\r\nHost: x\r\nX-Big: {'a' * 9000}\r\n\r\n".encode()
    many = ("GET /xrpc/_health HTTP/1.1\r\nHost: x\r\n" + "".join(f"X-H{i}: v\r\n" for i in range(100)) + "\r\n").encode()
    for request in (long_line, many):
        (answer,) = await anyio.to_thread.run_sync(lambda r=request: raw_exchange(port, r))
        assert answer.split(b" ", 2)[1] in (b"400", b"431"), answer[:200]
    async with httpx.AsyncClient() as client:  # and the server goes on
        assert (await client.get(f"{running.http_base}/xrpc/_health")).status_code == 200
