"""The review desk: every state transition, the event log, labels and events in one transaction."""

from __future__ import annotations

import sqlite3

import pytest

from firehose_mod.ops.explain import explain
from firehose_mod.review import states as st
from firehose_mod.review.actors import system_actor
from firehose_mod.store.review import ItemQuery
from tests.conftest import uri
from tests.helpers.review import CID1, CID2

pytestmark = pytest.mark.anyio
VALUE = "copyright-violation"


async def test_a_scan_opens_an_item_with_a_report_event_by_the_policy(d):
    item_id = await d.scan_opens(uri(1))
    view = await d.desk.show(d.moderator, item_id)
    assert (view.item.status, view.item.review_state, view.item.kind, view.item.source) == (
        "open", "reviewOpen", "copyright", "scan")
    [event] = view.events
    assert (event.event_type, event.action, event.actor_kind, event.actor_name, event.state_after) == (
        "modEventReport", "open", "system", "policy", "open")
    assert event.payload["evidence"][0]["evidence"]["seconds_matched"] == 21.5
    # The same finding on a rescan does not open a second item while this one waits.
    await d.scan_opens(uri(1))
    assert [i.id for i in await d.desk.list(d.moderator)] == [item_id]


async def test_confirm_emits_the_label_with_its_event_and_decision_in_one_commit(d):
    item_id = await d.scan_opens(uri(1))
    outcome = await d.desk.confirm(d.moderator, [item_id], reason="a full re-upload of Warriors")
    [step] = outcome.steps
    assert (step.before, step.after, step.emit, step.error) == ("open", "confirmed", [VALUE], None)
    [label] = await d.label_log.history(uri(1))
    assert step.labels == [{"seq": label.seq, "val": VALUE, "neg": False}] and label.label.cid == CID1
    events = await d.store.events(item_id)
    assert (events[-1].event_type, events[-1].actor_name, events[-1].actor_via, events[-1].reason) == (
        "modEventLabel", "mo", "local", "a full re-upload of Warriors")
    # The decision behind the label is a human one: a rescan never negates it.
    assert await d.decisions.automatic_values(uri(1)) == {VALUE: "human"}
    expl = await explain(d.label_log, d.decisions, uri(1))
    assert expl.labels[0].decision.origin == "human" and expl.labels[0].decision.actor == "mo"
    assert [e.action for e in expl.reviews[0].events] == ["open", "confirm"]


async def test_a_failed_event_write_leaves_no_label(d, monkeypatch):
    item_id = await d.scan_opens(uri(1))

    async def broken(*args, **kwargs):
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr("firehose_mod.store.review.ReviewWriter.append", broken)
    with pytest.raises(sqlite3.OperationalError):
        await d.desk.confirm(d.moderator, [item_id])
    assert await d.label_log.history(uri(1)) == [] and await d.label_log.count() == 0
    assert [e.action for e in await d.store.events(item_id)] == ["open"]


async def test_dry_run_says_what_it_would_emit_and_writes_nothing(d):
    item_id = await d.scan_opens(uri(1))
    outcome = await d.desk.confirm(d.moderator, [item_id], dry_run=True)
    assert outcome.dry_run and outcome.steps[0].emit == [VALUE] and outcome.steps[0].event_id is None
    assert await d.label_log.count() == 0 and len(await d.store.events(item_id)) == 1


