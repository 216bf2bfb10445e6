"""`firehose-mod db copy`, the rest of a deployment (ops/db_copy_tables.py): every table other than
the label log, onto a real throwaway PostgreSQL (tests/helpers/pg.py).

The SQLite deployment is built through the real code paths: the label log, the review desk (items,
moderation events, a batch, operators), the ingest store's commit (cursor, tracks, scan jobs, repo
events, dead letters), the operator store's sessions and revocations, nonces and reports. What it
must do: PostgreSQL's rows equal the source's (booleans from 0/1), the next id on PostgreSQL does
not collide, a PgIngestStore on the copy resumes from the same cursor, a second run takes what
the daemon changed since (a cursor that moved, a finished job, a revocation, a pruned nonce), a
killed copy resumes, a foreign database is refused with nothing written, tables PostgreSQL lacks
are named, and rows PostgreSQL cannot take are reported, not silently lost.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import sys
from pathlib import Path

import anyio
import asyncpg
import numpy as np
import pytest

from firehose_mod.config import load_settings
from firehose_mod.daemon import open_label_log
from firehose_mod.events import DeadLetter, RepoEvent, TrackEvent
from firehose_mod.review.actors import hash_token, new_token
from firehose_mod.store import EmitRequest
from firehose_mod.store.db import open_db, transaction
from firehose_mod.store.ingest import IngestStore
from firehose_mod.store.catalogue import CatalogueStore
from firehose_mod.store.nonces import NonceStore
from firehose_mod.store.operators import OperatorStore
from firehose_mod.store.pg.ingest import PgIngestStore
from firehose_mod.store.pg.operators import PgOperatorStore
from firehose_mod.store.pg.schema import migrate
from firehose_mod.store.reports import ReportWriter
from tests.conftest import uri
from tests.helpers.review import open_desk
from tests.procs import env_for, run_cli

pytestmark = pytest.mark.anyio
SRC = "did:web:labeler.test"
DID = "did:plc:artist"
SOURCE = "jetstream"
CORE = ("source_cursors", "tracks", "scan_jobs", "operators", "reports")
# Compared row for row: every table the deployment writes that PostgreSQL has.
TABLES = {
    "source_cursors": "source", "tracks": "uri", "scan_jobs": "id", "dead_letters": "id", "repo_events": "id",
    "operators": "id", "desk_sessions": "id_hash", "service_auth_nonces": "iss, jti", "reports": "id",
    "review_items": "id", "moderation_event": "id", "review_batches": "id", "review_attention": "item_id",
    "catalogue_refs": "id", "catalogue_hashes": "ref_id",
}
PG_ORDER = {"source_cursors": 'source COLLATE "C"', "review_batches": 'id COLLATE "C"',
            "service_auth_nonces": 'iss COLLATE "C", jti COLLATE "C"'}  # SQLite's byte order


def track(n: int, cursor: int) -> TrackEvent:
    return TrackEvent(DID, "fm.plyr.track", f"3ktrack{n:05d}", "create", f"bafy{n}",
                      {"$type": "fm.plyr.track", "title": f"Track {n}"}, cursor, f"3k{n:04d}", SOURCE)


async def _report(path: Path, n: int, *, item_id: int | None = None) -> int:
    db = await open_db(path)
    try:
        async with transaction(db):
            return await ReportWriter(db).add(
                reporter=f"did:plc:reporter{n}", via_service=None, reason_type="com.atproto.moderation.defs#reasonOther",
                reason=f"report {n}", subject={"uri": uri(n), "cid": "bafyx"}, subject_uri=uri(n), subject_cid="bafyx",
                subject_did=DID, appeal=n % 2 == 1, value="porn", item_id=item_id, counter_notice=None,
                mod_tool={"name": "test"} if n % 2 else None, created=f"2026-01-0{1 + n % 9}T00:00:00.000Z")
    finally:
        await db.close()


async def _deployment(data_dir: Path, *, tracks: int = 30) -> Path:
    """A SQLite deployment with rows in every core table, written by the daemon's own stores."""
    settings = load_settings(env={}, data_dir=data_dir, did=SRC)
    async with open_label_log(settings) as log:
        await log.emit_many([EmitRequest(uri(i), "porn") for i in range(5)])
        async with open_desk(settings, log) as d:  # operators alice, mo and bot
            confirmed = await d.scan_opens(uri(1))
            waiting = await d.scan_opens(uri(2))
            await d.desk.confirm(d.moderator, [confirmed], reason="clear match")
            await d.desk.comment(d.moderator, [waiting], reason="listen again tomorrow")
            await d.desk.create_batch(d.admin, [waiting])
            await d.desk.show(d.moderator, waiting)  # a seen mark
    path = settings.db_path
    ingest = await IngestStore.open(path)
    try:
        await ingest.commit(SOURCE, tracks, [track(n, n) for n in range(1, tracks + 1)],
                            [DeadLetter("undecodable", "bad CBOR", cursor=3, did=DID, raw=b"\x00\xff", source=SOURCE)])
        await ingest.commit(SOURCE, tracks + 1, [RepoEvent(DID, "account", tracks + 1, active=False, status="takendown",
                                                           source=SOURCE)])
        await ingest.set_cursors({"backfill": 7})
        jobs = await ingest.claim(2, worker="w1")
        await ingest.finish(jobs[0].id)
    finally:
        await ingest.close()
    operators = await OperatorStore.open(path)
    try:
        await operators.open_session(hash_token(new_token()), "alice", "csrf1", "2999-01-01T00:00:00.000Z")
    finally:
        await operators.close()
    nonces = await NonceStore.open(path)
    try:
        await nonces.remember("did:plc:svc", "jti-old", 100, now=50)
        await nonces.remember("did:plc:svc", "jti-new", 4_000_000_000)
    finally:
        await nonces.close()
    for n in range(3):
        await _report(path, n, item_id=1 if n == 0 else None)
    catalogue = await CatalogueStore.open(path)
    try:  # a reference with its fingerprint blob, and one removed (its row kept, its hashes gone)
        await catalogue.add_reference("ref:song", bytes(range(256)) * 4, fp_version="v2", entry_count=64,
                                      title="Song", chromaprint=np.array([1, 2, 3], "<u4"))
        await catalogue.add_reference("ref:gone", b"\x01" * 16, fp_version="v2", entry_count=1)
        await catalogue.remove("ref:gone")
    finally:
        await catalogue.close()
    return path


