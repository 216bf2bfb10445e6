"""The review desk's behaviour on both backends: SQLite (store/review.py, review_work.py,
decisions.py) and PostgreSQL (store/pg/review.py, review_writer.py, review_work.py, decisions.py,
review_decisions.py). Each test runs once per backend; the stores are opened through
store/open.py's factories, the label log is the `label_log` fixture's (a PgLabelLog on PostgreSQL),
so what is tested is what the daemon and the CLI wire. tests/test_review_desk.py covers the
desk's rules in depth on SQLite; here, that each of them holds on PostgreSQL too.
"""

from __future__ import annotations

import sqlite3
from contextlib import AsyncExitStack

import aiosqlite
import anyio
import asyncpg
import pytest

from firehose_mod.labels.model import now_iso
from firehose_mod.ops.explain import explain
from firehose_mod.review.actors import Actor, Operators, system_actor
from firehose_mod.review.desk import ReviewDesk
from firehose_mod.store import EmitRequest
from firehose_mod.store.decisions import DecisionRow, DecisionStore
from firehose_mod.store.open import open_decision_store, open_operator_store, open_report_store, open_review_store
from firehose_mod.store.pg.decisions import PgDecisionStore
from firehose_mod.store.pg.review import PgReviewStore
from firehose_mod.store.review import ItemQuery, ReviewStore
from firehose_mod.store.review_work import NOT_CONFIGURED
from tests.conftest import uri
from tests.helpers.review import CID1, CID2, FINDING, Desk

pytestmark = pytest.mark.anyio

LABEL_LOG_BACKENDS = ("sqlite", "postgres")
VALUE = "copyright-violation"
REFUSED = (sqlite3.DatabaseError, asyncpg.PostgresError)


@pytest.fixture
async def d(settings, label_log, backend):
    """The desk over this backend's stores, with alice (admin), mo (moderator), bot (agent)."""
    async with AsyncExitStack() as stack:
        store = await stack.enter_async_context(open_review_store(settings))
        decisions = await stack.enter_async_context(open_decision_store(settings))
        operators = Operators(await stack.enter_async_context(open_operator_store(settings)))
        expected = (PgReviewStore, PgDecisionStore) if backend == "postgres" else (ReviewStore, DecisionStore)
        assert (type(store), type(decisions)) == expected
        root = system_actor("test-bootstrap")
        root = Actor(root.kind, root.name, "admin", "local")
        actors = []
        for name, role in (("alice", "admin"), ("mo", "moderator"), ("bot", "agent")):
            row, _token = await operators.add(root, name, role)
            actors.append(Actor.of(row, "local"))
        yield Desk(ReviewDesk(label_log, store, operators), store, operators, decisions, label_log, *actors)


async def _raw(settings, sql: str) -> None:
    """One statement on a connection of its own (SQL both dialects read, no parameters)."""
    if settings.database_url:
        conn = await asyncpg.connect(settings.database_url)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()
    else:
        async with aiosqlite.connect(settings.db_path, isolation_level=None) as conn:
            await conn.execute(sql)


async def _scan_opens(d: Desk, subject: str, cid: str | None = CID1, value: str = VALUE) -> int:
    """Open (or find) an item the way the scan engine does: in the label log's transaction."""
    opened = []

    async def record(dw, written) -> None:
        opened.append(await dw.write([DecisionRow(subject, cid, "review", value, "policy", rule="copyright-review",
                                                  evidence=[FINDING])],
                                     [(subject, cid, value, "policy rule copyright-review", [FINDING])]))

    await d.label_log.emit_many([], also=record)
    return opened[0]


async def _item_id(d: Desk, subject: str, value: str = VALUE) -> int:
    return next(i.id for i in await d.decisions.open_reviews(subject) if i.value == value)


