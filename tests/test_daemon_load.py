"""The daemon under operator load: status, metrics and CLI reads never break its own writes."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace

import anyio
import httpx
import pytest
from structlog.testing import capture_logs

from firehose_mod.daemon import run_daemon
from firehose_mod.server.admin import auth_header

from tests.fakes.jetstream import T0, FakeJetstream, commit, track_record
from tests.procs import env_for, run_cli

TRACKS = 600


# Operators' pollers are other processes: their CPU is not the daemon's event loop's.
POLLERS = """
import sys, threading, httpx
base, token, paths = sys.argv[1], sys.argv[2], sys.argv[3:]
def poll(path):
    with httpx.Client(timeout=10, headers={"authorization": f"Bearer {token}"}) as client:
        while True:
            r = client.get(base + path)
            if r.status_code != 200:
                print(f"{path}: {r.status_code} {r.text[:200]}", flush=True)
for path in paths:
    threading.Thread(target=poll, args=(path,), daemon=True).start()
print("polling", flush=True)
sys.stdin.read()  # until the test closes our stdin
"""


@pytest.mark.anyio
async def test_status_and_metrics_hammered_while_ingest_and_workers_write(settings):
    """Four clients polling status back to back killed the daemon in under a second (issue 22)."""
    events = [commit(T0 + i, f"did:plc:a{i % 50}", "fm.plyr.track", f"3kt{i:06d}", "create", track_record(f"t{i}"))
              for i in range(TRACKS)]
    fake = FakeJetstream(events)
    async with anyio.create_task_group() as tg:
        await tg.start(fake.serve)
        settings = replace(settings, jetstream_endpoints=(fake.url,), jetstream_compress=False,
                           scanners=("self-labels",), scan_workers=2)
        parts = await tg.start(run_daemon, settings)
        server = parts["server"]
        base = f"http://127.0.0.1:{server.port}"
        token = auth_header(settings.data_dir)["Authorization"].removeprefix("Bearer ")
        pollers = subprocess.Popen([sys.executable, "-c", POLLERS, base, token, "/admin/status", "/admin/status",
                                    "/admin/status", "/admin/status", "/metrics", "/metrics"],
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert pollers.stdout.readline().strip() == "polling"
            with anyio.fail_after(120):
                async with httpx.AsyncClient(timeout=10, headers=auth_header(settings.data_dir)) as client:
                    while True:
                        queue = (await client.get(base + "/admin/status")).json()["queue"]
                        if queue["done"] >= TRACKS:
                            break
                        await anyio.sleep(0.05)
            assert pollers.poll() is None  # still polling all along
        finally:
            pollers.stdin.close()
            pollers.kill()
            errors = pollers.stdout.read().splitlines()
        tg.cancel_scope.cancel()
    assert errors == []
    assert queue["done"] == TRACKS and queue["failed"] == 0 and queue["tracks"] == TRACKS


HOLD_LOCK = """
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
db.execute("COMMIT")
"""


def hold_write_lock(db_path, seconds: float) -> subprocess.Popen:
    """Another process holding the database's write lock for `seconds`, as a backup tool or a
    stray `sqlite3` shell would."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(db_path), str(seconds)], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


@pytest.mark.anyio
async def test_a_database_locked_by_another_process_for_longer_than_sqlite_waits_is_waited_out(settings):
    """With another process holding the write lock, `run` used to exit after about 15 s."""
    fake = FakeJetstream([commit(T0 + i, "did:plc:a", "fm.plyr.track", f"3kt{i}", "create", track_record(f"t{i}"))
                          for i in range(3)])
    async with anyio.create_task_group() as tg:
        await tg.start(fake.serve)
        settings = replace(settings, jetstream_endpoints=(fake.url,), jetstream_compress=False, scanners=("self-labels",))
        parts = await tg.start(run_daemon, settings)
        store, server = parts["store"], parts["server"]
        holder = await anyio.to_thread.run_sync(hold_write_lock, settings.db_path, 14.0)
        fake.append(*[commit(T0 + 10 + i, "did:plc:b", "fm.plyr.track", f"3ku{i}", "create", track_record(f"u{i}"))
                      for i in range(3)])
        with capture_logs() as logs:
            with anyio.fail_after(40):
                while (await store.counts())["done"] < 6:
                    await anyio.sleep(1)
        async with httpx.AsyncClient() as client:
            metrics = (await client.get(f"http://127.0.0.1:{server.port}/metrics")).text
        tg.cancel_scope.cancel()
    assert holder.wait(5) == 0
    busy = [e for e in logs if e["event"] == "db.busy"]
    assert busy and any(str(holder.pid) in h for h in busy[0]["holders"])
    retries = [line for line in metrics.splitlines() if line.startswith("firehose_mod_db_busy_retries_total")]
    assert retries and float(retries[0].split()[-1]) > 0


def test_label_emit_on_a_locked_database_says_who_holds_it(tmp_path):
    env = env_for(tmp_path / "var", FIREHOSE_MOD_DB_BUSY_WAIT="1")
    run_cli("label", "emit", "at://did:plc:ewvi7nxzyoun6zhxrhs64oiz/fm.plyr.track/3kfirst", "spam", env=env)
    holder = hold_write_lock(tmp_path / "var" / "firehose-mod.sqlite3", 20.0)
    try:
        proc = run_cli("label", "emit", "at://did:plc:ewvi7nxzyoun6zhxrhs64oiz/fm.plyr.track/3ksecond", "spam",
                       env=env, check=False)
    finally:
        holder.kill()
    assert proc.returncode == 2
    line = proc.stderr.strip().splitlines()[-1]
    assert f"locked by pid {holder.pid}" in line and "FIREHOSE_MOD_DB_BUSY_WAIT" in line