def _sqlite(path: Path, sql: str) -> list[tuple]:
    db = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
    try:
        return [tuple(r) for r in db.execute(sql)]
    finally:
        db.close()


def _columns(path: Path, table: str) -> list[str]:
    return [r[1] for r in _sqlite(path, f"PRAGMA table_info({table})")]


async def _pg(url: str, sql: str, *args) -> list[tuple]:
    conn = await asyncpg.connect(url)
    try:
        return [tuple(r) for r in await conn.fetch(sql, *args)]
    finally:
        await conn.close()


def _norm(row: tuple) -> tuple:
    return tuple(bytes(v) if isinstance(v, memoryview) else v for v in row)


async def _assert_tables_equal(path: Path, url: str) -> dict[str, list]:
    """Every compared table: the same rows, column for column (True == 1: booleans from 0/1)."""
    seen = {}
    for table, key in TABLES.items():
        cols = ", ".join(_columns(path, table))
        pg_key = PG_ORDER.get(table, key)
        ours = [_norm(r) for r in _sqlite(path, f"SELECT {cols} FROM {table} ORDER BY {key}")]
        theirs = [_norm(r) for r in await _pg(url, f"SELECT {cols} FROM {table} ORDER BY {pg_key}")]
        assert theirs == ours, table
        seen[table] = ours
    return seen