async def test_a_scan_opens_an_item_once_with_a_report_event_by_the_policy(d):
    assert await _scan_opens(d, uri(1)) == 1
    assert await _scan_opens(d, uri(1)) == 0  # a rescan while it waits: no second item
    item_id = await _item_id(d, uri(1))
    item = (await d.store.items([item_id]))[item_id]
    assert (item.status, item.review_state, item.kind, item.source, item.cid, item.evidence) == (
        "open", "reviewOpen", "copyright", "scan", CID1, [FINDING])
    [event] = await d.store.events(item_id)
    assert (event.event_type, event.action, event.actor_kind, event.actor_name, event.state_after) == (
        "modEventReport", "open", "system", "policy", "open")
    assert event.payload["evidence"][0]["evidence"]["seconds_matched"] == 21.5 and item.last_event == event.id
    assert [r["action"] for r in await d.decisions.history(uri(1))] == ["review", "review"]
    assert await d.decisions.counts() == {"open": 1, "resolved": 0}
    assert await d.decisions.settled_reviews(uri(1), CID1) == {VALUE}


async def test_confirm_writes_the_label_the_event_and_the_decision_in_one_commit(d):
    await _scan_opens(d, uri(1))
    item_id = await _item_id(d, uri(1))
    outcome = await d.desk.confirm(d.moderator, [item_id], reason="a full re-upload")
    [step] = outcome.steps
    assert (step.before, step.after, step.emit, step.error) == ("open", "confirmed", [VALUE], None)
    [label] = await d.label_log.history(uri(1))
    assert step.labels == [{"seq": label.seq, "val": VALUE, "neg": False}] and label.label.cid == CID1
    events = await d.store.events(item_id)
    assert [(e.action, e.event_type, e.actor_name, e.labels) for e in events] == [
        ("open", "modEventReport", "policy", []), ("confirm", "modEventLabel", "mo", step.labels)]
    item = (await d.store.items([item_id]))[item_id]
    assert (item.status, item.state, item.resolution, item.resolved_by, item.last_event) == (
        "confirmed", "resolved", "confirmed", "mo", events[-1].id)
    assert await d.decisions.automatic_values(uri(1)) == {VALUE: "human"}
    expl = await explain(d.label_log, d.decisions, uri(1))
    assert expl.labels[0].decision.origin == "human" and expl.labels[0].decision.actor == "mo"
    assert [e.action for e in expl.reviews[0].events] == ["open", "confirm"]


async def test_a_failed_event_write_leaves_no_label_and_no_event(d, monkeypatch):
    await _scan_opens(d, uri(1))
    item_id = await _item_id(d, uri(1))

    async def broken(*args, **kwargs):
        raise RuntimeError("the disk went away")

    monkeypatch.setattr("firehose_mod.store.review.ReviewWriter.append", broken)
    monkeypatch.setattr("firehose_mod.store.pg.review_writer.PgReviewWriter.append", broken)
    with pytest.raises(RuntimeError, match="disk went away"):
        await d.desk.confirm(d.moderator, [item_id])
    assert await d.label_log.count() == 0 and await d.label_log.head() == 0
    assert [e.action for e in await d.store.events(item_id)] == ["open"]
    assert (await d.store.items([item_id]))[item_id].status == "open"
    assert [r["action"] for r in await d.decisions.history(uri(1))] == ["review"]


async def test_overturning_a_confirmation_negates_the_label_and_a_person_is_not_asked_again(d):
    await _scan_opens(d, uri(1))
    item_id = await _item_id(d, uri(1))
    await d.desk.confirm(d.moderator, [item_id])
    outcome = await d.desk.reject(d.moderator, [item_id], reason="the uploader holds the licence")
    [step] = outcome.steps
    assert (step.negate, step.payload["overturns"], step.after) == ([VALUE], "confirmed", "rejected")
    assert await d.label_log.in_force(uri(1)) == []
    assert [s.label.neg for s in await d.label_log.history(uri(1))] == [False, True]
    assert await d.decisions.automatic_values(uri(1)) == {VALUE: "negated-by-human"}
    assert await d.decisions.overruled(uri(1), CID1) == {VALUE} and await d.decisions.overruled(uri(1), CID2) == set()
    # The same version scanned again is not asked about again; a new version is.
    assert await _scan_opens(d, uri(1), CID1) == 0
    assert await _scan_opens(d, uri(1), CID2) == 1
    assert await d.store.rebuild_status() == {i.id: i.status for i in await d.decisions.reviews_for(uri(1))}


