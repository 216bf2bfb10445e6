"""The PostgreSQL label log's own guarantees, on a real throwaway PostgreSQL (tests/helpers/pg.py).

The behaviour both backends share is tested by tests/test_label_log.py, test_query_labels.py and
test_subscribe_labels.py, run on both; here: what only PostgreSQL has (the schema version, the
database-level append-only rule, several instances on one database, decisions in the same
transaction, the write lock an operator command gives up on).
"""

from __future__ import annotations

import anyio
import asyncpg
import pytest

from firehose_mod.labels import SigningKey, verify_label
from firehose_mod.store import EmitRequest, SchemaError
from firehose_mod.store.db import DatabaseBusy
from firehose_mod.store.decisions import DecisionRow
from firehose_mod.store.pg import SCHEMA_VERSION, DatabaseUnreachable, PgLabelLog
from firehose_mod.store.pg.schema import WRITE_LOCK

from tests.conftest import uri
from tests.procs import free_port

pytestmark = pytest.mark.anyio
SRC = "did:web:labeler.test"


@pytest.fixture
def key() -> SigningKey:
    return SigningKey.generate()


async def test_a_newer_schema_is_refused_naming_both_versions(pg_url, key):
    log = await PgLabelLog.open(pg_url, key, SRC)
    await log.close()
    conn = await asyncpg.connect(pg_url)
    try:
        assert await conn.fetchval("SELECT version FROM schema_version") == SCHEMA_VERSION
        await conn.execute("UPDATE schema_version SET version = $1", SCHEMA_VERSION + 1)
    finally:
        await conn.close()
    with pytest.raises(SchemaError, match=f"schema version {SCHEMA_VERSION + 1}.*knows \\({SCHEMA_VERSION}\\)"):
        await PgLabelLog.open(pg_url, key, SRC)


async def test_the_log_is_append_only_in_the_database(pg_url, key):
    log = await PgLabelLog.open(pg_url, key, SRC)
    try:
        await log.emit(uri(1), "porn")
    finally:
        await log.close()
    conn = await asyncpg.connect(pg_url)
    try:
        for statement in ("DELETE FROM labels", "UPDATE labels SET val = 'x'", "TRUNCATE labels CASCADE"):
            with pytest.raises(asyncpg.RaiseError, match="append-only"):
                await conn.execute(statement)
    finally:
        await conn.close()


async def test_labels_survive_reopening_exactly_as_signed(pg_url, key):
    log = await PgLabelLog.open(pg_url, key, SRC)
    try:
        stored = await log.emit(uri(1), "porn", exp="2999-01-01T00:00:00Z")
    finally:
        await log.close()
    reopened = await PgLabelLog.open(pg_url, key, SRC)
    try:
        (again,) = await reopened.read_after(0, 10)
        assert again == stored and again.label.exp == "2999-01-01T00:00:00Z"
        assert verify_label(key.did_key, again.label)
        assert await reopened.head() == 1
    finally:
        await reopened.close()


async def test_each_instance_tells_its_listeners_every_commit_once_in_order(pg_url, key):
    async with PgLabelLog.connect(pg_url, key, SRC, poll_interval=5) as a, \
            PgLabelLog.connect(pg_url, key, SRC, poll_interval=5) as b:
        seen_a: list[int] = []
        seen_b: list[int] = []
        a.on_commit(lambda written: seen_a.extend(s.seq for s in written))
        b.on_commit(lambda written: seen_b.extend(s.seq for s in written))
        for i in range(20):
            writer = a if i % 3 else b
            await writer.emit_many([EmitRequest(uri(i * 10 + j), "porn") for j in range(i % 4 + 1)])
        head = await a.head()
        # b hears a's commits through NOTIFY (the 5 s poll is far longer than this wait)
        with anyio.fail_after(10):
            while len(seen_a) < head or len(seen_b) < head:
                await anyio.sleep(0.01)
    assert seen_a == seen_b == list(range(1, head + 1))


