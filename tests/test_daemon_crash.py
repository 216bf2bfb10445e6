"""kill -9 of a real `firehose-mod run` mid-stream, then restart: every track once, nothing lost."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys

import anyio
import pytest

from tests.fakes.jetstream import FakeJetstream
from tests.procs import env_for, free_port
from tests.test_ingest import network

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


def jobs(db) -> list[tuple[str, str, int]]:
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            return conn.execute("SELECT uri, state, attempts FROM scan_jobs ORDER BY id").fetchall()
        finally:
            conn.close()
    except sqlite3.OperationalError:
        return []  # not created yet


def start_daemon(env) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "firehose_mod", "run"], env=env,
                            stdout=subprocess.DEVNULL, stderr=open(env["FIREHOSE_MOD_DATA_DIR"] + ".log", "ab"))


async def test_kill_9_mid_stream_then_restart_processes_every_track_once(tmp_path):
    n = 400
    events = network(n, noise_per_track=30)
    fake = FakeJetstream(events, pace=0.004)
    async with anyio.create_task_group() as tg:
        await tg.start(fake.serve)
        env = env_for(tmp_path / "var", free_port(), FIREHOSE_MOD_JETSTREAM_ENDPOINTS=fake.url,
                      FIREHOSE_MOD_JETSTREAM_COMPRESS="true", FIREHOSE_MOD_DB_SYNCHRONOUS="FULL",
                      FIREHOSE_MOD_SCANNERS="self-labels")  # ingest under test: no media to fetch
        db = tmp_path / "var" / "firehose-mod.sqlite3"
        daemon = start_daemon(env)
        try:
            with anyio.fail_after(30):
                while len(jobs(db)) < n // 4:
                    await anyio.sleep(0.01)
            daemon.send_signal(signal.SIGKILL)  # mid-stream, no chance to flush anything
            daemon.wait()
            at_kill = len(jobs(db))
            assert at_kill < n  # it really was interrupted
            daemon = start_daemon(env)
            with anyio.fail_after(60):
                while not ((rows := jobs(db)) and len(rows) >= n and all(r[1] == "done" for r in rows)):
                    await anyio.sleep(0.05)
            daemon.send_signal(signal.SIGTERM)
            assert daemon.wait(timeout=15) == 0
        finally:
            daemon.kill()
        tg.cancel_scope.cancel()
    rows = jobs(db)
    uris = [r[0] for r in rows]
    expected = [f"at://did:plc:artist{i % 7}/fm.plyr.track/3ktrack{i:05d}" for i in range(n)]
    assert uris == expected  # every track, in order, exactly once
    assert len(fake.connections) >= 2 and "cursor=" in fake.connections[-1]
