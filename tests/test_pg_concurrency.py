"""Several writer processes and two stream servers on one PostgreSQL label log: every subscriber
of every server gets every seq exactly once, in order, and the seqs are 1..N with no gap.

Everything is a separate OS process, as in production: four writers (PgLabelLog each, emitting
batches of 1-4 labels), two `firehose-mod serve` with FIREHOSE_MOD_DATABASE_URL; the subscribers
are real WebSocket clients in this process, some connected before the first label, one joining
during the writes (backfill then live while other processes commit).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from firehose_mod.labels import SigningKey

from tests.procs import env_for, free_port, start_server
from tests.stream_client import Received, collect, subscribe

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

SRC = "did:web:localhost"
WRITERS = 4
PER_WRITER = 250


def subject(writer: int, i: int) -> str:
    return f"at://did:plc:writer{writer}/fm.plyr.track/3k{i:08d}"


async def _emit_labels(url: str, key_file: str, writer: int, count: int) -> None:
    from firehose_mod.store import EmitRequest
    from firehose_mod.store.pg import PgLabelLog

    key, _ = SigningKey.load_or_create(Path(key_file))
    log = await PgLabelLog.open(url, key, SRC)
    try:
        i = 0
        while i < count:
            n = min(1 + i % 4, count - i)
            await log.emit_many([EmitRequest(subject(writer, j), "porn") for j in range(i, i + n)])
            i += n
    finally:
        await log.close()


def writer_main(url: str, key_file: str, writer: int, count: int) -> None:
    """A writer process's body (run with `python -c`)."""
    from firehose_mod.logs import configure_logging

    configure_logging("warning")
    anyio.run(_emit_labels, url, key_file, writer, count)


def start_writer(url: str, key_file: Path, writer: int) -> subprocess.Popen:
    code = ("from tests.test_pg_concurrency import writer_main;"
            f" writer_main({url!r}, {str(key_file)!r}, {writer}, {PER_WRITER})")
    return subprocess.Popen([sys.executable, "-c", code], cwd=Path(__file__).resolve().parent.parent,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


async def test_writer_processes_and_two_servers_deliver_every_seq_once_in_order(tmp_path, pg_url):
    total = WRITERS * PER_WRITER
    key_file = tmp_path / "signing.key"
    SigningKey.load_or_create(key_file)  # the servers and the writers sign and serve with one key
    servers, bases = [], []
    try:
        for n in range(2):
            port = free_port()
            env = env_for(tmp_path / f"server{n}", port, FIREHOSE_MOD_DATABASE_URL=pg_url,
                          FIREHOSE_MOD_KEY_FILE=str(key_file), FIREHOSE_MOD_DID=SRC)
            servers.append(await anyio.to_thread.run_sync(start_server, env, port))
            bases.append(f"ws://127.0.0.1:{port}")
        results: dict[str, Received] = {}
        writers: list[subprocess.Popen] = []

        async def subscriber(name: str, base: str, connected: anyio.Event | None = None) -> None:
            async with subscribe(base, 0) as ws:
                if connected is not None:
                    connected.set()
                results[name] = await collect(ws, Received(), count=total, timeout=120)

        async with anyio.create_task_group() as tg:
            for n, base in enumerate(bases):
                for k in range(3):
                    ready = anyio.Event()
                    tg.start_soon(subscriber, f"server{n}-early{k}", base, ready)
                    await ready.wait()
            writers = [start_writer(pg_url, key_file, w) for w in range(WRITERS)]
            await anyio.sleep(0.3)  # let the writers get going: this one joins mid-stream
            for n, base in enumerate(bases):
                tg.start_soon(subscriber, f"server{n}-late", base)
            for w in writers:
                code = await anyio.to_thread.run_sync(w.wait)
                assert code == 0, w.stderr.read().decode()[-3000:]
    finally:
        for p in servers:
            p.terminate()
        for p in servers:
            p.wait(timeout=20)
    expected = {subject(w, i) for w in range(WRITERS) for i in range(PER_WRITER)}
    assert len(results) == 8
    for name, got in results.items():
        assert got.error is None, (name, got.error)
        assert got.seqs == list(range(1, total + 1)), name
        assert {label.uri for label in got.labels} == expected, name