@pytest.mark.parametrize(("path", "action", "expected"), [
    ((), "propose", "proposed"),
    ((), "escalate", "escalated"),
    ((), "confirm", "confirmed"),
    ((), "reject", "rejected"),
    ((), "allow", "allowed"),
    ((), "comment", "open"),
    (("propose:reject",), "accept", "rejected"),
    (("propose:confirm",), "accept", "confirmed"),
    (("propose:reject",), "confirm", "confirmed"),  # a moderator overturns the proposal
    (("propose:reject",), "propose", "proposed"),  # a second opinion replaces the first
    (("escalate",), "confirm", "confirmed"),
    (("escalate",), "allow", "allowed"),
    (("escalate",), "propose", "cannot propose an item that is escalated"),
    (("confirm",), "reject", "rejected"),  # overturned: the label is negated
    (("confirm",), "allow", "allowed"),
    (("reject",), "confirm", "confirmed"),
    (("confirm",), "confirm", "already decided this way"),
    (("confirm",), "escalate", "cannot escalate an item that is confirmed"),
    ((), "accept", "no pending proposal"),
    (("confirm",), "comment", "confirmed"),
])
async def test_every_transition(d, path, action, expected):
    item_id = await d.scan_opens(uri(1))
    for step in path:
        name, _, decision = step.partition(":")
        await _do(d, name, item_id, decision)
    outcome = await _do(d, action, item_id, "reject")
    [step] = outcome.steps
    if expected in st.STATUSES:
        assert step.error is None and step.after == expected
        assert (await d.store.items([item_id]))[item_id].status == expected
    else:
        assert expected in step.error
    assert await d.store.rebuild_status() == {item_id: (await d.store.items([item_id]))[item_id].status}


async def _do(d, action, item_id, decision):
    if action == "propose":
        return await d.desk.propose(d.agent, [item_id], decision, reason="the match is the uploader's own stem")
    if action == "comment":
        return await d.desk.comment(d.moderator, [item_id], reason="asked the uploader")
    return await getattr(d.desk, action)(d.moderator, [item_id], reason=f"{action} by hand")


async def test_overturning_a_confirmation_negates_the_label_and_says_so(d):
    item_id = await d.scan_opens(uri(1))
    await d.desk.confirm(d.moderator, [item_id])
    outcome = await d.desk.reject(d.moderator, [item_id], reason="the uploader holds the licence")
    assert outcome.steps[0].negate == [VALUE] and outcome.steps[0].payload["overturns"] == "confirmed"
    assert await d.label_log.in_force(uri(1)) == []
    assert (await d.store.events(item_id))[-1].labels[0]["neg"] is True


async def test_a_proposal_records_the_agent_and_an_overturn_records_the_disagreement(d):
    item_id = await d.scan_opens(uri(1))
    proposed = await d.desk.propose(d.agent, [item_id], "reject", reason="a cover by the same artist")
    assert proposed.steps[0].after == "proposed" and await d.label_log.count() == 0
    view = await d.desk.show(d.moderator, item_id)
    assert (view.proposal.actor_kind, view.proposal.actor_name, view.proposal.payload["decision"]) == (
        "agent", "bot", "reject")
    outcome = await d.desk.confirm(d.moderator, [item_id])
    assert outcome.steps[0].payload == {"proposal": view.proposal.id, "proposed_by": "bot",
                                        "agrees_with_proposal": False}


async def test_batch_actions_apply_what_they_can_and_report_the_rest(d):
    ids = [await d.scan_opens(uri(n)) for n in range(3)]
    await d.desk.confirm(d.moderator, [ids[0]])
    outcome = await d.desk.confirm(d.moderator, [*ids, 999])
    assert [s.error is None for s in outcome.steps] == [False, True, True, False]
    assert "no review item #999" in outcome.steps[3].error
    assert sorted(s.label.uri for s in await d.label_log.read_after(0, 10)) == [uri(0), uri(1), uri(2)]


async def test_an_item_changed_under_an_action_is_planned_again(d, monkeypatch):
    item_id = await d.scan_opens(uri(1))
    desk, real_write = d.desk, d.desk._write
    calls = []

    async def racing_write(actor, reason, steps):
        if not calls:  # someone else confirms between our plan and our write
            calls.append(1)
            await real_write(d.moderator, "the other moderator", [
                (await d.desk._plan(d.moderator, "confirm", (await d.store.items([item_id]))[item_id], item_id,
                                    None))])
        await real_write(actor, reason, steps)

    monkeypatch.setattr(desk, "_write", racing_write)
    outcome = await desk.escalate(d.moderator, [item_id])
    assert "cannot escalate an item that is confirmed" in outcome.steps[0].error
    assert desk.stats["conflicts"] == 1 and [e.action for e in await d.store.events(item_id)] == ["open", "confirm"]