def _copy(data_dir: Path, db_path: Path, url: str, *extra: str, check: bool = True):
    return run_cli("db", "copy", "--from", f"sqlite:{db_path}", "--to", url, *extra, env=env_for(data_dir),
                   timeout=120, check=check)


def _entries(report: dict) -> dict[str, dict]:
    return {t["table"]: t for t in report["tables"]}


async def test_a_whole_deployment_moves_and_the_daemon_goes_on_where_it_stopped(tmp_path, pg_url):
    data_dir = tmp_path / "var"
    path = await _deployment(data_dir)
    report = json.loads(_copy(data_dir, path, pg_url, "--json").stdout)
    assert report["verification"]["ok"], report["verification"]["problems"]
    rows = await _assert_tables_equal(path, pg_url)
    for table in TABLES:
        assert rows[table], f"the deployment wrote no {table} rows: the test proves nothing for it"
    entries = _entries(report)
    for table in CORE:
        assert entries[table]["status"] == "copied" and entries[table]["verified"] is True, entries[table]
        assert entries[table]["inserted"] == entries[table]["source_rows"] == entries[table]["target_rows"] > 0
    assert entries["reports"]["append_only"] and entries["moderation_event"]["append_only"]
    assert report["verification"]["tables"] >= len(TABLES)
    assert not report["not_on_postgresql"]  # every table of the SQLite file has its PostgreSQL twin
    booleans = await _pg(pg_url, "SELECT appeal FROM reports ORDER BY id")
    assert [b for (b,) in booleans] == [False, True, False]  # booleans, from SQLite's 0/1

    text = _copy(data_dir, path, pg_url).stdout  # a second run: the human report, nothing left to do
    assert "result   OK" in text
    assert "  scan_jobs" in text and "unchanged" in text

    # Ingest on PostgreSQL resumes from the same cursor; the next ids follow SQLite's.
    ingest = await PgIngestStore.open(pg_url)
    try:
        assert await ingest.cursor(SOURCE) == 31 and await ingest.cursor("backfill") == 7
        max_job = max(r[0] for r in rows["scan_jobs"])
        assert entries["scan_jobs"]["next_ids"] == {"id": max_job + 1}
        await ingest.commit(SOURCE, 40, [track(40, 40)])
        (new_job,) = await _pg(pg_url, "SELECT id FROM scan_jobs WHERE uri LIKE '%3ktrack00040'")
        assert new_job == (max_job + 1,)
        assert await ingest.cursor(SOURCE) == 40
    finally:
        await ingest.close()
    operators = await PgOperatorStore.open(pg_url)
    try:
        row = await operators.add("zed", "moderator", hash_token(new_token()), "alice")
        assert row.id == max(r[0] for r in rows["operators"]) + 1
    finally:
        await operators.close()

    # Once PostgreSQL's own processes wrote there, copying over it again is refused.
    proc = _copy(data_dir, path, pg_url, check=False)
    assert proc.returncode == 2 and "scan_jobs holds 1 row(s) with ids the source never gave out" in proc.stderr


async def test_a_second_run_takes_what_the_daemon_changed_since(tmp_path, pg_url):
    data_dir = tmp_path / "var"
    path = await _deployment(data_dir)
    _copy(data_dir, path, pg_url)
    # The daemon kept running: the cursor moved on, new jobs, a job done, an operator revoked,
    # a nonce pruned, a report received; then it stopped and the copy ran again.
    ingest = await IngestStore.open(path)
    try:
        await ingest.commit(SOURCE, 99, [track(n, n) for n in range(90, 95)])
        (job,) = await ingest.claim(1, worker="w2")
        await ingest.finish(job.id)
    finally:
        await ingest.close()
    operators = await OperatorStore.open(path)
    try:
        assert await operators.revoke("bot", "alice")
    finally:
        await operators.close()
    nonces = await NonceStore.open(path)
    try:
        assert await nonces.prune(now=1000) == 1
    finally:
        await nonces.close()
    await _report(path, 7)

    report = json.loads(_copy(data_dir, path, pg_url, "--json").stdout)
    assert report["verification"]["ok"], report["verification"]["problems"]
    entries = _entries(report)
    assert entries["source_cursors"]["updated"] == 1 and entries["tracks"]["inserted"] == 5
    assert entries["scan_jobs"]["inserted"] == 5 and entries["scan_jobs"]["updated"] >= 1
    assert entries["operators"]["updated"] == 1 and entries["service_auth_nonces"]["deleted"] == 1
    assert entries["reports"]["inserted"] == 1 and entries["reports"]["updated"] == 0
    await _assert_tables_equal(path, pg_url)
    ingest = await PgIngestStore.open(pg_url)
    try:
        assert await ingest.cursor(SOURCE) == 99
    finally:
        await ingest.close()