@pytest.mark.parametrize(("path", "action", "expected"), [
    ((), "propose", "proposed"),
    ((), "escalate", "escalated"),
    ((), "allow", "allowed"),
    (("propose:reject",), "accept", "rejected"),
    (("propose:reject",), "confirm", "confirmed"),
    (("confirm",), "allow", "allowed"),
    (("confirm",), "confirm", "already decided this way"),
    ((), "accept", "no pending proposal"),
])
async def test_transitions_and_the_state_rebuilt_from_the_events(d, path, action, expected):
    await _scan_opens(d, uri(1))
    item_id = await _item_id(d, uri(1))
    for step in path:
        name, _, decision = step.partition(":")
        await _act(d, name, item_id, decision)
    [step] = (await _act(d, action, item_id, "reject")).steps
    item = (await d.store.items([item_id]))[item_id]
    if expected.isidentifier():
        assert step.error is None and step.after == expected == item.status
    else:
        assert expected in step.error
    assert await d.store.rebuild_status() == {item_id: item.status}
    proposal = await d.store.event(item.proposal_event) if item.proposal_event else None
    assert (proposal.action if proposal else None) == ("propose" if item.status == "proposed" else None)


async def _act(d, action, item_id, decision):
    if action == "propose":
        return await d.desk.propose(d.agent, [item_id], decision, reason="the uploader's own stem")
    return await getattr(d.desk, action)(d.moderator, [item_id], reason=f"{action} by hand")


async def test_a_delete_closes_the_waiting_items_with_the_negations(d):
    for n in (1, 2, 3):
        await _scan_opens(d, uri(n))
    await d.label_log.emit(uri(1), "porn")

    async def deleted(dw, written) -> None:  # what the scan engine does on a delete
        await dw.write([DecisionRow(uri(1), None, "negate", s.label.val, "delete", label_seq=s.seq) for s in written])
        assert await dw.resolve_reviews(uri(1), "content-deleted", "firehose-mod") == 1

    await d.label_log.emit_many([EmitRequest(uri(1), "porn", neg=True)], also=deleted)
    assert await d.decisions.resolve_reviews(uri(2), "no longer relevant", "ops") == 1
    assert await d.decisions.resolve_reviews(uri(2), "no longer relevant", "ops") == 0
    closed = {i.uri: i for i in await d.store.query(ItemQuery(statuses=("content-deleted", "resolved")))}
    assert (closed[uri(1)].status, closed[uri(1)].resolution, closed[uri(1)].resolved_by) == (
        "content-deleted", "content-deleted", "firehose-mod")
    assert (closed[uri(2)].status, closed[uri(2)].resolution) == ("resolved", "no longer relevant")
    [_, gone] = await d.decisions.review_events(uri(1))
    assert (gone.event_type, gone.action, gone.actor_kind, gone.reason) == (
        "recordEvent", "delete", "system", "content-deleted")
    assert [i.uri for i in await d.decisions.open_reviews()] == [uri(3)]
    assert await d.label_log.in_force(uri(1)) == []
    counts = await d.store.counts()
    assert (counts["open"], counts["content-deleted"], counts["resolved"], counts["confirmed"]) == (1, 1, 1, 0)


