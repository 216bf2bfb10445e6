"""`firehose-mod db copy`: a SQLite label log onto a real throwaway PostgreSQL (tests/helpers/pg.py).

What it must keep: every label byte for byte at its own seq, label_state, the head with a raised
seq floor, the decisions; what a server on the copy sends; a resumed copy after kill -9 (inside a
batch's transaction and between batches) ending exactly like an uninterrupted one; and refusing a
PostgreSQL log that is not this source's.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import anyio
import asyncpg
import libipld
import pytest
from structlog.testing import capture_logs

from firehose_mod.config import load_settings
from firehose_mod.daemon import open_label_log, run_server
from firehose_mod.labels import SigningKey
from firehose_mod.ops.db_copy import copy_label_log, verify_copy
from firehose_mod.store import EmitRequest
from firehose_mod.store.db import DatabaseBusy
from firehose_mod.store.decisions import DecisionRow
from firehose_mod.store.label_export import SqliteLabelSource
from firehose_mod.store.pg import PgLabelLog
from firehose_mod.store.pg.copy import PgCopyTarget
from firehose_mod.store.pg.decisions import PgDecisionWriter
from tests.conftest import uri
from tests.procs import env_for, run_cli
from tests.stream_client import decode, subscribe

pytestmark = pytest.mark.anyio
SRC = "did:web:labeler.test"
CID = "bafyreifxykqhed72s26cr4i64rxvrtofeqrly3j4vjzbkvo3ckkjbxjqtq"
FLOOR = 1000  # raised between the two parts of the log
TOP_FLOOR = 5000  # raised after the last label: the next seq must be 5001


async def _fill(data_dir: Path, n: int = 40, *, batch: int = 20) -> Path:
    """A SQLite label log with labels, negations, expiring labels, decisions and raised seq floors."""
    settings = load_settings(env={}, data_dir=data_dir, did=SRC)

    async def decide(decisions, written):
        await decisions.write([DecisionRow(s.label.uri, s.label.cid, "negate" if s.label.neg else "label", s.label.val,
                                           "policy", rule="r1", scanners={"text": "1"}, evidence=[{"why": "x"}],
                                           label_seq=s.seq) for s in written])

    async with open_label_log(settings) as log:
        for start in range(0, n, batch):
            await log.emit_many([EmitRequest(uri(i), "porn", cid=CID if i % 2 else None) for i in range(start, start + batch)],
                                also=decide)
        await log.emit_many([EmitRequest(uri(i), "porn", neg=True) for i in range(6)], also=decide)
        await log.emit(uri(1), "spam", exp="2999-01-01T00:00:00.000Z")
        await log.emit(uri(2), "spam", exp="2000-01-01T00:00:00.000Z")  # already expired
        await log.raise_seq_floor(FLOOR)
        await log.emit_many([EmitRequest(uri(i), "gore", exp="2999-06-01T00:00:00.000Z") for i in range(5)], also=decide)
        await log.emit(uri(0), "porn")  # again after its negation: label_state moves past the floor
        await log.raise_seq_floor(TOP_FLOOR)
    return settings.db_path


def _sqlite_rows(path: Path) -> dict[str, list]:
    db = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
    try:
        return {
            "labels": [(s, src, u, c, v, bool(n), cts, e, bytes(sig), k, bytes(cb)) for s, src, u, c, v, n, cts, e, sig, k, cb
                       in db.execute("SELECT seq, src, uri, cid, val, neg, cts, exp, sig, key_id, cbor FROM labels"
                                     " ORDER BY seq")],
            "state": db.execute("SELECT uri, val, src, seq FROM label_state ORDER BY seq").fetchall(),
            "decisions": db.execute("SELECT * FROM decisions ORDER BY id").fetchall(),
        }
    finally:
        db.close()


async def _pg_rows(url: str) -> dict[str, list]:
    conn = await asyncpg.connect(url)
    try:
        return {
            "labels": [(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], bytes(r[8]), r[9], bytes(r[10])) for r in
                       await conn.fetch("SELECT seq, src, uri, cid, val, neg, cts, exp, sig, key_id, cbor FROM labels"
                                        " ORDER BY seq")],
            "state": [tuple(r) for r in await conn.fetch("SELECT uri, val, src, seq FROM label_state ORDER BY seq")],
            "decisions": [tuple(r) for r in await conn.fetch(
                "SELECT id, uri, cid, action, value, origin, rule, policy_version, scanners, evidence, label_seq,"
                " actor, reason, created FROM decisions ORDER BY id")],
            "head": await conn.fetchval("SELECT head FROM label_head"),
        }
    finally:
        await conn.close()


def _copy(data_dir: Path, db_path: Path, url: str, *extra: str, check: bool = True) -> subprocess.CompletedProcess:
    return run_cli("db", "copy", "--from", f"sqlite:{db_path}", "--to", url, *extra, env=env_for(data_dir),
                   timeout=120, check=check)


async def _assert_same(db_path: Path, url: str, head: int = TOP_FLOOR) -> dict[str, list]:
    ours, theirs = _sqlite_rows(db_path), await _pg_rows(url)
    assert theirs["labels"] == ours["labels"]
    assert theirs["state"] == ours["state"]
    assert theirs["decisions"] == ours["decisions"]
    assert theirs["head"] == head
    return ours


async def test_a_copy_keeps_every_label_the_state_the_floor_and_the_decisions(tmp_path, pg_url):
    data_dir = tmp_path / "var"
    db_path = await _fill(data_dir)
    proc = _copy(data_dir, db_path, pg_url, "--json")
    report = json.loads(proc.stdout)
    ours = await _assert_same(db_path, pg_url)
    seqs = [row[0] for row in ours["labels"]]
    assert any(s > FLOOR for s in seqs) and seqs[-1] < TOP_FLOOR
    assert report["copied_labels"] == len(seqs) and report["copied_decisions"] == len(ours["decisions"])
    assert report["source_head"] == TOP_FLOOR and report["resumed_from"] == 0
    v = report["verification"]
    assert v["ok"] and v["problems"] == [] and v["labels"] == len(seqs) and v["head"] == TOP_FLOOR
    assert v["sampled"] == len(seqs)  # fewer than 1,000: every signature checked
    assert "postgres@" not in proc.stdout  # the target is named without its credentials

    # The next label on PostgreSQL is the one SQLite would have written next; decisions follow on.
    key = SigningKey.load(load_settings(env={}, data_dir=data_dir).key_path)
    log = await PgLabelLog.open(pg_url, key, SRC)
    try:
        written = await log.emit_many([EmitRequest(uri(99), "porn")],
                                      also=lambda d, w: d.write([DecisionRow(uri(99), None, "label", "porn", "policy")]))
        assert written[0].seq == TOP_FLOOR + 1
        history = await PgDecisionWriter(log._writer).history(uri(99))
        assert history[0]["id"] == ours["decisions"][-1][0] + 1
    finally:
        await log.close()


async def test_a_log_with_only_a_raised_floor_copies_its_head(tmp_path, pg_url):
    data_dir = tmp_path / "var"
    settings = load_settings(env={}, data_dir=data_dir, did=SRC)
    async with open_label_log(settings) as log:
        await log.raise_seq_floor(FLOOR)
    report = json.loads(_copy(data_dir, settings.db_path, pg_url, "--json").stdout)
    assert report["copied_labels"] == 0 and report["verification"]["ok"] and report["verification"]["sampled"] == 0
    assert (await _pg_rows(pg_url))["head"] == FLOOR


async def test_labels_signed_before_a_key_rotation_verify_against_their_own_key(tmp_path, pg_url):
    data_dir = tmp_path / "var"
    db_path = await _fill(data_dir, n=20)
    settings = load_settings(env={}, data_dir=data_dir, did=SRC)
    old = SigningKey.load(settings.key_path)
    settings.key_path.unlink()
    new = SigningKey.generate()
    new.save(settings.key_path)
    async with open_label_log(settings) as log:
        await log.emit(uri(50), "rude")
    report = json.loads(_copy(data_dir, db_path, pg_url, "--json").stdout)
    assert report["verification"]["ok"] and report["verification"]["keys"] == sorted([old.did_key, new.did_key])
    await _assert_same(db_path, pg_url, head=TOP_FLOOR + 1)


async def test_a_server_on_the_copy_streams_the_same_cbor_in_the_same_order(tmp_path, pg_url):
    data_dir = tmp_path / "var"
    db_path = await _fill(data_dir)
    proc = _copy(data_dir, db_path, pg_url)
    assert "result   OK" in proc.stdout and f"the next label on PostgreSQL gets seq {TOP_FLOOR + 1}" in proc.stdout
    ours = _sqlite_rows(db_path)["labels"]
    settings = load_settings(env={}, data_dir=data_dir, did=SRC, port=0, stream_poll_interval=0.05,
                             database_url=pg_url)
    frames: list[bytes] = []
    async with open_label_log(settings) as log, anyio.create_task_group() as tg:
        server = await tg.start(run_server, settings, log)
        async with subscribe(f"ws://127.0.0.1:{server.port}", 0) as ws:
            with anyio.fail_after(20):
                while len(frames) < len(ours):
                    frame = await ws.recv()
                    if decode(frame)[0].get("t") == "#labels":
                        frames.append(frame)
        tg.cancel_scope.cancel()
    got = [(decode(f)[1]["seq"], decode(f)[1]["labels"]) for f in frames]
    assert [seq for seq, _ in got] == [row[0] for row in ours]
    for (seq, labels), row, frame in zip(got, ours, frames, strict=True):
        assert [libipld.encode_dag_cbor(d) for d in labels] == [row[10]]
        assert row[10] in frame  # the stored CBOR, byte for byte, inside the frame


_KILLER = """
import os, signal, sys
import anyio
from firehose_mod.ops.db_copy import copy_label_log, verify_copy
from firehose_mod.store.label_export import SqliteLabelSource
from firehose_mod.store.pg.copy import PgCopyTarget

