"""subscribeLabels and the operator's `label emit` over a PostgreSQL label log other connections write to."""

from __future__ import annotations

import asyncio
import json

import anyio
import asyncpg
import pytest

from firehose_mod.store import EmitRequest
from firehose_mod.store.pg import PgLabelLog
from firehose_mod.store.pg.schema import WRITE_LOCK

from tests.conftest import Running, uri
from tests.procs import env_for, run_cli
from tests.stream_client import Received, collect, subscribe

pytestmark = pytest.mark.anyio
LABEL_LOG_BACKENDS = ("postgres",)  # tests/conftest.py


async def test_labels_from_another_connection_reach_subscribers_once(running: Running, settings):
    # Not this server's PgLabelLog, and with no follower of its own: only NOTIFY (or the poll)
    # tells the server about these commits.
    other = await PgLabelLog.open(settings.database_url, running.log.key, running.log.src)
    try:
        async with subscribe(running.ws_base, 0) as ws:
            await other.emit(uri(1), "porn")
            await running.log.emit(uri(2), "porn")
            await other.emit_many([EmitRequest(uri(i), "porn") for i in range(3, 9)])
            got = await collect(ws, Received(), count=8, timeout=10)
    finally:
        await other.close()
    assert got.seqs == list(range(1, 9))
    assert [label.uri for label in got.labels] == [uri(i) for i in range(1, 9)]



async def test_many_live_only_subscribers_each_get_every_label(running: Running):
    """test_subscribe_labels.py's fan-out test, waiting until every subscriber has read its starting
    head (state "live") rather than only been admitted: a live-only subscriber starts from the head it
    reads, and on PostgreSQL that read takes long enough for the first emit to overtake it."""
    n = 200
    results: list[Received] = []
    async with anyio.create_task_group() as tg:
        async def one():
            async with subscribe(running.ws_base) as ws:
                results.append(await collect(ws, Received(), count=3))

        for _ in range(n):
            tg.start_soon(one)
        with anyio.fail_after(20):
            subs = running.server.feed.subscribers
            while len(subs) < n or any(s.state != "live" for s in subs.values()):
                await anyio.sleep(0.01)
        for i in range(3):
            await running.log.emit(uri(i), "porn")
    assert len(results) == n and all(r.seqs == [1, 2, 3] for r in results)


def test_the_label_emit_command_writes_to_postgresql_and_a_busy_lock_is_named(tmp_path, pg_url):
    """`firehose-mod label emit` as an operator runs it, with FIREHOSE_MOD_DATABASE_URL set."""
    env = env_for(tmp_path / "var", FIREHOSE_MOD_DATABASE_URL=pg_url, FIREHOSE_MOD_DB_BUSY_WAIT="0.5")
    track = "at://did:plc:ewvi7nxzyoun6zhxrhs64oiz/fm.plyr.track/3k2yihcrp6f2c"
    first = json.loads(run_cli("label", "emit", track, "porn", env=env).stdout)
    assert first["seq"] == 1
    assert "already in force" in run_cli("label", "emit", track, "porn", env=env).stderr

    async def while_locked() -> str:
        holder = await asyncpg.connect(pg_url, server_settings={"application_name": "someone-else"})
        try:
            async with holder.transaction():
                await holder.execute("SELECT pg_advisory_xact_lock($1)", WRITE_LOCK)
                proc = await asyncio.to_thread(run_cli, "label", "emit", track + "x", "porn", env=env, check=False)
        finally:
            await holder.close()
        assert proc.returncode != 0
        return proc.stderr

    assert "someone-else" in asyncio.run(while_locked())
    assert json.loads(run_cli("label", "emit", track + "x", "porn", env=env).stdout)["seq"] == 2


def test_an_unreachable_database_is_one_line_without_the_password(tmp_path):
    from tests.procs import free_port

    url = f"postgresql://firehose:s3cret@127.0.0.1:{free_port()}/labels"  # nothing listens there
    env = env_for(tmp_path / "var", FIREHOSE_MOD_DATABASE_URL=url)
    emit = run_cli("label", "emit", "at://did:plc:ewvi7nxzyoun6zhxrhs64oiz/fm.plyr.track/3k2yihcrp6f2c", "porn",
                   env=env, check=False)
    assert emit.returncode == 2 and "cannot connect to PostgreSQL at postgresql://127.0.0.1:" in emit.stderr
    assert "s3cret" not in emit.stderr and "Traceback" not in emit.stderr
    run = run_cli("run", env=env, check=False)  # the daemon: the same one line, at once
    assert run.returncode == 2 and "cannot connect to PostgreSQL at postgresql://127.0.0.1:" in run.stderr
    assert "s3cret" not in run.stderr and "Traceback" not in run.stderr


def test_the_daemon_log_names_the_postgresql_database_without_its_password(tmp_path):
    from firehose_mod.config import load_settings
    from firehose_mod.daemon import _where

    settings = load_settings(env={}, data_dir=tmp_path, database_url="postgresql://mod:s3cret@db.internal:6432/labels")
    assert _where(settings) == "postgresql://db.internal:6432/labels"
    assert _where(load_settings(env={}, data_dir=tmp_path)) == str(tmp_path / "firehose-mod.sqlite3")