async def test_an_item_opened_by_hand_and_a_report_joining_it_commit_together(d, settings):
    await _raw(settings, "INSERT INTO tracks (uri, did, rkey, cid, record, deleted, first_seen, updated) VALUES"
                         f" ('{uri(5)}', 'did:plc:uploader', 'x', '{CID2}', '{{\"title\": \"Warriors\"}}', false,"
                         " '2026-01-01T00:00:00.000Z', '2026-01-01T00:00:00.000Z')")
    assert await d.store.track_record(uri(5)) == (CID2, {"title": "Warriors"})
    assert await d.store.track_record(uri(6)) == (None, None)
    outcome = await d.desk.open(d.moderator, uri(5), "porn", reason="seen on the front page")
    [step] = outcome.steps
    item = (await d.store.items([step.item_id]))[step.item_id]
    assert (step.error, item.cid, item.source, item.kind) == (None, CID2, "hand", "other")
    assert "already waiting" in (await d.desk.open(d.moderator, uri(5), "porn", reason="again")).steps[0].error

    async def report(dw, _written) -> None:
        await dw.review.append(item, "comment", d.moderator, reason="a report joined it")
        await dw.reports.add(reporter="did:plc:alice", via_service=None, reason_type="x#reasonOther", reason=None,
                             subject={"uri": uri(5)}, subject_uri=uri(5), subject_cid=None,
                             subject_did="did:plc:uploader", appeal=False, value="porn", item_id=item.id,
                             counter_notice=None, mod_tool=None, created=now_iso())

    await d.label_log.emit_many([], also=report)
    async with open_report_store(settings) as reports:
        assert [r.reporter for r in await reports.for_item(item.id)] == ["did:plc:alice"]
    assert [e.action for e in await d.store.events(item.id)] == ["open", "comment"]
    assert (await d.store.items([item.id]))[item.id].status == "open"


async def test_the_queue_filters_pages_and_counts(d):
    await _scan_opens(d, uri(1))
    await _scan_opens(d, uri(2), value="porn")
    await _scan_opens(d, uri(3, did="did:plc:other"))
    ids = [i.id for i in await d.store.query(ItemQuery())]
    assert len(ids) == 3 and ids == sorted(ids)
    assert [i.uri for i in await d.store.query(ItemQuery(uploader="did:plc:other"))] == [uri(3, did="did:plc:other")]
    assert [i.uri for i in await d.store.query(ItemQuery(values=("porn",)))] == [uri(2)]
    assert [i.id for i in await d.store.query(ItemQuery(newest_first=True, limit=2))] == ids[:0:-1]
    assert [i.id for i in await d.store.query(ItemQuery(after_id=ids[0]))] == ids[1:]
    assert [i.id for i in await d.store.query(ItemQuery(ids=(ids[2], ids[0])))] == [ids[0], ids[2]]
    assert await d.store.query(ItemQuery(statuses=("confirmed",))) == []
    assert (await d.store.kind_counts(("open",)))["copyright"] == 3
    assert [i.uri for i in await d.decisions.open_reviews_under("at://did:plc:uploader/")] == [uri(1), uri(2)]
    assert set(await d.decisions.uris_under("at://did:plc:uploader/")) == {uri(1), uri(2)}
    assert await d.store.items([]) == {} and set(await d.store.items([*ids, 999])) == set(ids)


async def test_batches_and_seen_marks(d):
    for n in (1, 2, 3):
        await _scan_opens(d, uri(n))
    ids = [i.id for i in await d.store.query(ItemQuery())]
    assert await d.store.unannounced(10) == ids
    batch = await d.desk.create_batch(d.agent, [ids[2], ids[0], ids[2]])
    assert (batch.items, batch.created_by, batch.notify) == ([ids[2], ids[0]], "bot", False)
    assert await d.store.batch(batch.id) == batch and await d.store.batch("nope") is None
    with pytest.raises(LookupError):
        await d.desk.create_batch(d.moderator, [ids[0], 999])
    assert await d.store.unannounced(10) == ids  # a shared link tells nobody
    assert [i.id for i in await d.desk.batch(d.moderator, batch.id)] == [ids[2], ids[0]]
    assert await d.store.unannounced(10) == [ids[1]]  # an operator opened the batch: seen
    await d.store.mark_seen([ids[1]], "alice")
    await d.store.mark_seen([ids[1]], "mo")  # the first look is the one kept
    assert await d.store.unannounced(10) == []