async def test_decisions_commit_or_roll_back_with_their_labels(pg_url, key):
    async with PgLabelLog.connect(pg_url, key, SRC) as log:
        async def explode(decisions, written):
            await decisions.write([DecisionRow(uri(1), None, "label", "porn", "policy", label_seq=written[0].seq)])
            raise RuntimeError("boom")

        with pytest.raises(RuntimeError):
            await log.emit_many([EmitRequest(uri(1), "porn")], also=explode)
        assert await log.head() == 0
        rows = []

        async def record(decisions, written):
            await decisions.write([DecisionRow(uri(1), None, "label", "porn", "policy", rule="r1",
                                               scanners={"text": "1"}, label_seq=written[0].seq)])
            rows.extend(await decisions.history(uri(1)))

        await log.emit_many([EmitRequest(uri(1), "porn")], also=record)
        assert await log.head() == 1
        assert [(r["action"], r["value"], r["label_seq"], r["rule"]) for r in rows] == [("label", "porn", 1, "r1")]

        async def review_then_explode(decisions, written):
            assert await decisions.write([], reviews=[(uri(2), None, "nudity", "unsure", [])]) == 1
            raise RuntimeError("boom")

        with pytest.raises(RuntimeError):  # the review item goes with the label that failed
            await log.emit_many([EmitRequest(uri(2), "porn")], also=review_then_explode)
        opened = []

        async def review(decisions, written):
            opened.append(await decisions.write([], reviews=[(uri(2), None, "nudity", "unsure", [])]))
            opened.extend(i.value for i in await decisions.review.waiting_for(uri(2)))

        await log.emit_many([EmitRequest(uri(2), "porn")], also=review)
        assert await log.head() == 2 and opened == [1, "nudity"]


async def test_an_operator_command_gives_up_on_a_held_write_lock_and_names_the_holder(pg_url, key):
    log = await PgLabelLog.open(pg_url, key, SRC, busy_wait=0.2)
    holder = await asyncpg.connect(pg_url, server_settings={"application_name": "long-writer"})
    try:
        async with holder.transaction():
            await holder.execute("SELECT pg_advisory_xact_lock($1)", WRITE_LOCK)
            with pytest.raises(DatabaseBusy, match="long-writer"):
                await log.emit(uri(1), "porn")
        assert (await log.emit(uri(1), "porn")).seq == 1  # the lock is free again
    finally:
        await holder.close()
        await log.close()


async def test_prefix_patterns_compare_by_code_point_in_any_database_locale(pg_url, key):
    async with PgLabelLog.connect(pg_url, key, SRC) as log:
        subjects = ["at://did:plc:a/x", "at://did:plc:A/x", "at://did:plc:a_/x", "at://did:plc:aé/x",
                    "at://did:plc:b/x"]
        for s in subjects:
            await log.emit(s, "porn")
        got = [s.label.uri for s in await log.query(["at://did:plc:a*"], [], 50)]
        assert got == ["at://did:plc:a/x", "at://did:plc:a_/x", "at://did:plc:aé/x"]
        assert [s.label.uri for s in await log.current_under("at://did:plc:a")] == sorted(got)


async def test_an_error_inside_connect_leaves_as_itself(pg_url, key):
    """The follower's task group must not wrap the caller's own error (the CLI reports it by type)."""
    with pytest.raises(LookupError, match="mine"):
        async with PgLabelLog.connect(pg_url, key, SRC):
            raise LookupError("mine")


