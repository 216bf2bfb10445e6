"""Opening the SQLite database: pragmas and versioned migrations.

The schema version lives in `PRAGMA user_version`. A database newer than this code, or one
whose label log fails its integrity checks, is corrupt internal state: a loud error, never a
silent repair.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiosqlite
import anyio

MIGRATIONS: list[str] = [
    # 1: the label log, append-only; seq is the subscribeLabels cursor.
    """
    CREATE TABLE labels (
        seq     INTEGER PRIMARY KEY AUTOINCREMENT,
        src     TEXT NOT NULL,
        uri     TEXT NOT NULL,
        cid     TEXT,
        val     TEXT NOT NULL,
        neg     INTEGER NOT NULL DEFAULT 0 CHECK (neg IN (0, 1)),
        cts     TEXT NOT NULL,
        exp     TEXT,
        sig     BLOB NOT NULL,
        key_id  TEXT NOT NULL,   -- did:key of the key that made sig
        cbor    BLOB NOT NULL    -- the signed label exactly as sent on the wire
    );
    CREATE TRIGGER labels_append_only_update BEFORE UPDATE ON labels
        BEGIN SELECT RAISE(ABORT, 'the label log is append-only: emit a negation instead'); END;
    CREATE TRIGGER labels_append_only_delete BEFORE DELETE ON labels
        BEGIN SELECT RAISE(ABORT, 'the label log is append-only: emit a negation instead'); END;
    -- The latest label per (uri, val, src): what is in force, and queryLabels' answer.
    CREATE TABLE label_state (
        uri  TEXT NOT NULL,
        val  TEXT NOT NULL,
        src  TEXT NOT NULL,
        seq  INTEGER NOT NULL REFERENCES labels(seq),
        PRIMARY KEY (uri, val, src)
    ) WITHOUT ROWID;
    CREATE UNIQUE INDEX label_state_seq ON label_state(seq);
    """,
    # 2: ingest: source cursors, tracks seen, the durable scan queue, dead letters, repo events.
    """
    CREATE TABLE source_cursors (
        source   TEXT PRIMARY KEY,
        cursor   INTEGER NOT NULL,
        updated  TEXT NOT NULL
    );
    -- The latest known version of each track record (deleted = 1 once deleted).
    CREATE TABLE tracks (
        uri      TEXT PRIMARY KEY,
        did      TEXT NOT NULL,
        rkey     TEXT NOT NULL,
        cid      TEXT,
        rev      TEXT NOT NULL DEFAULT '',   -- repo revision (TID) of the last applied event
        record   TEXT,                       -- JSON
        deleted  INTEGER NOT NULL DEFAULT 0,
        first_seen TEXT NOT NULL,
        updated  TEXT NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX tracks_did ON tracks(did);
    -- Work for the scan workers. (uri, cid, operation) is unique: a replayed event is a no-op.
    CREATE TABLE scan_jobs (
        id        INTEGER PRIMARY KEY AUTOINCREMENT,
        uri       TEXT NOT NULL,
        cid       TEXT NOT NULL DEFAULT '',
        operation TEXT NOT NULL CHECK (operation IN ('create', 'update', 'delete', 'rescan')),
        source    TEXT NOT NULL,
        cursor    INTEGER,
        state     TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'running', 'done', 'failed')),
        attempts  INTEGER NOT NULL DEFAULT 0,
        not_before REAL NOT NULL DEFAULT 0,
        error     TEXT,
        created   TEXT NOT NULL,
        finished  TEXT,
        UNIQUE (uri, cid, operation)
    );
    CREATE INDEX scan_jobs_pending ON scan_jobs(state, not_before, id);
    CREATE TABLE dead_letters (
        id       INTEGER PRIMARY KEY AUTOINCREMENT,
        source   TEXT NOT NULL,
        cursor   INTEGER,
        reason   TEXT NOT NULL,
        detail   TEXT NOT NULL,
        did      TEXT,
        uri      TEXT,
        raw      BLOB,
        created  TEXT NOT NULL
    );
    CREATE TABLE repo_events (
        id       INTEGER PRIMARY KEY AUTOINCREMENT,
        did      TEXT NOT NULL,
        kind     TEXT NOT NULL,
        active   INTEGER,
        status   TEXT,
        handle   TEXT,
        source   TEXT NOT NULL,
        cursor   INTEGER,
        created  TEXT NOT NULL,
        UNIQUE (source, cursor, did, kind)
    );
    CREATE INDEX repo_events_did ON repo_events(did, id);
    """,
    # 3: backfill progress, one row per repo: where its listRecords paging stands.
    """
    CREATE TABLE backfill_repos (
        did      TEXT PRIMARY KEY,
        pds      TEXT,                      -- endpoint it was last read from
        state    TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'done', 'failed')),
        cursor   TEXT,                      -- listRecords cursor after the last committed page
        records  INTEGER NOT NULL DEFAULT 0,
        error    TEXT,
        attempts INTEGER NOT NULL DEFAULT 0,
        updated  TEXT NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX backfill_repos_state ON backfill_repos(state, did);
    """,
    # 4: policy decisions (the evidence behind every label) and the human review queue.
    """
    CREATE TABLE decisions (
        id        INTEGER PRIMARY KEY AUTOINCREMENT,
        uri       TEXT NOT NULL,
        cid       TEXT,
        action    TEXT NOT NULL CHECK (action IN ('label', 'negate', 'review', 'none')),
        value     TEXT,
        origin    TEXT NOT NULL,             -- policy | human | delete
        rule      TEXT,
        policy_version TEXT,
        scanners  TEXT NOT NULL DEFAULT '{}', -- JSON {name: version}
        evidence  TEXT NOT NULL DEFAULT '[]', -- JSON list of findings
        label_seq INTEGER,
        actor     TEXT,
        reason    TEXT,
        created   TEXT NOT NULL
    );
    CREATE INDEX decisions_uri ON decisions(uri, id);
    CREATE TABLE review_items (
        id        INTEGER PRIMARY KEY AUTOINCREMENT,
        uri       TEXT NOT NULL,
        cid       TEXT,
        value     TEXT NOT NULL,
        reason    TEXT NOT NULL,
        evidence  TEXT NOT NULL DEFAULT '[]',
        state     TEXT NOT NULL DEFAULT 'open' CHECK (state IN ('open', 'resolved')),
        resolution TEXT,
        resolved_by TEXT,
        resolved_at TEXT,
        created   TEXT NOT NULL
    );
    CREATE UNIQUE INDEX review_open ON review_items(uri, value) WHERE state = 'open';
    CREATE INDEX review_state ON review_items(state, id);
    """,
    # 5: the copyright catalogue: reference recordings and indexed uploads, one fingerprint blob each.
    """
    CREATE TABLE catalogue_refs (
        id        INTEGER PRIMARY KEY AUTOINCREMENT,
        ref       TEXT NOT NULL UNIQUE,      -- a reference name, or an upload's at-uri
        kind      TEXT NOT NULL CHECK (kind IN ('reference', 'upload')),
        title     TEXT,
        artist    TEXT,
        source    TEXT,                      -- file path or URI it was read from
        duration  REAL,
        sha256    TEXT,
        chromaprint BLOB,                    -- raw fpcalc items, little-endian uint32
        fp_version TEXT NOT NULL,            -- landmark fingerprint version that made the hashes
        entries   INTEGER NOT NULL DEFAULT 0,
        added     TEXT NOT NULL,
        removed   INTEGER NOT NULL DEFAULT 0 CHECK (removed IN (0, 1))
    );
    CREATE INDEX catalogue_refs_sha256 ON catalogue_refs(sha256);
    -- Packed index entries (uint32 keys, float32 times, float16 pitches, float16 spans).
    CREATE TABLE catalogue_hashes (
        ref_id    INTEGER PRIMARY KEY REFERENCES catalogue_refs(id),
        data      BLOB NOT NULL
    );
    """,
    # 6: rescan runs, so an interrupted `rescan --apply` resumes where it stopped.
    """
    CREATE TABLE rescans (
        key       TEXT PRIMARY KEY,   -- hash of the selection, the policy and scanner versions
        last_uri  TEXT NOT NULL DEFAULT '',
        checked   INTEGER NOT NULL DEFAULT 0,
        changed   INTEGER NOT NULL DEFAULT 0,
        finished  INTEGER NOT NULL DEFAULT 0,
        started   TEXT NOT NULL,
        updated   TEXT NOT NULL
    ) WITHOUT ROWID;
    """,
    # 7: a label's history by subject (explain) without reading the whole log.
    """
    CREATE INDEX labels_uri ON labels(uri, seq);
    """,
]


@asynccontextmanager
async def transaction(db: aiosqlite.Connection) -> AsyncIterator[aiosqlite.Connection]:
    """`BEGIN IMMEDIATE` ... `COMMIT`, rolled back on any error or cancellation.

    BEGIN and COMMIT are shielded: a statement handed to aiosqlite's thread runs to its end
    even when the awaiting task is cancelled, so cancelling half-way would leave the
    connection's transaction state unknown to us.
    """
    with anyio.CancelScope(shield=True):
        await db.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        with anyio.CancelScope(shield=True):
            if db.in_transaction:
                await db.execute("ROLLBACK")
        raise
    with anyio.CancelScope(shield=True):
        await db.execute("COMMIT")


async def close_shielded(closeable) -> None:
    """`await closeable.close()` even inside a cancelled scope: an aiosqlite connection left
    open keeps its thread alive and the process from exiting."""
    with anyio.CancelScope(shield=True):
        await closeable.close()


class Store:
    """One aiosqlite connection shared by many tasks; subclasses hold the SQL of one concern.

    `_lock` serialises writes: transactions must not interleave on a shared connection.
    """

    def __init__(self, db: aiosqlite.Connection):
        self._db = db
        self._lock = anyio.Lock()

    @classmethod
    async def open(cls, path: Path, *, synchronous: str = "FULL", readonly: bool = False):
        return cls(await open_db(path, synchronous=synchronous, readonly=readonly))

    async def close(self) -> None:
        await self._db.close()


class SchemaError(RuntimeError):
    """The database cannot be used by this version of firehose-mod."""


async def open_db(path: Path, *, synchronous: str = "FULL", readonly: bool = False) -> aiosqlite.Connection:
    """Open (and migrate, unless read-only) the database at `path` in WAL mode."""
    if readonly:
        conn = await aiosqlite.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = await aiosqlite.connect(path, isolation_level=None)
    try:
        await conn.execute("PRAGMA busy_timeout = 10000")
        if not readonly:
            await conn.execute("PRAGMA journal_mode = WAL")
            await conn.execute(f"PRAGMA synchronous = {synchronous.upper()}")
            await _migrate(conn, path)
        else:
            await _check_version(conn, path)
    except BaseException:
        await conn.close()
        raise
    return conn


async def _check_version(conn: aiosqlite.Connection, path: Path) -> int:
    async with conn.execute("PRAGMA user_version") as cur:
        (version,) = await cur.fetchone()
    if version > len(MIGRATIONS):
        raise SchemaError(
            f"{path} has schema version {version} but this firehose-mod knows only {len(MIGRATIONS)}: "
            "upgrade firehose-mod, or point FIREHOSE_MOD_DATA_DIR at another directory"
        )
    return version


async def _migrate(conn: aiosqlite.Connection, path: Path) -> None:
    async with transaction(conn):
        version = await _check_version(conn, path)
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            for statement in _statements(script):
                await conn.execute(statement)
            await conn.execute(f"PRAGMA user_version = {number}")


def _statements(script: str) -> list[str]:
    """Split a migration on statement ends, keeping trigger bodies whole."""
    out, buf = [], []
    for line in script.strip().splitlines():
        if line.strip().startswith("--") or not line.strip():
            continue
        buf.append(line)
        joined = "\n".join(buf)
        if line.rstrip().endswith(";") and (
            "BEGIN" not in joined.upper() or line.strip().upper().endswith("END;")
        ):
            out.append(joined)
            buf = []
    return out