async def test_notices_are_made_once_and_retried_until_delivered(d):
    for n in (1, 2):
        await _scan_opens(d, uri(n))
    ids = await d.store.unannounced(10)
    assert await d.store.last_notice() is None and await d.store.undelivered_notice() is None
    notice = await d.store.create_notice(ids, ["webhook"])
    assert (notice.notify, notice.created_by, notice.webhook_sent, notice.dm_sent) == (
        True, "notifier", None, NOT_CONFIGURED)
    assert await d.store.unannounced(10) == [] and await d.store.last_notice() == notice.created
    await d.store.notice_failed(notice.id, "HTTP 502 " + "x" * 600)
    pending = await d.store.undelivered_notice()
    assert (pending.id, pending.attempts, len(pending.last_error), pending.delivered) == (notice.id, 1, 500, False)
    await d.store.notice_sent(notice.id, "webhook")
    assert (await d.store.batch(notice.id)).delivered and await d.store.undelivered_notice() is None


async def test_triage_calls_their_spend_and_the_candidates(d):
    for n in (1, 2, 3):
        await _scan_opens(d, uri(n))
    a, b, c = [i.id for i in await d.store.query(ItemQuery())]
    before = now_iso()
    await anyio.sleep(0.002)
    first = await d.store.record_call(a, "bot", "anthropic", "m", "timeout", error="e" * 900, attempts=3,
                                      input_tokens=10, output_tokens=2, cost_usd=0.25, seconds=1.5)
    await d.store.record_call(b, "bot", "anthropic", "m", "proposed", verdict="VIOLATION", cost_usd=0.5)
    [call] = await d.store.calls_for(a)
    assert (call.id, call.outcome, len(call.error), call.attempts, call.cost_usd, call.seconds, call.verdict) == (
        first, "timeout", 500, 3, 0.25, 1.5, None)
    assert call.to_json()["input_tokens"] == 10
    assert await d.store.spend_since(before) == pytest.approx(0.75)
    assert await d.store.spend_since("2999-01-01T00:00:00.000Z") == 0.0
    # b has a final answer; a was tried once (allowed up to 2), then twice (no more).
    assert await d.store.triage_candidates(("copyright",), 10, 2) == [a, c]
    await d.store.record_call(a, "bot", "anthropic", "m", "error")
    assert await d.store.triage_candidates(("copyright",), 10, 2) == [c]
    assert await d.store.triage_candidates(("cover-art",), 10, 2) == []


async def test_the_moderation_event_log_is_append_only_in_the_database(d, settings):
    await _scan_opens(d, uri(1))
    for statement in ("UPDATE moderation_event SET reason = 'rewritten'", "DELETE FROM moderation_event"):
        with pytest.raises(REFUSED, match="append-only"):
            await _raw(settings, statement)
    if settings.database_url:
        with pytest.raises(asyncpg.RaiseError, match="append-only"):
            await _raw(settings, "TRUNCATE moderation_event")
    [event] = await d.decisions.review_events(uri(1))
    assert event.reason == "policy rule copyright-review"


async def test_two_writers_opening_the_same_item_open_it_once(d, settings):
    async with open_decision_store(settings) as other:
        opened = []

        async def open_with(store) -> None:
            opened.append(await store.record([], [(uri(1), CID1, VALUE, "policy", [FINDING])]))

        async with anyio.create_task_group() as tg:
            for store in (d.decisions, other, d.decisions, other):
                tg.start_soon(open_with, store)
    assert sorted(opened) == [0, 0, 0, 1]
    [item] = await d.decisions.reviews_for(uri(1))
    assert [e.action for e in await d.store.events(item.id)] == ["open"]


async def test_a_read_only_decision_store_reads_but_cannot_write(d, settings):
    await _scan_opens(d, uri(1))
    async with open_decision_store(settings, readonly=True) as readonly:
        assert [i.uri for i in await readonly.open_reviews()] == [uri(1)]
        with pytest.raises(REFUSED):
            await readonly.record([DecisionRow(uri(2), None, "none", None, "policy")])
    assert await d.decisions.history(uri(2)) == []


async def test_open_review_wires_the_desk_on_the_backend_of_the_settings(settings, label_log, backend):
    from firehose_mod.review.service import open_review

    async with open_review(settings, label_log) as services:
        assert isinstance(services.store, PgReviewStore if backend == "postgres" else ReviewStore)
        root = Actor("system", "test-bootstrap", "admin", "local")
        row, _token = await services.operators.add(root, "mo", "moderator")
        mo = Actor.of(row, "local")
        [step] = (await services.desk.open(mo, uri(1), "porn", reason="by hand")).steps
        [step] = (await services.desk.confirm(mo, [step.item_id])).steps
        assert (step.after, step.error) == ("confirmed", None)
        assert [x.val for x in await label_log.in_force(uri(1))] == ["porn"]
        assert services.metrics()["desk"] == {"confirm": 1, "open": 1}