async def test_a_dropped_listening_connection_is_replaced_and_nothing_is_missed(pg_url, key):
    async with PgLabelLog.connect(pg_url, key, SRC, poll_interval=0.1) as follower:
        seen: list[int] = []
        follower.on_commit(lambda written: seen.extend(s.seq for s in written))
        other = await PgLabelLog.open(pg_url, key, SRC)
        admin = await asyncpg.connect(pg_url)
        try:
            await other.emit(uri(1), "porn")
            with anyio.fail_after(10):
                while seen != [1]:
                    await anyio.sleep(0.01)
            killed = await admin.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE application_name = 'firehose-mod listen'")
            assert killed == 1
            await other.emit_many([EmitRequest(uri(i), "porn") for i in range(2, 6)])
            with anyio.fail_after(10):
                while len(seen) < 5:
                    await anyio.sleep(0.01)
            with anyio.fail_after(10):  # listening again
                while not await admin.fetchval(
                        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'firehose-mod listen'"):
                    await anyio.sleep(0.01)
            await other.emit(uri(6), "porn")
            with anyio.fail_after(10):
                while len(seen) < 6:
                    await anyio.sleep(0.01)
        finally:
            await admin.close()
            await other.close()
    assert seen == [1, 2, 3, 4, 5, 6]


async def test_an_import_keeps_its_cts_is_written_once_and_never_overrides_a_newer_label(pg_url, key):
    async with PgLabelLog.connect(pg_url, key, SRC) as log:
        old = EmitRequest(uri(1), "porn", cts="2024-01-01T00:00:00.000Z")
        (written,) = await log.emit_many([old, old])  # the repeat inside the batch is skipped too
        assert written.label.cts == old.cts and verify_label(key.did_key, written.label)
        assert await log.emit_many([old]) == []  # imported before
        negated = EmitRequest(uri(1), "porn", neg=True, cts="2024-02-01T00:00:00.000Z")
        assert [s.label.neg for s in await log.emit_many([negated])] == [True]
        older = EmitRequest(uri(1), "porn", cts="2023-06-01T00:00:00.000Z")
        assert await log.emit_many([older]) == []  # our latest label on (uri, val) is newer
        assert [s.seq for s in await log.history(uri(1))] == [1, 2]


async def test_an_unreachable_server_is_named_without_the_password(key):
    port = free_port()  # nothing listens there
    url = f"postgresql://firehose:s3cret@127.0.0.1:{port}/labels"
    with pytest.raises(DatabaseUnreachable, match=f"at postgresql://127.0.0.1:{port}/labels as firehose") as info:
        await PgLabelLog.open(url, key, SRC)
    assert "s3cret" not in str(info.value)


def test_both_backends_offer_every_method_of_the_seam_with_the_same_parameters():
    import inspect

    from firehose_mod.store import LabelLog
    from firehose_mod.store.seam import LabelStore

    methods = [n for n, v in vars(LabelStore).items() if callable(v) and not n.startswith("_")]
    assert "emit_many" in methods and "cbor_after" in methods
    for name in methods:
        wanted = list(inspect.signature(getattr(LabelStore, name)).parameters)
        for cls in (LabelLog, PgLabelLog):
            assert list(inspect.signature(getattr(cls, name)).parameters) == wanted, (cls.__name__, name)


async def test_a_query_over_its_time_budget_is_stopped(pg_url, key):
    from firehose_mod.store.query import BudgetExceeded, QueryBudget

    log = await PgLabelLog.open(pg_url, key, SRC)
    conn = await asyncpg.connect(pg_url)
    try:
        # 100k state rows, quicker in SQL than signed: a source filter nothing matches walks them all.
        await conn.execute(
            "INSERT INTO labels (seq, src, uri, val, neg, cts, sig, key_id, cbor)"
            " SELECT g, $1, 'at://did:plc:x/fm.plyr.track/' || g, 'porn', false, '2026-01-01T00:00:00.000Z',"
            " '\\x00', 'did:key:x', '\\x00' FROM generate_series(1, 100000) g", SRC)
        await conn.execute("INSERT INTO label_state (uri, val, src, seq) SELECT uri, val, src, seq FROM labels")
        await conn.execute("ANALYZE")
        with pytest.raises(BudgetExceeded, match="time"):
            await log.query(["*"], ["did:web:nobody"], 50, budget=QueryBudget(seconds=0.001))
        assert await log.query(["*"], ["did:web:nobody"], 50) == []  # within the default budget
        assert len(await log.query(["*"], [], 50)) == 50  # the pool connection is usable again
    finally:
        await conn.close()
        await log.close()