_KILLER = """
import os, signal, sys
import anyio
from firehose_mod.ops.db_copy import copy_label_log
from firehose_mod.store.label_export import SqliteLabelSource
from firehose_mod.store.pg.copy import PgCopyTarget

path, url, table, at = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])

async def main():
    source = await SqliteLabelSource.open(path)
    target = await PgCopyTarget.open(url)
    def stop(what, done):  # inside the batch's transaction: written, not committed
        if what == table and done >= at:
            os.kill(os.getpid(), signal.SIGKILL)
    target.before_commit = stop
    await copy_label_log(source, target, source_name="s", target_name="t", batch=50)

anyio.run(main)
"""


async def test_a_copy_killed_in_the_tables_resumes_to_the_same_result(tmp_path, pg_url):
    data_dir = tmp_path / "var"
    path = await _deployment(data_dir, tracks=180)
    for table, at in (("scan_jobs", 100), ("tracks", 100)):  # an integer key, then a text key
        with anyio.fail_after(120):
            killed = await anyio.run_process([sys.executable, "-c", _KILLER, str(path), pg_url, table, str(at)],
                                             env=env_for(data_dir), check=False)
        assert killed.returncode == -signal.SIGKILL, killed.stderr
    (jobs,) = await _pg(pg_url, "SELECT count(*) FROM scan_jobs")
    (tracks,) = await _pg(pg_url, "SELECT count(*) FROM tracks")
    assert jobs == (180,) and tracks == (50,)  # scan_jobs finished by the second run; tracks stopped at a batch

    report = json.loads(_copy(data_dir, path, pg_url, "--json").stdout)
    assert report["verification"]["ok"], report["verification"]["problems"]
    entries = _entries(report)
    assert entries["tracks"]["inserted"] == 130 and entries["scan_jobs"]["status"] == "unchanged"
    await _assert_tables_equal(path, pg_url)


async def test_a_foreign_database_is_refused_before_anything_is_written(tmp_path, pg_url):
    data_dir = tmp_path / "var"
    path = await _deployment(data_dir)
    conn = await asyncpg.connect(pg_url)  # another deployment's PostgreSQL: its own operator and cursor
    try:
        await migrate(conn)
    finally:
        await conn.close()
    operators = await PgOperatorStore.open(pg_url)
    try:
        await operators.add("eve", "admin", hash_token(new_token()), "bootstrap")
    finally:
        await operators.close()
    ingest = await PgIngestStore.open(pg_url)
    try:
        await ingest.set_cursors({"elsewhere": 5})
    finally:
        await ingest.close()
    proc = _copy(data_dir, path, pg_url, check=False)
    assert proc.returncode == 2
    line = proc.stderr.strip().splitlines()[-1]
    assert "not this source's" in line and "source_cursors holds 1 row(s) the source does not have" in line
    assert "operators holds 1 row(s) whose created, name, role, token_hash differ" in line and "empty database" in line
    assert await _pg(pg_url, "SELECT count(*) FROM labels") == [(0,)]
    assert await _pg(pg_url, "SELECT count(*) FROM tracks") == [(0,)]
    assert await _pg(pg_url, "SELECT name FROM operators") == [("eve",)]


