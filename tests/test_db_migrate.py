"""`firehose-mod db migrate`: the schema brought up to this version's, once, before daemons start."""

from __future__ import annotations

import json
import sqlite3

import pytest

from firehose_mod.store.db import _statements
from firehose_mod.store.migrations import MIGRATIONS
from tests.procs import env_for, run_cli

KNOWN = len(MIGRATIONS)
LEASES = next(i for i, m in enumerate(MIGRATIONS) if "lease_until" in m)  # the version before scan leases


def older_database(path, version: int) -> None:
    """A database as an older firehose-mod left it: the first `version` migrations only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(path) as db:
        for script in MIGRATIONS[:version]:
            for statement in _statements(script):
                db.execute(statement)
        db.execute(f"PRAGMA user_version = {version}")


def columns(path, table: str) -> set[str]:
    with sqlite3.connect(path) as db:
        return {row[1] for row in db.execute(f"PRAGMA table_info({table})")}


def test_migrate_brings_an_older_database_up_and_check_says_when_it_must(tmp_path):
    env = env_for(tmp_path / "var")
    db = tmp_path / "var" / "firehose-mod.sqlite3"
    older_database(db, LEASES)
    with sqlite3.connect(db) as conn:
        conn.execute("INSERT INTO scan_jobs (uri, cid, operation, source, created) VALUES ('at://x', 'c', 'create',"
                     " 'jetstream', '2026-01-01T00:00:00Z')")
    check = run_cli("db", "migrate", "--check", env=env, check=False)
    assert check.returncode == 1 and f"schema {LEASES} of {KNOWN}: {KNOWN - LEASES} migration(s) pending" in check.stdout
    assert "lease_until" not in columns(db, "scan_jobs")  # --check changed nothing
    done = json.loads(run_cli("db", "migrate", "--json", env=env).stdout)
    assert (done["from"], done["version"], done["pending"]) == (LEASES, KNOWN, 0)
    assert "lease_until" in columns(db, "scan_jobs")
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT uri, lease_until FROM scan_jobs").fetchall() == [("at://x", 0)]  # rows kept
    again = run_cli("db", "migrate", "--check", env=env)
    assert again.returncode == 0 and "current" in again.stdout


def test_migrate_refuses_a_database_newer_than_the_code(tmp_path):
    env = env_for(tmp_path / "var")
    db = tmp_path / "var" / "firehose-mod.sqlite3"
    older_database(db, KNOWN)
    with sqlite3.connect(db) as conn:
        conn.execute(f"PRAGMA user_version = {KNOWN + 3}")
    refused = run_cli("db", "migrate", env=env, check=False)
    assert refused.returncode == 2
    assert f"schema version {KNOWN + 3} but this firehose-mod knows only {KNOWN}" in refused.stderr
    assert "upgrade firehose-mod" in refused.stderr


# -- PostgreSQL ([store] database_url) ------------------------------------------------------------
async def older_pg_database(url: str, version: int) -> None:
    """A PostgreSQL database as an older firehose-mod left it: its first `version` migrations."""
    import asyncpg

    from firehose_mod.store.pg.schema import MIGRATIONS as PG_MIGRATIONS

    conn = await asyncpg.connect(url)
    try:
        await conn.execute("CREATE TABLE schema_version (version integer NOT NULL)")
        for script in PG_MIGRATIONS[:version]:
            await conn.execute(script)
        await conn.execute("INSERT INTO schema_version (version) VALUES ($1)", version)
    finally:
        await conn.close()


async def pg_tables(url: str) -> set[str]:
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        return {r[0] for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    finally:
        await conn.close()


@pytest.mark.anyio
async def test_migrate_brings_an_older_postgresql_database_up_and_refuses_a_newer_one(tmp_path, pg_url):
    from firehose_mod.store.pg.schema import SCHEMA_VERSION

    env = env_for(tmp_path / "var", FIREHOSE_MOD_DATABASE_URL=pg_url)
    await older_pg_database(pg_url, 2)  # before reports
    check = run_cli("db", "migrate", "--check", env=env, check=False)
    assert check.returncode == 1, check.stderr
    assert f"schema 2 of {SCHEMA_VERSION}: {SCHEMA_VERSION - 2} migration(s) pending" in check.stdout
    assert "reports" not in await pg_tables(pg_url)  # --check changed nothing
    done = json.loads(run_cli("db", "migrate", "--json", env=env).stdout)
    assert (done["backend"], done["from"], done["version"], done["pending"]) == ("postgresql", 2, SCHEMA_VERSION, 0)
    assert {"labels", "reports"} <= await pg_tables(pg_url)
    assert not (tmp_path / "var" / "firehose-mod.sqlite3").exists()  # nothing written to SQLite
    assert "current" in run_cli("db", "migrate", "--check", env=env).stdout

    import asyncpg

    conn = await asyncpg.connect(pg_url)
    await conn.execute("UPDATE schema_version SET version = $1", SCHEMA_VERSION + 2)
    await conn.close()
    refused = run_cli("db", "migrate", env=env, check=False)
    assert refused.returncode == 2
    assert f"schema version {SCHEMA_VERSION + 2} but this firehose-mod knows only {SCHEMA_VERSION}" in refused.stderr
