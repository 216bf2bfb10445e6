"""The schema version of the database, for `firehose-mod db migrate`.

Every process migrates the database it opens (store/db.py applies the numbered migrations in
store/migrations.py and keeps the number in `PRAGMA user_version`), and refuses one whose
schema is newer than its code. `db migrate` does the same as a step of its own, so an upgrade
can migrate once, before the new daemons start, and a deploy script can ask whether it must.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

from firehose_mod.store.db import SchemaError, open_db, close_shielded
from firehose_mod.store.migrations import MIGRATIONS


@dataclass(frozen=True, slots=True)
class SchemaStatus:
    backend: str  # "sqlite"
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
