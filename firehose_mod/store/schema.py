"""The schema version of the database, for `firehose-mod db migrate`.

Every process migrates the database it opens (store/db.py applies the numbered migrations in
store/migrations.py and keeps the number in `PRAGMA user_version`; on PostgreSQL
store/pg/schema.py's, numbered in the `schema_version` table), and refuses one whose
schema is newer than its code. `db migrate` does the same as a step of its own, so an upgrade
can migrate once, before the new daemons start, and a deploy script can ask whether it must.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from firehose_mod.config import Settings
from firehose_mod.store.db import SchemaError, open_db, close_shielded
from firehose_mod.store.migrations import MIGRATIONS
from firehose_mod.store.pg import schema as pg_schema
from firehose_mod.store.pg.label_log import DatabaseUnreachable, server_of


@dataclass(frozen=True, slots=True)
class SchemaStatus:
    backend: str  # "sqlite" | "postgresql"
    where: str
    version: int  # 0: no database yet
    known: int  # the newest version this code knows

    @property
    def pending(self) -> int:
        return max(0, self.known - self.version)

    def as_dict(self) -> dict:
        return {"backend": self.backend, "where": self.where, "version": self.version, "known": self.known,
                "pending": self.pending}


def sqlite_status(path: Path) -> SchemaStatus:
    """The SQLite file's schema version (read only; a missing file is version 0)."""
    version = 0
    if path.exists():
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
        try:
            (version,) = conn.execute("PRAGMA user_version").fetchone()
        finally:
            conn.close()
    status = SchemaStatus("sqlite", str(path), version, len(MIGRATIONS))
    if version > status.known:
        raise SchemaError(f"{path} has schema version {version} but this firehose-mod knows only {status.known}: "
                          "upgrade firehose-mod before migrating; never run older code on a newer database")
    return status


async def migrate_sqlite(path: Path, *, synchronous: str = "FULL") -> SchemaStatus:
    """Apply the pending migrations (one transaction; waits for other writers) and return the new status."""
    conn = await open_db(path, synchronous=synchronous)
    await close_shielded(conn)
    return sqlite_status(path)


async def schema_status(settings: Settings) -> SchemaStatus:
    """The schema version of `settings`' database: the SQLite file, or PostgreSQL's (read only)."""
    if not settings.database_url:
        return sqlite_status(settings.db_path)
    async with _pg(settings.database_url) as conn:
        exists = await conn.fetchval("SELECT to_regclass('schema_version') IS NOT NULL")
        version = (await conn.fetchval("SELECT max(version) FROM schema_version") or 0) if exists else 0
    status = SchemaStatus("postgresql", server_of(settings.database_url), version, pg_schema.SCHEMA_VERSION)
    if version > status.known:
        raise SchemaError(f"{status.where} has schema version {version} but this firehose-mod knows only"
                          f" {status.known}: upgrade firehose-mod before migrating; never run older code on a newer"
                          " database")
    return status


async def migrate_schema(settings: Settings) -> SchemaStatus:
    """Apply the pending migrations of `settings`' database (each backend waits for other
    migrating processes) and return the new status."""
    if not settings.database_url:
        return await migrate_sqlite(settings.db_path, synchronous=settings.db_synchronous)
    async with _pg(settings.database_url) as conn:
        await pg_schema.migrate(conn)
    return await schema_status(settings)


class _pg:
    """One connection to the database at `url` (DatabaseUnreachable names the server if none)."""

    def __init__(self, url: str):
        self.url = url

    async def __aenter__(self) -> asyncpg.Connection:
        try:
            self.conn = await asyncpg.connect(self.url)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise DatabaseUnreachable(self.url, exc) from exc
        return self.conn

    async def __aexit__(self, *exc) -> None:
        await self.conn.close()
