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
# The ingest commit's transaction lock (one ingest commit at a time, as SQLite's one writer) and
# the source lock, a session lock held by the one ingest process (store/source_lock.py).
INGEST_LOCK = 0x66_6D_5F_69_6E_67  # "fm_ing"
SOURCE_LOCK = 0x66_6D_5F_73_72_63  # "fm_src"

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
    # 2: ingest (store/pg/ingest.py): source cursors, tracks, repo events, the scan queue with
    # its leases, dead letters, rescan progress. The same tables as SQLite's migrations 2, 6, 8
    # and 16; times that leases compare (not_before, lease_until) are epoch seconds of the
    # database's clock, so machines with skewed clocks agree on whose lease ran out.
    """
    CREATE TABLE source_cursors (
        source   text PRIMARY KEY,
        cursor   bigint NOT NULL,
        updated  text NOT NULL
    );
    CREATE TABLE tracks (
        uri      text COLLATE "C" PRIMARY KEY,
        did      text NOT NULL,
        rkey     text NOT NULL,
        cid      text,
        rev      text NOT NULL DEFAULT '',
        record   text,                        -- JSON, as the source sent it
        deleted  boolean NOT NULL DEFAULT false,
        first_seen text NOT NULL,
        updated  text NOT NULL
    );
    CREATE INDEX tracks_did ON tracks (did);
    CREATE TABLE scan_jobs (
        id        bigserial PRIMARY KEY,
        uri       text COLLATE "C" NOT NULL,
        cid       text NOT NULL DEFAULT '',
        operation text NOT NULL CHECK (operation IN ('create', 'update', 'delete', 'rescan')),
        source    text NOT NULL,
        cursor    bigint,
        state     text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'running', 'done', 'failed')),
        attempts  integer NOT NULL DEFAULT 0,
        not_before double precision NOT NULL DEFAULT 0,
        error     text,
        created   text NOT NULL,
        finished  text,
        worker    text,
        lease_until double precision NOT NULL DEFAULT 0,
        UNIQUE (uri, cid, operation)
    );
    -- What a claim looks at: the jobs not finished, in id order.
    CREATE INDEX scan_jobs_open ON scan_jobs (id) WHERE state IN ('pending', 'running');
    CREATE TABLE dead_letters (
        id       bigserial PRIMARY KEY,
        source   text NOT NULL,
        cursor   bigint,
        reason   text NOT NULL,
        detail   text NOT NULL,
        did      text,
        uri      text,
        raw      bytea,
        created  text NOT NULL,
        fingerprint bytea NOT NULL UNIQUE
    );
    CREATE TABLE repo_events (
        id       bigserial PRIMARY KEY,
        did      text NOT NULL,
        kind     text NOT NULL,
        active   boolean,
        status   text,
        handle   text,
        source   text NOT NULL,
        cursor   bigint,
        created  text NOT NULL,
        UNIQUE (source, cursor, did, kind)
    );
    CREATE INDEX repo_events_did ON repo_events (did, id);
    CREATE TABLE rescans (
        key       text PRIMARY KEY,
        last_uri  text COLLATE "C" NOT NULL DEFAULT '',
        checked   integer NOT NULL DEFAULT 0,
        changed   integer NOT NULL DEFAULT 0,
        finished  boolean NOT NULL DEFAULT false,
        started   text NOT NULL,
        updated   text NOT NULL
    );
    """,
    # 3: the small stores (store/pg/operators.py, nonces.py, reports.py): operators and their
    # admin-page sessions, service-auth nonces, reports as received. The same tables and rules
    # as SQLite's migrations 9 (operators), 10, 11 and 12. reports.item_id names a review item;
    # it has no foreign key until the review queue is on PostgreSQL too.
    """
    CREATE FUNCTION firehose_mod_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN RAISE EXCEPTION '%', TG_ARGV[0]; END $$;
    CREATE TABLE operators (
        id          bigserial PRIMARY KEY,
        name        text NOT NULL UNIQUE,
        role        text NOT NULL CHECK (role IN ('admin', 'moderator', 'agent')),
        token_hash  bytea NOT NULL UNIQUE,    -- SHA-256 of the token (never the token)
        created     text NOT NULL,
        created_by  text NOT NULL,
        revoked     text,
        revoked_by  text
    );
    CREATE TRIGGER operators_keep_identity BEFORE UPDATE OF name, role, token_hash, created ON operators
        FOR EACH ROW EXECUTE FUNCTION
        firehose_mod_refuse('an operator keeps its name, role and token: revoke it and add another');
    CREATE TRIGGER operators_revocation_is_final BEFORE UPDATE OF revoked ON operators
        FOR EACH ROW WHEN (OLD.revoked IS NOT NULL) EXECUTE FUNCTION
        firehose_mod_refuse('a revoked operator stays revoked: add another');
    CREATE TRIGGER operators_never_deleted BEFORE DELETE ON operators
        FOR EACH ROW EXECUTE FUNCTION
        firehose_mod_refuse('operators are never deleted (events name them): revoke instead');
    CREATE TRIGGER operators_never_truncated BEFORE TRUNCATE ON operators
        FOR EACH STATEMENT EXECUTE FUNCTION
        firehose_mod_refuse('operators are never deleted (events name them): revoke instead');
    CREATE TABLE desk_sessions (
        id_hash   bytea PRIMARY KEY,          -- SHA-256 of the session cookie's value
        operator  text NOT NULL REFERENCES operators (name),
        csrf      text NOT NULL,
        created   text NOT NULL,
        expires   text NOT NULL,
        ended     text                        -- signed out (or the operator revoked)
    );
    CREATE INDEX desk_sessions_operator ON desk_sessions (operator);
    CREATE TABLE service_auth_nonces (
        iss  text NOT NULL,
        jti  text NOT NULL,
        exp  bigint NOT NULL,                 -- unix seconds after which the row is expired
        PRIMARY KEY (iss, jti)
    );
    CREATE INDEX service_auth_nonces_exp ON service_auth_nonces (exp);
    CREATE TABLE reports (
        id           bigserial PRIMARY KEY,
        reporter     text NOT NULL,
        via_service  text,
        reason_type  text NOT NULL,
        reason       text,
        subject      text NOT NULL,           -- JSON, as received
        subject_uri  text NOT NULL,
        subject_cid  text,
        subject_did  text NOT NULL,
        appeal       boolean NOT NULL DEFAULT false,
        value        text NOT NULL,
        item_id      bigint,
        counter_notice text,
        mod_tool     text,
        created      text NOT NULL
    );
    CREATE INDEX reports_reporter ON reports (reporter, created);
    CREATE INDEX reports_subject ON reports (subject_uri, created);
    CREATE INDEX reports_item ON reports (item_id, id);
    CREATE TRIGGER reports_append_only BEFORE UPDATE OR DELETE ON reports
        FOR EACH ROW EXECUTE FUNCTION firehose_mod_refuse('reports are kept as received');
    CREATE TRIGGER reports_append_only_truncate BEFORE TRUNCATE ON reports
        FOR EACH STATEMENT EXECUTE FUNCTION firehose_mod_refuse('reports are kept as received');
    """,
    # 4: the review desk (store/pg/review.py, review_work.py): review items, the append-only
    # moderation event log (triggers) and the state derived from it, triage calls, batches and
    # notices, seen marks. The same tables and rules as SQLite's migrations 4 and 9, in one step.
    # reports.item_id keeps no foreign key (reports are kept as received, whatever they name).
    """
    CREATE TABLE review_items (
        id          bigserial PRIMARY KEY,
        uri         text COLLATE "C" NOT NULL,
        cid         text,
        value       text COLLATE "C" NOT NULL,
        reason      text NOT NULL,
        evidence    text NOT NULL DEFAULT '[]',   -- JSON list of findings
        state       text NOT NULL DEFAULT 'open' CHECK (state IN ('open', 'resolved')),
        resolution  text,
        resolved_by text,
        resolved_at text,
        created     text NOT NULL,
        status      text NOT NULL DEFAULT 'open',
        review_state text NOT NULL DEFAULT 'reviewOpen',
        kind        text NOT NULL DEFAULT 'other',
        source      text NOT NULL DEFAULT 'scan',
        proposal_event bigint,
        last_event  bigint,
        updated     text
    );
    -- One waiting item per (uri, value): a second opening finds it (ON CONFLICT DO NOTHING).
    CREATE UNIQUE INDEX review_open ON review_items (uri, value) WHERE state = 'open';
    CREATE INDEX review_state ON review_items (state, id);
    CREATE INDEX review_status ON review_items (status, id);
    CREATE INDEX review_uri ON review_items (uri, value, id);
    CREATE TABLE moderation_event (
        id          bigserial PRIMARY KEY,
        item_id     bigint NOT NULL REFERENCES review_items (id),
        uri         text COLLATE "C" NOT NULL,
        cid         text,
        value       text NOT NULL,
        event_type  text NOT NULL,
        action      text NOT NULL,
        state_before text,
        state_after text NOT NULL,
        actor_kind  text NOT NULL CHECK (actor_kind IN ('operator', 'agent', 'system')),
        actor_name  text NOT NULL,
        actor_via   text NOT NULL,
        reason      text,
        labels      text NOT NULL DEFAULT '[]',   -- JSON [{seq, val, neg}] committed with this event
        payload     text NOT NULL DEFAULT '{}',
        created     text NOT NULL
    );
    CREATE INDEX moderation_event_item ON moderation_event (item_id, id);
    CREATE INDEX moderation_event_uri ON moderation_event (uri, id);
    CREATE TRIGGER moderation_event_append_only BEFORE UPDATE OR DELETE ON moderation_event
        FOR EACH ROW EXECUTE FUNCTION
        firehose_mod_refuse('the moderation event log is append-only: record a new event instead');
    CREATE TRIGGER moderation_event_append_only_truncate BEFORE TRUNCATE ON moderation_event
        FOR EACH STATEMENT EXECUTE FUNCTION
        firehose_mod_refuse('the moderation event log is append-only: record a new event instead');
    CREATE TABLE triage_calls (
        id          bigserial PRIMARY KEY,
        item_id     bigint NOT NULL REFERENCES review_items (id),
        agent       text NOT NULL,
        provider    text NOT NULL,
        model       text NOT NULL,
        outcome     text NOT NULL,
        verdict     text,
        error       text,
        attempts    integer NOT NULL DEFAULT 1,
        input_tokens  integer NOT NULL DEFAULT 0,
        output_tokens integer NOT NULL DEFAULT 0,
        cost_usd    double precision NOT NULL DEFAULT 0,
        seconds     double precision,
        created     text NOT NULL
    );
    CREATE INDEX triage_calls_item ON triage_calls (item_id, id);
    CREATE INDEX triage_calls_created ON triage_calls (created);
    CREATE TABLE review_batches (
        id          text PRIMARY KEY,
        items       text NOT NULL,                -- JSON list of item ids
        created     text NOT NULL,
        created_by  text NOT NULL,
        notify      boolean NOT NULL DEFAULT false,  -- made by the notifier, to be sent
        webhook_sent text,
        dm_sent     text,
        attempts    integer NOT NULL DEFAULT 0,
        last_error  text
    );
    CREATE INDEX review_batches_created ON review_batches (created);
    CREATE INDEX review_batches_undelivered ON review_batches (created)
        WHERE notify AND (webhook_sent IS NULL OR dm_sent IS NULL);
    CREATE TABLE review_attention (
        item_id     bigint PRIMARY KEY REFERENCES review_items (id),
        seen        text,
        seen_by     text,
        batch       text
    );
    """,
    # 5: transparency posts, the plyr.fm compat tables, backfill progress, label-import rows
    # (store/pg/transparency.py, plyr_compat.py, backfill.py, label_import.py): the same tables and
    # rules as SQLite's migrations 3, 13, 14 and 15 (booleans where SQLite keeps 0/1). Uris, values
    # and sort keys compared as ranges (keyset paging) use the "C" collation, SQLite's byte order.
    """
    CREATE TABLE backfill_repos (
        did      text COLLATE "C" PRIMARY KEY,
        pds      text,
        state    text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'done', 'failed')),
        cursor   text,                      -- listRecords cursor after the last committed page
        records  bigint NOT NULL DEFAULT 0,
        error    text,
        attempts integer NOT NULL DEFAULT 0,
        updated  text NOT NULL
    );
    CREATE INDEX backfill_repos_state ON backfill_repos (state, did);
    CREATE TABLE transparency_posts (
        id           bigserial PRIMARY KEY,
        after_event  bigint NOT NULL UNIQUE,    -- moderation_event.id the previous batch ended at (0: none)
        last_event   bigint NOT NULL,
        period_start text NOT NULL,
        period_end   text NOT NULL,
        summary      text NOT NULL,             -- JSON: the counts
        text         text NOT NULL,
        rkey         text NOT NULL UNIQUE,      -- app.bsky.feed.post record key (a TID)
        created      text NOT NULL,
        attempts     integer NOT NULL DEFAULT 0,
        last_error   text,
        uri          text,
        cid          text,
        posted       text
    );
    CREATE INDEX transparency_posts_pending ON transparency_posts (id) WHERE posted IS NULL;
    CREATE TABLE label_imports (
        id        bigserial PRIMARY KEY,
        source    text NOT NULL,
        did       text NOT NULL DEFAULT '',
        mode      text NOT NULL CHECK (mode IN ('query', 'stream')),
        cursor    text,
        state     text NOT NULL DEFAULT 'fetching' CHECK (state IN ('fetching', 'fetched')),
        pages     bigint NOT NULL DEFAULT 0,
        rows      bigint NOT NULL DEFAULT 0,
        positions bigint NOT NULL DEFAULT 0,
        high_seq  bigint,
        started   text NOT NULL,
        updated   text NOT NULL,
        UNIQUE (source, did, mode)
    );
    CREATE TABLE label_import_rows (
        import_id bigint NOT NULL REFERENCES label_imports (id),
        ident     bytea NOT NULL,               -- SHA-256 of the label's signed fields
        pos       bigint NOT NULL,
        sub       integer NOT NULL DEFAULT 0,
        src       text NOT NULL,
        uri       text COLLATE "C" NOT NULL,
        cid       text,
        val       text COLLATE "C" NOT NULL,
        neg       boolean NOT NULL,
        cts       text NOT NULL,
        exp       text,
        ver       integer,
        sig       bytea,
        cts_key   text COLLATE "C" NOT NULL,    -- cts in UTC with microseconds, to sort by
        verified  boolean,
        outcome   text,                         -- NULL until applied: written | unchanged | invalid: why
        label_seq bigint,
        PRIMARY KEY (import_id, ident)
    );
    CREATE INDEX label_import_rows_order ON label_import_rows (import_id, outcome, cts_key, pos, sub);
    CREATE INDEX label_import_rows_subject ON label_import_rows (import_id, uri, val, pos, sub);
    CREATE TABLE plyr_events (
        id               bigserial PRIMARY KEY,  -- the backend's events-since cursor
        subject_uri      text NOT NULL,
        subject_track_id bigint,
        action           text NOT NULL,
        actor            text NOT NULL,
        reason           text,
        notes            text,
        created_at       text NOT NULL,
        label_seq        bigint UNIQUE
    );
    CREATE INDEX plyr_events_subject ON plyr_events (subject_uri, id);
    CREATE INDEX plyr_events_action ON plyr_events (action, id);
    CREATE TRIGGER plyr_events_append_only BEFORE UPDATE OR DELETE ON plyr_events
        FOR EACH ROW EXECUTE FUNCTION
        firehose_mod_refuse('plyr_events is append-only: record a new event instead');
    CREATE TRIGGER plyr_events_append_only_truncate BEFORE TRUNCATE ON plyr_events
        FOR EACH STATEMENT EXECUTE FUNCTION
        firehose_mod_refuse('plyr_events is append-only: record a new event instead');
    CREATE TABLE plyr_state (
        key   text PRIMARY KEY,
        value bigint NOT NULL
    );
    CREATE TABLE plyr_sensitive_images (
        id          bigserial PRIMARY KEY,
        image_id    text,
        url         text,
        reason      text,
        flagged_by  text,
        flagged_at  text NOT NULL,
        removed     text,
        removed_by  text,
        CHECK (image_id IS NOT NULL OR url IS NOT NULL)
    );
    CREATE TABLE plyr_reports (
        id              bigserial PRIMARY KEY,
        reporter_did    text NOT NULL,
        reporter_handle text,
        target_type     text NOT NULL,
        target_id       text NOT NULL,
        target_name     text,
        target_url      text,
        target_uri      text,
        reason          text NOT NULL,
        description     text,
        screenshot_url  text,
        report_id       bigint REFERENCES reports (id),
        item_id         bigint REFERENCES review_items (id),
        not_routed      text,
        created_at      text NOT NULL
    );
    CREATE TRIGGER plyr_reports_append_only BEFORE UPDATE OR DELETE ON plyr_reports
        FOR EACH ROW EXECUTE FUNCTION firehose_mod_refuse('plyr_reports are kept as received');
    CREATE TRIGGER plyr_reports_append_only_truncate BEFORE TRUNCATE ON plyr_reports
        FOR EACH STATEMENT EXECUTE FUNCTION firehose_mod_refuse('plyr_reports are kept as received');
    """,
    # 6: the copyright catalogue (store/pg/catalogue.py): reference recordings and indexed uploads,
    # one fingerprint blob each; every scan machine indexes it in its own data directory.
    """
    CREATE TABLE catalogue_refs (
        id          bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        ref         text COLLATE "C" NOT NULL UNIQUE,
        kind        text NOT NULL CHECK (kind IN ('reference', 'upload')),
        title       text,
        artist      text,
        source      text,
        duration    double precision,
        sha256      text,
        chromaprint bytea,
        fp_version  text NOT NULL,
        entries     bigint NOT NULL DEFAULT 0,
        added       text NOT NULL,
        removed     boolean NOT NULL DEFAULT false
    );
    CREATE INDEX catalogue_refs_sha256 ON catalogue_refs (sha256);
    CREATE TABLE catalogue_hashes (
        ref_id      bigint PRIMARY KEY REFERENCES catalogue_refs (id),
        data        bytea NOT NULL
    );
    ALTER TABLE catalogue_hashes ALTER COLUMN data SET STORAGE EXTERNAL;  -- packed floats: TOAST compression buys nothing
    """,
    # 7: dead letters kept by SQLite before its migration 8 have no fingerprint: `db copy` moves
    # them as they are (the fingerprint stays unique where there is one).
    """
    ALTER TABLE dead_letters ALTER COLUMN fingerprint DROP NOT NULL;
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
