"""The schema, as numbered migrations: append a new one, never edit an old one.

`store/db.py` applies them in order and keeps the number in `PRAGMA user_version`.
"""

from __future__ import annotations

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
    # 8: a dead letter is kept once: re-reading the same input (Jetstream's resume rewind, a
    # replay, a backfill page read again) finds its fingerprint. Letters from before have none.
    """
    ALTER TABLE dead_letters ADD COLUMN fingerprint BLOB;
    CREATE UNIQUE INDEX dead_letters_fingerprint ON dead_letters(fingerprint);
    """,
    # 9: the review desk. `moderation_event` is the append-only log of moderation decisions
    # (Ozone's table of the same name); each review item's row in review_items is the state
    # derived from it (Ozone's moderation_subject_status): `status` is ours, `review_state`
    # Ozone's token; `state` stays 'open' until the item is closed, so the one-open-item-per-
    # (uri, value) index keeps working. Items from before get their history synthesised.
    """
    ALTER TABLE review_items ADD COLUMN status TEXT NOT NULL DEFAULT 'open';
    ALTER TABLE review_items ADD COLUMN review_state TEXT NOT NULL DEFAULT 'reviewOpen';
    ALTER TABLE review_items ADD COLUMN kind TEXT NOT NULL DEFAULT 'other';
    ALTER TABLE review_items ADD COLUMN source TEXT NOT NULL DEFAULT 'scan';
    ALTER TABLE review_items ADD COLUMN proposal_event INTEGER;
    ALTER TABLE review_items ADD COLUMN last_event INTEGER;
    ALTER TABLE review_items ADD COLUMN updated TEXT;
    CREATE INDEX review_status ON review_items(status, id);
    CREATE TABLE moderation_event (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        item_id     INTEGER NOT NULL REFERENCES review_items(id),
        uri         TEXT NOT NULL,
        cid         TEXT,
        value       TEXT NOT NULL,
        event_type  TEXT NOT NULL,           -- Ozone's: modEventReport, modEventLabel, ...; modEventPropose is ours
        action      TEXT NOT NULL,           -- open, propose, confirm, reject, allow, escalate, comment, delete, resolve
        state_before TEXT,
        state_after TEXT NOT NULL,
        actor_kind  TEXT NOT NULL CHECK (actor_kind IN ('operator', 'agent', 'system')),
        actor_name  TEXT NOT NULL,
        actor_via   TEXT NOT NULL,           -- token | local | builtin
        reason      TEXT,
        labels      TEXT NOT NULL DEFAULT '[]',  -- JSON [{seq, val, neg}] committed with this event
        payload     TEXT NOT NULL DEFAULT '{}',  -- JSON: evidence (open), proposal, what was overturned
        created     TEXT NOT NULL
    );
    CREATE INDEX moderation_event_item ON moderation_event(item_id, id);
    CREATE INDEX moderation_event_uri ON moderation_event(uri, id);
    CREATE TRIGGER moderation_event_append_only_update BEFORE UPDATE ON moderation_event
        BEGIN SELECT RAISE(ABORT, 'the moderation event log is append-only: record a new event instead'); END;
    CREATE TRIGGER moderation_event_append_only_delete BEFORE DELETE ON moderation_event
        BEGIN SELECT RAISE(ABORT, 'the moderation event log is append-only: record a new event instead'); END;
    UPDATE review_items SET kind = CASE
        WHEN evidence LIKE '%"kind": "copyright-match"%' THEN 'copyright'
        WHEN evidence LIKE '%"kind": "nsfw"%' OR evidence LIKE '%"kind": "pdq-match"%'
             OR evidence LIKE '%"kind": "cover-unusable"%' THEN 'cover-art'
        WHEN evidence LIKE '%"kind": "text"%' THEN 'text'
        ELSE 'other' END;
    INSERT INTO moderation_event (item_id, uri, cid, value, event_type, action, state_before, state_after,
        actor_kind, actor_name, actor_via, reason, payload, created)
        SELECT id, uri, cid, value, 'modEventReport', 'open', NULL, 'open', 'system', 'policy', 'builtin', reason,
               json_object('source', 'scan', 'kind', kind, 'evidence', json(evidence)), created
        FROM review_items ORDER BY id;
    INSERT INTO moderation_event (item_id, uri, cid, value, event_type, action, state_before, state_after,
        actor_kind, actor_name, actor_via, reason, created)
        SELECT id, uri, cid, value,
               CASE WHEN resolution = 'content-deleted' THEN 'recordEvent' ELSE 'modEventAcknowledge' END,
               CASE WHEN resolution = 'content-deleted' THEN 'delete' ELSE 'resolve' END, 'open',
               CASE WHEN resolution = 'content-deleted' THEN 'content-deleted' ELSE 'resolved' END,
               'system', coalesce(resolved_by, 'firehose-mod'), 'builtin', resolution, coalesce(resolved_at, created)
        FROM review_items WHERE state = 'resolved' ORDER BY id;
    UPDATE review_items SET
        status = CASE WHEN state = 'open' THEN 'open' WHEN resolution = 'content-deleted' THEN 'content-deleted'
                      ELSE 'resolved' END,
        review_state = CASE WHEN state = 'open' THEN 'reviewOpen' ELSE 'reviewClosed' END,
        last_event = (SELECT max(e.id) FROM moderation_event e WHERE e.item_id = review_items.id),
        updated = coalesce(resolved_at, created);
    -- Operators and agents: a name, a role, and the SHA-256 of a random token (never the token).
    CREATE TABLE operators (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        name        TEXT NOT NULL UNIQUE,
        role        TEXT NOT NULL CHECK (role IN ('admin', 'moderator', 'agent')),
        token_hash  BLOB NOT NULL UNIQUE,
        created     TEXT NOT NULL,
        created_by  TEXT NOT NULL,
        revoked     TEXT,
        revoked_by  TEXT
    );
    CREATE TRIGGER operators_keep_identity BEFORE UPDATE OF name, role, token_hash, created ON operators
        BEGIN SELECT RAISE(ABORT, 'an operator keeps its name, role and token: revoke it and add another'); END;
    CREATE TRIGGER operators_revocation_is_final BEFORE UPDATE OF revoked ON operators WHEN OLD.revoked IS NOT NULL
        BEGIN SELECT RAISE(ABORT, 'a revoked operator stays revoked: add another'); END;
    CREATE TRIGGER operators_never_deleted BEFORE DELETE ON operators
        BEGIN SELECT RAISE(ABORT, 'operators are never deleted (events name them): revoke instead'); END;
    -- LLM triage: one row per call, with what it cost; the day's spend is summed from here.
    CREATE TABLE triage_calls (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        item_id     INTEGER NOT NULL REFERENCES review_items(id),
        agent       TEXT NOT NULL,
        provider    TEXT NOT NULL,
        model       TEXT NOT NULL,
        outcome     TEXT NOT NULL,   -- proposed | needs-human | refused | malformed | unknown-category | timeout | error
        verdict     TEXT,
        error       TEXT,
        attempts    INTEGER NOT NULL DEFAULT 1,
        input_tokens  INTEGER NOT NULL DEFAULT 0,
        output_tokens INTEGER NOT NULL DEFAULT 0,
        cost_usd    REAL NOT NULL DEFAULT 0,
        seconds     REAL,
        created     TEXT NOT NULL
    );
    CREATE INDEX triage_calls_item ON triage_calls(item_id, id);
    CREATE INDEX triage_calls_created ON triage_calls(created);
    -- Shareable selections of items (the admin page's batch link) and what notifications sent.
    CREATE TABLE review_batches (
        id          TEXT PRIMARY KEY,
        items       TEXT NOT NULL,   -- JSON list of item ids
        created     TEXT NOT NULL,
        created_by  TEXT NOT NULL,
        notify      INTEGER NOT NULL DEFAULT 0,   -- 1: made by the notifier, to be sent
        webhook_sent TEXT,
        dm_sent     TEXT,
        attempts    INTEGER NOT NULL DEFAULT 0,
        last_error  TEXT
    ) WITHOUT ROWID;
    CREATE INDEX review_batches_created ON review_batches(created);
    -- Items an operator has looked at or been told about: never announced (again).
    CREATE TABLE review_attention (
        item_id     INTEGER PRIMARY KEY REFERENCES review_items(id),
        seen        TEXT,
        seen_by     TEXT,
        batch       TEXT
    );
    """,
    # 10: the admin page's sign-ins: a session per sign-in, the cookie stored only as its SHA-256.
    """
    CREATE TABLE desk_sessions (
        id_hash   BLOB PRIMARY KEY,   -- SHA-256 of the session cookie's value
        operator  TEXT NOT NULL REFERENCES operators(name),
        csrf      TEXT NOT NULL,      -- the token every form and fetch of this session must carry
        created   TEXT NOT NULL,
        expires   TEXT NOT NULL,
        ended     TEXT                -- signed out (or the operator revoked)
    ) WITHOUT ROWID;
    CREATE INDEX desk_sessions_operator ON desk_sessions(operator);
    """,
    # 11: service-auth JWT nonces (`jti`) already accepted, kept until their token could no longer
    # be accepted (its exp plus the clock skew allowed); expired rows are pruned.
    """
    CREATE TABLE service_auth_nonces (
        iss  TEXT NOT NULL,      -- the issuer's DID (without a #service fragment)
        jti  TEXT NOT NULL,
        exp  INTEGER NOT NULL,   -- unix seconds after which the row is expired
        PRIMARY KEY (iss, jti)
    ) WITHOUT ROWID;
    CREATE INDEX service_auth_nonces_exp ON service_auth_nonces(exp);
    """,
    # 12: reports and appeals received through com.atproto.moderation.createReport, as received
    # (append-only); each opened or joined the review item in `item_id`, in the same transaction.
    """
    CREATE TABLE reports (
        id           INTEGER PRIMARY KEY AUTOINCREMENT,
        reporter     TEXT NOT NULL,        -- the service JWT's iss DID
        via_service  TEXT,                 -- its #fragment (a report relayed by a service)
        reason_type  TEXT NOT NULL,
        reason       TEXT,
        subject      TEXT NOT NULL,        -- JSON, as received
        subject_uri  TEXT NOT NULL,        -- the record's at:// URI, or the account's DID
        subject_cid  TEXT,
        subject_did  TEXT NOT NULL,
        appeal       INTEGER NOT NULL DEFAULT 0 CHECK (appeal IN (0, 1)),
        value        TEXT NOT NULL,        -- the label value in question
        item_id      INTEGER REFERENCES review_items(id),
        counter_notice TEXT,               -- JSON: a copyright appeal's statement, parts found and missing
        mod_tool     TEXT,
        created      TEXT NOT NULL
    );
    CREATE INDEX reports_reporter ON reports(reporter, created);
    CREATE INDEX reports_subject ON reports(subject_uri, created);
    CREATE INDEX reports_item ON reports(item_id, id);
    CREATE TRIGGER reports_append_only_update BEFORE UPDATE ON reports
        BEGIN SELECT RAISE(ABORT, 'reports are kept as received'); END;
    CREATE TRIGGER reports_append_only_delete BEFORE DELETE ON reports
        BEGIN SELECT RAISE(ABORT, 'reports are kept as received'); END;
    """,
    # 13: transparency summaries: one row per batch of decisions posted (or to post) from the labeler
    # account. A batch covers the moderation events after `after_event` up to `last_event`; the next
    # batch starts where this one ends (UNIQUE: never two posts for one stretch). The post's rkey is
    # chosen before the first attempt, so a retry finds a post that landed instead of posting again.
    """
    CREATE TABLE transparency_posts (
        id           INTEGER PRIMARY KEY AUTOINCREMENT,
        after_event  INTEGER NOT NULL UNIQUE,   -- moderation_event.id the previous batch ended at (0: none)
        last_event   INTEGER NOT NULL,          -- the last moderation_event.id this batch covers
        period_start TEXT NOT NULL,
        period_end   TEXT NOT NULL,
        summary      TEXT NOT NULL,             -- JSON: the counts
        text         TEXT NOT NULL,             -- the post's text, as it is (re)sent
        rkey         TEXT NOT NULL UNIQUE,      -- app.bsky.feed.post record key (a TID)
        created      TEXT NOT NULL,
        attempts     INTEGER NOT NULL DEFAULT 0,
        last_error   TEXT,
        uri          TEXT,                      -- set once posted
        cid          TEXT,
        posted       TEXT
    );
    CREATE INDEX transparency_posts_pending ON transparency_posts(posted, id);
    """,
    # 14: label imports from another labeler (`firehose-mod import`): where reading each source
    # stands, and every label read, once (ident: SHA-256 of its signed fields), with what applying it
    # did here (outcome, marked in the label log's transaction). queryLabels rows carry no seq: `pos`
    # is the stream seq, or the row's running position in the source's answer.
    """
    CREATE TABLE label_imports (
        id        INTEGER PRIMARY KEY AUTOINCREMENT,
        source    TEXT NOT NULL,               -- the source's base URL
        did       TEXT NOT NULL DEFAULT '',    -- the src asked for ('' = all)
        mode      TEXT NOT NULL CHECK (mode IN ('query', 'stream')),
        cursor    TEXT,                        -- resume reading after this
        state     TEXT NOT NULL DEFAULT 'fetching' CHECK (state IN ('fetching', 'fetched')),
        pages     INTEGER NOT NULL DEFAULT 0,
        rows      INTEGER NOT NULL DEFAULT 0,
        positions INTEGER NOT NULL DEFAULT 0,
        high_seq  INTEGER,                     -- the highest source seq seen
        started   TEXT NOT NULL,
        updated   TEXT NOT NULL,
        UNIQUE (source, did, mode)
    );
    CREATE TABLE label_import_rows (
        import_id INTEGER NOT NULL REFERENCES label_imports(id),
        ident     BLOB NOT NULL,
        pos       INTEGER NOT NULL,
        sub       INTEGER NOT NULL DEFAULT 0,
        src       TEXT NOT NULL,
        uri       TEXT NOT NULL,
        cid       TEXT,
        val       TEXT NOT NULL,
        neg       INTEGER NOT NULL,
        cts       TEXT NOT NULL,               -- as the source signed it
        exp       TEXT,
        ver       INTEGER,
        sig       BLOB,
        cts_key   TEXT NOT NULL,               -- cts in UTC with microseconds, to sort by
        verified  INTEGER,                     -- the source's signature: 1 valid, 0 not, NULL unchecked
        outcome   TEXT,                        -- NULL until applied: written | unchanged | invalid: why
        label_seq INTEGER,                     -- our seq, when written
        PRIMARY KEY (import_id, ident)
    ) WITHOUT ROWID;
    CREATE INDEX label_import_rows_order ON label_import_rows(import_id, outcome, cts_key, pos, sub);
    CREATE INDEX label_import_rows_subject ON label_import_rows(import_id, uri, val, pos, sub);
    """,
    # 15: plyr.fm compatibility ([plyr_compat], compat/plyr.py): the moderation event log its backend
    # reads and writes (posted events, and our labels mirrored from `mirror_floor` on), the sensitive
    # images it blurs (a removal is recorded, never deleted), and the reports it relays, as received.
    """
    CREATE TABLE plyr_events (
        id               INTEGER PRIMARY KEY AUTOINCREMENT,   -- the backend's events-since cursor
        subject_uri      TEXT NOT NULL,
        subject_track_id INTEGER,                            -- plyr.fm's track id, when it sent one
        action           TEXT NOT NULL,                      -- flagged_by_scan, reported, label_applied, ...
        actor            TEXT NOT NULL,
        reason           TEXT,
        notes            TEXT,
        created_at       TEXT NOT NULL,
        label_seq        INTEGER UNIQUE                      -- label_applied / label_negated mirrored from labels
    );
    CREATE INDEX plyr_events_subject ON plyr_events(subject_uri, id);
    CREATE INDEX plyr_events_action ON plyr_events(action, id);
    CREATE TRIGGER plyr_events_append_only_update BEFORE UPDATE ON plyr_events
        BEGIN SELECT RAISE(ABORT, 'plyr_events is append-only: record a new event instead'); END;
    CREATE TRIGGER plyr_events_append_only_delete BEFORE DELETE ON plyr_events
        BEGIN SELECT RAISE(ABORT, 'plyr_events is append-only: record a new event instead'); END;
    CREATE TABLE plyr_state (
        key   TEXT PRIMARY KEY,
        value INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE plyr_sensitive_images (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        image_id    TEXT,           -- plyr.fm's R2 image id (track and album artwork)
        url         TEXT,           -- or a full URL (avatars)
        reason      TEXT,
        flagged_by  TEXT,
        flagged_at  TEXT NOT NULL,
        removed     TEXT,           -- when it was taken off the list
        removed_by  TEXT,
        CHECK (image_id IS NOT NULL OR url IS NOT NULL)
    );
    CREATE TABLE plyr_reports (
        id              INTEGER PRIMARY KEY AUTOINCREMENT,   -- the report_id the backend gets
        reporter_did    TEXT NOT NULL,
        reporter_handle TEXT,
        target_type     TEXT NOT NULL,
        target_id       TEXT NOT NULL,
        target_name     TEXT,
        target_url      TEXT,
        target_uri      TEXT,
        reason          TEXT NOT NULL,
        description     TEXT,
        screenshot_url  TEXT,
        report_id       INTEGER REFERENCES reports(id),      -- the report it became, when it names a subject
        item_id         INTEGER REFERENCES review_items(id), -- the review item it opened or joined
        not_routed      TEXT,                                -- why it opened no item
        created_at      TEXT NOT NULL
    );
    CREATE TRIGGER plyr_reports_append_only_update BEFORE UPDATE ON plyr_reports
        BEGIN SELECT RAISE(ABORT, 'plyr_reports are kept as received'); END;
    CREATE TRIGGER plyr_reports_append_only_delete BEFORE DELETE ON plyr_reports
        BEGIN SELECT RAISE(ABORT, 'plyr_reports are kept as received'); END;
    """,
    # 16: scan job leases, so several scan processes share one queue (`run --role scan`): a job
    # is held by `worker` until `lease_until` (unix time), renewed while it runs; a dead worker's
    # job is claimed again when its lease runs out.
    """
    ALTER TABLE scan_jobs ADD COLUMN worker TEXT;
    ALTER TABLE scan_jobs ADD COLUMN lease_until REAL NOT NULL DEFAULT 0;
    """,
    # 17: a label's history by subject through label_state, not an index of labels by uri (issue 19).
    # `labels_uri` took a random leaf of a large B-tree per label written (~13 us of the ~110 us a
    # label cost on a 1M-label log: bench/LABEL_WRITES.md); `label_prev` links each label to the one
    # before it on the same (uri, val, src), and gets a row only when there is one, always at the end
    # of the table. History = label_state's rows for the uri, then each chain back. The INSERT fills
    # the links of the labels written so far (one sort of the log: ~4 s a million labels).
    """
    CREATE TABLE label_prev (
        seq  INTEGER PRIMARY KEY,   -- a label
        prev INTEGER NOT NULL       -- the label before it on the same (uri, val, src)
    );
    INSERT INTO label_prev (seq, prev)
        SELECT seq, prev FROM (
            SELECT seq, lag(seq) OVER (PARTITION BY uri, val, src ORDER BY seq) AS prev FROM labels
        ) WHERE prev IS NOT NULL ORDER BY seq;
    DROP INDEX IF EXISTS labels_uri;
    """,
    # 18: decisions by subject without an index of every decision by uri (issue 19). `decisions_uri`
    # took a random leaf of a large B-tree per label written with its decision (~23 us of the ~100 us
    # a label cost on a 1.2M-label log: bench/LABEL_WRITES.md). A decision with a label is found
    # through its label (label_state and label_prev, as a label's history is, then
    # `decisions_by_label`: label seqs rise with ids, so it grows at its right edge); the others
    # (reviews, clean scans, label decisions that wrote no label, notes) through the partial
    # `decisions_unlabelled`. It needs a decision's label_seq to name a label on the same uri, which
    # `write_decisions` checks.
    """
    CREATE INDEX decisions_unlabelled ON decisions(uri, id) WHERE label_seq IS NULL;
    CREATE INDEX decisions_by_label ON decisions(label_seq) WHERE label_seq IS NOT NULL;
    DROP INDEX IF EXISTS decisions_uri;
    """,
]
