"""The PostgreSQL schema, as numbered migrations: append a new one, never edit an old one.

The number applied is the single row of `schema_version`. Migrations run under a
transaction-level advisory lock, so processes starting together migrate once; a database
whose version is newer than the code knows is refused with both numbers in the error (an
older binary must not write into a schema it does not understand).

Text columns that are compared as ranges (`uri`, for queryLabels' prefix patterns) use the
"C" collation: byte order, which for UTF-8 is code-point order, the order
`store.query.prefix_upper_bound` assumes, whatever the database's default locale.
"""

from __future__ import annotations

import asyncpg

from firehose_mod.store.db import SchemaError

# pg_advisory_xact_lock keys (advisory locks are per database): one for migrating, one for the
# label log's writers. Arbitrary constants, fixed forever.
MIGRATE_LOCK = 0x66_6D_5F_6D_69_67  # "fm_mig"
WRITE_LOCK = 0x66_6D_5F_6C_6F_67  # "fm_log"

MIGRATIONS: list[str] = [
    # 1: the label log (append-only; seq is the subscribeLabels cursor), its state and its head.
    """
    CREATE TABLE labels (
        seq     bigint PRIMARY KEY CHECK (seq > 0 AND seq < 9007199254740992),
        src     text NOT NULL,
        uri     text COLLATE "C" NOT NULL,
        cid     text,
        val     text COLLATE "C" NOT NULL,
        neg     boolean NOT NULL DEFAULT false,
        cts     text NOT NULL,
        exp     text,
        sig     bytea NOT NULL,
        key_id  text NOT NULL,   -- did:key of the key that made sig
        cbor    bytea NOT NULL   -- the signed label exactly as sent on the wire
    );
    CREATE INDEX labels_uri ON labels (uri, seq);
    CREATE FUNCTION labels_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN RAISE EXCEPTION 'the label log is append-only: emit a negation instead'; END $$;
    CREATE TRIGGER labels_append_only BEFORE UPDATE OR DELETE ON labels
        FOR EACH ROW EXECUTE FUNCTION labels_append_only();
    CREATE TRIGGER labels_append_only_truncate BEFORE TRUNCATE ON labels
        FOR EACH STATEMENT EXECUTE FUNCTION labels_append_only();
    -- The latest label per (uri, val, src): what is in force, and queryLabels' answer.
    CREATE TABLE label_state (
        uri  text COLLATE "C" NOT NULL,
        val  text COLLATE "C" NOT NULL,
        src  text COLLATE "C" NOT NULL,
        seq  bigint NOT NULL UNIQUE REFERENCES labels (seq),
        PRIMARY KEY (uri, val, src)
    );
    -- The head: the highest seq given out (or the floor an operator raised it to). Written only
    -- under the WRITE_LOCK advisory lock, in the transaction that appends the labels.
    CREATE TABLE label_head (
        id    integer PRIMARY KEY CHECK (id = 1),
        head  bigint NOT NULL CHECK (head >= 0)
    );
    INSERT INTO label_head (id, head) VALUES (1, 0);
    -- Decisions written with the labels they explain (emit_many's `also`): store/decisions.py's table.
    CREATE TABLE decisions (
        id        bigserial PRIMARY KEY,
        uri       text COLLATE "C" NOT NULL,
        cid       text,
        action    text NOT NULL CHECK (action IN ('label', 'negate', 'review', 'none')),
        value     text,
        origin    text NOT NULL,
        rule      text,
        policy_version text,
        scanners  text NOT NULL DEFAULT '{}',
        evidence  text NOT NULL DEFAULT '[]',
        label_seq bigint,
        actor     text,
        reason    text,
        created   text NOT NULL
    );
    CREATE INDEX decisions_uri ON decisions (uri, id);
    """,
]

SCHEMA_VERSION = len(MIGRATIONS)


async def migrate(conn: asyncpg.Connection) -> int:
    """Bring the database to SCHEMA_VERSION; returns the version it was at. Refuses a newer one."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATE_LOCK)
        await conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version integer NOT NULL)")
        found = await conn.fetchval("SELECT max(version) FROM schema_version")
        if found is None:
            await conn.execute("INSERT INTO schema_version (version) VALUES (0)")
            found = 0
        if found > SCHEMA_VERSION:
            raise SchemaError(
                f"the PostgreSQL database is at schema version {found}, newer than this firehose-mod knows"
                f" ({SCHEMA_VERSION}): run the newer firehose-mod that migrated it, or upgrade this one"
            )
        for number in range(found + 1, SCHEMA_VERSION + 1):
            await conn.execute(MIGRATIONS[number - 1])
        if found < SCHEMA_VERSION:
            await conn.execute("UPDATE schema_version SET version = $1", SCHEMA_VERSION)
    return found
