"""SIGTERM ends the daemon promptly, whatever its subscribers do."""

from __future__ import annotations

import base64
import os
import signal
import socket
import time

import pytest

from firehose_mod.config import load_settings
from firehose_mod.daemon import open_label_log
from firehose_mod.store import EmitRequest

from tests.procs import env_for, free_port, start_server

pytestmark = pytest.mark.anyio

# systemd sends SIGKILL after TimeoutStopSec; the daemon promises to be gone well before.
STOP_BUDGET = 5.0


def never_reading_subscriber(port: int) -> socket.socket:
    """A subscribeLabels client that completes the handshake, then never reads another byte."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        f"GET /xrpc/com.atproto.label.subscribeLabels?cursor=0 HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        .encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


async def test_sigterm_stops_within_seconds_with_a_subscriber_that_never_reads(tmp_path):
    data = tmp_path / "var"
    settings = load_settings(env={}, data_dir=data)
    async with open_label_log(settings) as log:  # enough labels to fill the stuck client's buffers
        for batch in range(20):
            await log.emit_many([EmitRequest(f"at://did:plc:stop/fm.plyr.track/{batch:03d}{i:05d}", "porn")
                                 for i in range(1000)])
    port = free_port()
    proc = start_server(env_for(data, port), port)
    stuck = never_reading_subscriber(port)
    try:
        time.sleep(1.0)  # the server is now blocked writing to it
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
        took = time.monotonic() - started
    finally:
        stuck.close()
        if proc.poll() is None:
            proc.kill()
    assert code == 0
    assert took < STOP_BUDGET, f"stopped in {took:.1f} s"