async def test_rows_postgresql_cannot_take_are_reported_not_lost_silently(tmp_path, pg_url):
    data_dir = tmp_path / "var"
    path = await _deployment(data_dir)
    db = sqlite3.connect(path)  # what an old or hand-edited SQLite file can hold (no foreign keys enforced)
    try:  # a dead letter kept before fingerprints existed (SQLite migration 8); a seen mark of no item
        db.execute("INSERT INTO dead_letters (source, reason, detail, created) VALUES ('jetstream', 'old', 'x', 'now')")
        db.execute("INSERT INTO review_attention (item_id, seen, seen_by) VALUES (999, 'now', 'mo')")
        db.commit()
    finally:
        db.close()
    proc = _copy(data_dir, path, pg_url, "--json", check=False)
    assert proc.returncode == 1
    report = json.loads(proc.stdout)
    entry = _entries(report)["dead_letters"]  # moved as it is (PG migration 7: fingerprint optional)
    assert entry["unfit"] == 0 and entry["inserted"] == 2 and entry["verified"] is True
    attention = _entries(report)["review_attention"]
    assert attention["refused"] == 1 and attention["inserted"] == 1 and attention["verified"] is False
    assert any(p.startswith("review_attention: PostgreSQL refused 1 row(s)") and "999: ForeignKeyViolationError" in p
               for p in report["verification"]["problems"])
    assert _entries(report)["scan_jobs"]["verified"] is True
    assert await _pg(pg_url, "SELECT item_id FROM review_attention") == [(2,)]


def test_values_take_the_postgresql_column_types():
    from firehose_mod.ops.db_copy_tables import Unfit, _convert
    from firehose_mod.store.label_export import shadow_tables

    assert _convert("bool", 0) is False and _convert("bool", 1) is True and _convert("bool", None) is None
    assert _convert("int8", 7.0) == 7 and _convert("int4", "12") == 12 and _convert("float8", 3) == 3.0
    assert _convert("bytea", memoryview(b"ab")) == b"ab" and _convert("bytea", "é") == "é".encode()
    assert _convert("text", b"abc") == "abc" and _convert("text", 5) == "5"
    assert _convert("jsonb", '{"a": 1}') == '{"a": 1}'
    for typ, value in (("bool", 2), ("int4", 2**31), ("int8", 1.5), ("jsonb", "{nope"), ("text", b"\xff\xfe"),
                       ("text", "a\x00b"), ("bytea", 3)):
        with pytest.raises(Unfit):
            _convert(typ, value)
    tables = {"labels": "CREATE TABLE labels (...)", "sqlite_sequence": "CREATE TABLE sqlite_sequence(name,seq)",
              "notes_fts": "CREATE VIRTUAL TABLE notes_fts USING fts5(body)", "notes_fts_data": "CREATE TABLE ...",
              "notes_fts_idx": "CREATE TABLE ...", "notes_fts_extra": "CREATE TABLE notes_fts_extra (x)"}
    assert shadow_tables(tables) == {"sqlite_sequence", "notes_fts", "notes_fts_data", "notes_fts_idx"}