@pytest.mark.slow
def test_the_review_commands_run_on_postgresql(tmp_path, pg_url):
    """`firehose-mod review ...` as real processes with FIREHOSE_MOD_DATABASE_URL: nothing in SQLite."""
    import json

    from tests.procs import env_for, run_cli

    subject = "at://did:plc:ewvi7nxzyoun6zhxrhs64oiz/fm.plyr.track/3kabc"
    env = env_for(tmp_path / "var", FIREHOSE_MOD_DATABASE_URL=pg_url)
    run_cli("key", "create", env=env)
    run_cli("operator", "add", "alice", "--role", "admin", env=env)
    run_cli("operator", "add", "mo", "--role", "moderator", "--as", "alice", env=env)
    opened = json.loads(run_cli("review", "open", subject, "copyright-violation", "--reason", "by mail",
                                "--as", "mo", "--json", env=env).stdout)
    item = opened["items"][0]["id"]
    done = run_cli("review", "confirm", str(item), "--as", "mo", env=env).stdout
    assert f"#{item} confirm: open -> confirmed, wrote +copyright-violation" in done
    shown = json.loads(run_cli("review", "show", str(item), "--json", "--as", "mo", env=env).stdout)
    assert [e["action"] for e in shown["events"]] == ["open", "confirm"]
    assert shown["in_force"] == ["copyright-violation"]
    assert not (tmp_path / "var" / "firehose-mod.sqlite3").exists()


async def test_a_read_only_decision_store_does_not_migrate_an_unmigrated_postgresql(pg_url):
    from firehose_mod.store import SchemaError

    with pytest.raises(SchemaError, match="schema version 0 .*a read-only open does not migrate"):
        await PgDecisionStore.open(pg_url, readonly=True)
    conn = await asyncpg.connect(pg_url)
    try:
        assert await conn.fetchval("SELECT to_regclass('review_items')") is None
    finally:
        await conn.close()
    store = await PgDecisionStore.open(pg_url)  # a writable open migrates; read-only then opens
    await store.close()
    readonly = await PgDecisionStore.open(pg_url, readonly=True)
    try:
        assert await readonly.open_reviews() == []
    finally:
        await readonly.close()


async def test_two_processes_acting_on_one_item_at_once_write_one_consistent_history(d, settings):
    from firehose_mod.daemon import open_label_log

    await _scan_opens(d, uri(1))
    item_id = await _item_id(d, uri(1))
    async with open_label_log(settings) as other_log, open_review_store(settings) as other_store:
        other = ReviewDesk(other_log, other_store, d.operators)  # another process: its own connections
        steps = []

        async def act(desk, action) -> None:
            steps.extend((await getattr(desk, action)(d.moderator, [item_id])).steps)

        for _round in range(3):
            async with anyio.create_task_group() as tg:
                tg.start_soon(act, d.desk, "confirm")
                tg.start_soon(act, other, "reject")
    done = [s for s in steps if s.error is None]
    # An action that found the item already decided its way says so; every other one is an event
    # planned on the state the one before it left (none lost, none planned on a stale state).
    assert all("already decided this way" in s.error for s in steps if s.error) and len(done) >= 3
    events = await d.store.events(item_id)
    assert [e.id for e in events[1:]] == sorted(s.event_id for s in done)
    for before, after in zip(events, events[1:]):
        assert after.state_before == before.state_after != after.state_after
    item = (await d.store.items([item_id]))[item_id]
    assert await d.store.rebuild_status() == {item_id: item.status} and item.last_event == events[-1].id
    in_force = [x.val for x in await d.label_log.in_force(uri(1))]
    assert in_force == ([VALUE] if item.status == "confirmed" else [])
