"""kill -9 of a writer and of a server mid-stream: every acknowledged label is still served."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from firehose_mod.labels import verify_label

from tests.procs import env_for, free_port, run_cli, start_server
from tests.stream_client import Received, collect, subscribe

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


async def test_kill_9_then_restart_replays_every_acknowledged_label(tmp_path):
    data = tmp_path / "var"
    port = free_port()
    env = env_for(data, port)
    did_key = run_cli("key", "create", env=env).stdout.strip()
    server = start_server(env, port)
    writer = subprocess.Popen(
        [sys.executable, "-m", "tests.helpers.emit_forever", str(data)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    acked: dict[int, str] = {}
    try:
        async with subscribe(f"ws://127.0.0.1:{port}", 0) as ws:
            live = Received()
            deadline = time.monotonic() + 30
            while len(acked) < 300 and time.monotonic() < deadline:
                _, seq, uri = writer.stdout.readline().split()
                acked[int(seq)] = uri
            writer.send_signal(signal.SIGKILL)  # mid-stream: it was emitting as fast as it could
            await collect(ws, live, count=len(acked) // 2)
            server.send_signal(signal.SIGKILL)  # and the server too, with a subscriber attached
    finally:
        writer.kill()
        server.kill()
        writer.wait()
        server.wait()
    for line in writer.stdout:  # acknowledgements still in the pipe when the writer died
        _, seq, uri = line.split()
        acked[int(seq)] = uri
    assert len(acked) >= 300

    server = start_server(env, port)
    try:
        async with subscribe(f"ws://127.0.0.1:{port}", 0) as ws:
            head = max(acked)
            replay = await collect(ws, Received(), until_seq=head)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=10)
    assert server.returncode == 0  # SIGTERM is an orderly stop
    assert replay.seqs[: len(acked)] == sorted(acked)  # no gap, nothing lost, in order
    by_seq = dict(zip(replay.seqs, replay.labels))
    for seq, uri in acked.items():
        assert by_seq[seq].uri == uri
        assert verify_label(did_key, by_seq[seq])
    assert live.seqs == replay.seqs[: len(live.seqs)]  # what the first server sent was the truth