async def test_both_sides_are_read_page_by_page_in_the_same_key_order(tmp_path, pg_url, monkeypatch):
    from firehose_mod.ops import db_copy_tables
    from firehose_mod.ops.db_copy import copy_label_log
    from firehose_mod.store.label_export import SqliteLabelSource
    from firehose_mod.store.pg.copy import PgCopyTarget

    data_dir = tmp_path / "var"
    path = await _deployment(data_dir, tracks=40)
    nonces = await NonceStore.open(path)
    try:  # a composite text key whose byte order differs from a locale's: upper case, accents, digits
        for i, iss in enumerate(["did:plc:Zed", "did:plc:abc", "did:plc:ábc", "did:plc:a_b", "did:plc:A1"]):
            for jti in ("b", "B", "a2", "a10", "é"):
                await nonces.remember(iss, f"{jti}-{i}", 4_000_000_000)
    finally:
        await nonces.close()
    monkeypatch.setattr(db_copy_tables, "PAGE", 7)

    async def copy():
        source = await SqliteLabelSource.open(path)
        target = await PgCopyTarget.open(pg_url)
        try:
            return await copy_label_log(source, target, source_name="s", target_name="t", batch=10)
        finally:
            await target.close()
            await source.close()

    first = await copy()
    assert first.verification.ok, first.verification.problems
    entries = {t["table"]: t for t in first.tables}
    assert entries["service_auth_nonces"]["inserted"] == 27 and entries["tracks"]["batches"] == 4
    await _assert_tables_equal(path, pg_url)
    again = await copy()
    assert again.verification.ok and again.copied_rows == 0
    assert all(t["status"] in ("unchanged", "not on PostgreSQL") for t in again.tables)

    # Holes in the middle (a copy that lost rows): the rows written while the merge still reads
    # PostgreSQL page by page are not mistaken for rows only PostgreSQL has.
    conn = await asyncpg.connect(pg_url)
    try:
        await conn.execute("DELETE FROM tracks WHERE uri > $1 AND uri < $2", track(9, 0).uri, track(31, 0).uri)
        await conn.execute("DELETE FROM scan_jobs WHERE id BETWEEN 5 AND 25")
    finally:
        await conn.close()
    healed = await copy()
    assert healed.verification.ok, healed.verification.problems
    entries = {t["table"]: t for t in healed.tables}
    assert (entries["tracks"]["inserted"], entries["tracks"]["deleted"]) == (21, 0)
    assert (entries["scan_jobs"]["inserted"], entries["scan_jobs"]["deleted"]) == (21, 0)
    await _assert_tables_equal(path, pg_url)


def test_the_help_says_what_is_moved(tmp_path):
    out = " ".join(run_cli("db", "copy", "--help", env=env_for(tmp_path)).stdout.split())
    for what in ("source cursors (ingest resumes where it stopped)", "tracks, the scan queue", "operators",
                 "reports, the review desk", "not on PostgreSQL", "append-only tables only ever get inserts"):
        assert what in out, what


async def test_an_ingest_process_running_on_the_target_stops_the_copy(tmp_path, pg_url):
    from firehose_mod.store.pg.schema import SOURCE_LOCK

    data_dir = tmp_path / "var"
    path = await _deployment(data_dir, tracks=3)
    ingest = await asyncpg.connect(pg_url, server_settings={"application_name": "firehose-mod ingest"})
    try:
        assert await ingest.fetchval("SELECT pg_try_advisory_lock($1)", SOURCE_LOCK)
        proc = _copy(data_dir, path, pg_url, check=False)
        assert proc.returncode == 2
        assert "an ingest process already runs on this PostgreSQL database (firehose-mod ingest (pid" in proc.stderr
        assert await _pg(pg_url, "SELECT count(*) FROM labels") == [(0,)]
    finally:
        await ingest.close()
    report = json.loads(_copy(data_dir, path, pg_url, "--json").stdout)  # stopped: the copy goes through
    assert report["verification"]["ok"]