async def test_the_system_applies_only_false_positive_proposals(d):
    a, b = await d.scan_opens(uri(1)), await d.scan_opens(uri(2))
    await d.desk.propose(d.agent, [a], "reject", reason="fp")
    await d.desk.propose(d.agent, [b], "confirm", reason="violation")
    outcome = await d.desk.accept(system_actor("triage-auto-apply"), [a, b])
    assert outcome.steps[0].after == "rejected"
    assert "applies only proposals to reject" in outcome.steps[1].error
    assert await d.label_log.count() == 0


async def test_open_by_hand_and_content_deleted(d):
    outcome = await d.desk.open(d.moderator, uri(5), "sexual", reason="reported by email")
    item_id = outcome.steps[0].item_id
    again = await d.desk.open(d.moderator, uri(5), "sexual", reason="twice")
    assert f"already waiting as #{item_id}" in again.steps[0].error
    item = (await d.store.items([item_id]))[item_id]
    assert (item.source, item.kind, item.status) == ("hand", "other", "open")
    # The engine's delete path closes it as content-deleted, recorded as Ozone's #recordEvent.
    assert await d.decisions.resolve_reviews(uri(5), "content-deleted", "firehose-mod") == 1
    events = await d.store.events(item_id)
    assert (events[-1].event_type, events[-1].state_after, events[-1].actor_kind) == (
        "recordEvent", "content-deleted", "system")
    assert (await d.store.items([item_id]))[item_id].review_state == "reviewClosed"


async def test_a_decided_question_is_not_asked_again_for_the_same_version(d):
    item_id = await d.scan_opens(uri(1))
    await d.desk.reject(d.moderator, [item_id])
    await d.decisions.record([], [(uri(1), CID1, VALUE, "policy rule copyright-review", [])])
    assert await d.desk.list(d.moderator) == []
    await d.decisions.record([], [(uri(1), CID2, VALUE, "policy rule copyright-review", [])])
    assert [i.cid for i in await d.desk.list(d.moderator)] == [CID2]


async def test_the_event_log_is_append_only(d, settings):
    item_id = await d.scan_opens(uri(1))
    await d.desk.confirm(d.moderator, [item_id])
    db = sqlite3.connect(settings.db_path)
    try:
        for sql in ("UPDATE moderation_event SET reason = 'rewritten'", "DELETE FROM moderation_event"):
            with pytest.raises(sqlite3.IntegrityError, match="append-only"):
                db.execute(sql)
    finally:
        db.close()
    assert len(await d.store.events(item_id)) == 2


async def test_the_queue_filters_by_state_kind_value_and_uploader(d):
    a = await d.scan_opens(uri(1))
    b = await d.scan_opens(uri(2, did="did:plc:other"), value="sexual",
                           findings=[{"scanner": "cover-art", "kind": "nsfw", "score": 0.7, "evidence": {}}])
    await d.desk.escalate(d.moderator, [b])
    q = d.desk.list
    assert [i.id for i in await q(d.agent, ItemQuery(statuses=("escalated",)))] == [b]
    assert [i.id for i in await q(d.agent, ItemQuery(kinds=("copyright",)))] == [a]
    assert [i.id for i in await q(d.agent, ItemQuery(uploader="did:plc:other"))] == [b]
    assert [i.id for i in await q(d.agent, ItemQuery(newest_first=True))] == [b, a]
    assert [i.id for i in await q(d.agent, ItemQuery(values=("sexual",)))] == [b]


async def test_settled_reviews_name_what_a_rescan_would_not_reopen(d):
    a = await d.scan_opens(uri(1))
    await d.scan_opens(uri(1), value="sexual")
    await d.desk.reject(d.moderator, [a])
    assert await d.decisions.settled_reviews(uri(1), CID1) == {VALUE, "sexual"}
    assert await d.decisions.settled_reviews(uri(1), CID2) == {"sexual"}