path, url, table, at = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])

async def main():
    source = await SqliteLabelSource.open(path)
    target = await PgCopyTarget.open(url)
    def stop(what, last):  # inside the batch's transaction: written, not committed
        if what == table and last >= at:
            os.kill(os.getpid(), signal.SIGKILL)
    target.before_commit = stop
    await copy_label_log(source, target, source_name="s", target_name="t", batch=50)

anyio.run(main)
"""


async def _killed_copy(db_path: Path, url: str, table: str, at: int, env: dict) -> subprocess.CompletedProcess:
    """Run a copy in a process that SIGKILLs itself inside the batch of `table` reaching `at`."""
    with anyio.fail_after(120):
        return await anyio.run_process([sys.executable, "-c", _KILLER, str(db_path), url, table, str(at)], env=env,
                                       check=False)


async def test_a_copy_killed_mid_way_resumes_to_the_same_result(tmp_path, pg_url):
    data_dir = tmp_path / "var"
    db_path = await _fill(data_dir, n=600, batch=200)
    env = env_for(data_dir)
    for table, at in (("labels", 300), ("decisions", 250)):
        killed = await _killed_copy(db_path, pg_url, table, at, env)
        assert killed.returncode == -signal.SIGKILL, killed.stderr
    partial = await _pg_rows(pg_url)
    ours = _sqlite_rows(db_path)
    assert partial["labels"] == ours["labels"]  # the labels were done before the decisions were killed
    assert 0 < len(partial["decisions"]) < len(ours["decisions"]) and len(partial["decisions"]) % 50 == 0

    proc = _copy(data_dir, db_path, pg_url, "--json")
    report = json.loads(proc.stdout)
    assert report["resumed_from"] == ours["labels"][-1][0] and report["copied_labels"] == 0
    assert report["copied_decisions"] == len(ours["decisions"]) - len(partial["decisions"])
    assert report["verification"]["ok"]
    await _assert_same(db_path, pg_url)


async def test_a_copy_killed_inside_a_batch_resumes_from_the_last_committed_seq(tmp_path, pg_url):
    data_dir = tmp_path / "var"
    db_path = await _fill(data_dir, n=400, batch=200)
    killed = await _killed_copy(db_path, pg_url, "labels", 200, env_for(data_dir))
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    partial = await _pg_rows(pg_url)
    ours = _sqlite_rows(db_path)
    assert partial["labels"] == ours["labels"][: len(partial["labels"])] and len(partial["labels"]) == 150
    assert partial["head"] == partial["labels"][-1][0] and partial["decisions"] == []

    report = json.loads(_copy(data_dir, db_path, pg_url, "--json").stdout)
    assert report["resumed_from"] == 150 and report["copied_labels"] == len(ours["labels"]) - 150
    assert report["verification"]["ok"]
    await _assert_same(db_path, pg_url)
    again = json.loads(_copy(data_dir, db_path, pg_url, "--json").stdout)  # a finished copy: nothing to do
    assert again["copied_labels"] == again["copied_decisions"] == 0 and again["verification"]["ok"]


async def test_what_a_running_daemon_writes_after_the_snapshot_is_left_for_the_next_run(tmp_path, pg_url):
    data_dir = tmp_path / "var"
    db_path = await _fill(data_dir, n=20)
    source = await SqliteLabelSource.open(db_path)  # the snapshot: head TOP_FLOOR
    try:
        async with open_label_log(load_settings(env={}, data_dir=data_dir, did=SRC)) as daemon:
            await daemon.emit_many([EmitRequest(uri(i), "rude") for i in range(5)])  # after the snapshot
        target = await PgCopyTarget.open(pg_url)
        try:
            with capture_logs() as logs:
                report = await copy_label_log(source, target, source_name="s", target_name="t")
        finally:
            await target.close()
    finally:
        await source.close()
    assert report.source_head == TOP_FLOOR and report.verification.ok
    moved = [e for e in logs if e["event"] == "db_copy.source_moved_on"]
    assert moved == [{"event": "db_copy.source_moved_on", "log_level": "warning", "snapshot_head": TOP_FLOOR,
                      "head_now": TOP_FLOOR + 5}]
    assert report.left_behind == 5 and report.source_head_now == TOP_FLOOR + 5
    assert (await _pg_rows(pg_url))["head"] == TOP_FLOOR

    again = json.loads(_copy(data_dir, db_path, pg_url, "--json").stdout)  # the daemon stopped: the rest
    assert again["copied_labels"] == 5 and again["left_behind"] == 0 and again["verification"]["ok"]
    await _assert_same(db_path, pg_url, head=TOP_FLOOR + 5)


async def test_the_verification_finds_a_changed_label_and_a_lost_state_row(tmp_path, pg_url):
    data_dir = tmp_path / "var"
    db_path = await _fill(data_dir, n=20)
    _copy(data_dir, db_path, pg_url)
    conn = await asyncpg.connect(pg_url)  # what a broken copy could have left (the superuser lifts the guard)
    try:
        await conn.execute("ALTER TABLE labels DISABLE TRIGGER labels_append_only")
        await conn.execute("UPDATE labels SET cts = '2001-01-01T00:00:00.000Z' WHERE seq = 3")
        await conn.execute("DELETE FROM label_state WHERE seq = 1001")
    finally:
        await conn.close()
    source = await SqliteLabelSource.open(db_path)
    target = await PgCopyTarget.open(pg_url)
    try:
        v = await verify_copy(source, target)
    finally:
        await target.close()
        await source.close()
    assert not v.ok
    assert any(p.startswith("labels 0..9999 differ") for p in v.problems)
    assert any(p.startswith("label_state seqs 0..9999 differ") for p in v.problems)
    assert any("differ from their CBOR (seqs 3)" in p for p in v.problems)
    assert not any("decision" in p for p in v.problems)


async def test_writers_wait_for_the_copy_and_an_operator_command_names_it(tmp_path, pg_url):
    target = await PgCopyTarget.open(pg_url)
    try:
        await target.hold_write_lock()  # as copy_label_log does for the whole copy
        log = await PgLabelLog.open(pg_url, SigningKey.generate(), SRC, busy_wait=0.2)
        try:
            with pytest.raises(DatabaseBusy, match="firehose-mod db copy"):
                await log.emit(uri(1), "porn")
            await target.release_write_lock()
            assert (await log.emit(uri(1), "porn")).seq == 1
        finally:
            await log.close()
    finally:
        await target.close()


async def test_a_postgresql_log_with_other_labels_is_refused(tmp_path, pg_url):
    data_dir = tmp_path / "var"
    db_path = await _fill(data_dir)
    other = await PgLabelLog.open(pg_url, SigningKey.generate(), SRC)
    try:
        await other.emit_many([EmitRequest(uri(i), "porn") for i in range(3)])
    finally:
        await other.close()
    before = await _pg_rows(pg_url)
    proc = _copy(data_dir, db_path, pg_url, check=False)
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()[-1:]
    assert "not this source's (at seq 1 the source has another label)" in line and "empty database" in line
    assert await _pg_rows(pg_url) == before  # nothing written


async def test_a_postgresql_log_ahead_of_the_source_is_refused(tmp_path, pg_url):
    data_dir = tmp_path / "var"
    db_path = await _fill(data_dir, n=20)
    _copy(data_dir, db_path, pg_url)
    conn = await asyncpg.connect(pg_url)
    try:
        await conn.execute("UPDATE label_head SET head = $1", TOP_FLOOR + 10)
    finally:
        await conn.close()
    proc = _copy(data_dir, db_path, pg_url, check=False)
    assert proc.returncode == 2 and "ahead of this source" in proc.stderr


async def test_errors_are_one_line_with_the_fix(tmp_path, pg_url):
    data_dir = tmp_path / "var"
    db_path = await _fill(data_dir, n=20)
    cases = [
        (("--from", f"sqlite:{tmp_path / 'none.sqlite3'}", "--to", pg_url), "no SQLite database at"),
        (("--from", f"sqlite:{db_path}", "--to", "postgresql://fm:secret@127.0.0.1:1/x"),
         "cannot connect to PostgreSQL at postgresql://127.0.0.1:1/x"),
        (("--from", str(db_path), "--to", pg_url), "give the SQLite database as sqlite:PATH"),
    ]
    for args, expected in cases:
        proc = run_cli("db", "copy", *args, env=env_for(data_dir), check=False)
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0] and "secret" not in lines[0], proc.stderr


def test_the_help_says_to_stop_the_daemon_and_how_resume_works(tmp_path):
    out = run_cli("db", "copy", "--help", env=env_for(tmp_path)).stdout
    assert "Stop the daemon" in out and "run the same command again" in out and "sqlite:PATH" in out