# One row or two in every other table, as their stores write them (raw SQL: these stores' own
# tests build them; here only the copy's conversions matter: booleans, int4s, floats, blobs).
OTHER_ROWS = [
    "INSERT INTO backfill_repos VALUES ('did:plc:b', 'https://pds', 'done', 'c1', 12, NULL, 1, '2026')",
    "INSERT INTO rescans VALUES ('k1', 'at://x', 10, 2, 1, '2026', '2026')",
    "INSERT INTO rescans VALUES ('k0', '', 0, 0, 0, '2026', '2026')",
    ("INSERT INTO label_imports (source, did, mode, cursor, state, pages, rows, positions, high_seq, started, updated)"
     " VALUES ('https://other', '', 'stream', '77', 'fetched', 2, 3, 3, 77, '2026', '2026')"),
    ("INSERT INTO label_import_rows VALUES (1, x'0102', 5, 0, 'did:web:o', 'at://y', NULL, 'porn', 1, '2026', NULL, 1,"
     " x'aa', '2026.000000', 1, 'written', 3)"),
    ("INSERT INTO label_import_rows VALUES (1, x'0103', 6, 1, 'did:web:o', 'at://y', 'bafy', 'porn', 0, '2026', '2999',"
     " NULL, NULL, '2026.000001', NULL, NULL, NULL)"),
    ("INSERT INTO plyr_events (subject_uri, subject_track_id, action, actor, reason, notes, created_at, label_seq)"
     " VALUES ('at://t', 42, 'label_applied', 'firehose-mod', NULL, NULL, '2026', 3)"),
    "INSERT INTO plyr_state VALUES ('mirror_floor', 2)",
    "INSERT INTO plyr_sensitive_images (image_id, url, reason, flagged_by, flagged_at) VALUES ('img1', NULL, 'nsfw', 'mo', '2026')",
    ("INSERT INTO plyr_reports (reporter_did, target_type, target_id, reason, report_id, item_id, created_at)"
     " VALUES ('did:plc:r', 'track', '42', 'spam', 1, 1, '2026')"),
    ("INSERT INTO transparency_posts (after_event, last_event, period_start, period_end, summary, text, rkey, created,"
     " attempts, uri, cid, posted) VALUES (0, 3, '2026', '2026', '{}', 'summary', '3kabc', '2026', 1, 'at://p', 'bafyp', '2026')"),
    ("INSERT INTO triage_calls (item_id, agent, provider, model, outcome, verdict, attempts, input_tokens, output_tokens,"
     " cost_usd, seconds, created) VALUES (2, 'bot', 'anthropic', 'm', 'proposed', 'allow', 1, 1200, 80, 0.0125, 1.5, '2026')"),
]
OTHER_KEYS = {"backfill_repos": "did", "rescans": "key", "label_imports": "id", "label_import_rows": "import_id, ident",
              "plyr_events": "id", "plyr_state": "key", "plyr_sensitive_images": "id", "plyr_reports": "id",
              "transparency_posts": "id", "triage_calls": "id"}


async def test_every_other_table_moves_with_its_types(tmp_path, pg_url):
    data_dir = tmp_path / "var"
    path = await _deployment(data_dir, tracks=3)
    db = sqlite3.connect(path)
    try:
        for sql in OTHER_ROWS:
            db.execute(sql)
        db.commit()
    finally:
        db.close()
    report = json.loads(_copy(data_dir, path, pg_url, "--json").stdout)
    assert report["verification"]["ok"], report["verification"]["problems"]
    entries = _entries(report)
    for table, key in OTHER_KEYS.items():
        cols = ", ".join(_columns(path, table))
        pg_key = ", ".join(f'{k} COLLATE "C"' if k in ("did", "key") else k for k in key.split(", "))
        ours = [_norm(r) for r in _sqlite(path, f"SELECT {cols} FROM {table} ORDER BY {key}")]
        theirs = [_norm(r) for r in await _pg(pg_url, f"SELECT {cols} FROM {table} ORDER BY {pg_key}")]
        assert ours and theirs == ours, table
        assert entries[table]["inserted"] == len(ours) and entries[table]["verified"], entries[table]
    (neg, verified), (neg2, verified2) = await _pg(pg_url, "SELECT neg, verified FROM label_import_rows ORDER BY ident")
    assert (neg, verified, neg2, verified2) == (True, True, False, None)
    assert await _pg(pg_url, "SELECT finished FROM rescans ORDER BY key COLLATE \"C\"") == [(False,), (True,)]
    assert await _pg(pg_url, "SELECT cost_usd FROM triage_calls") == [(0.0125,)]
    assert entries["label_imports"]["next_ids"] == {"id": 2} and entries["plyr_events"]["append_only"]
