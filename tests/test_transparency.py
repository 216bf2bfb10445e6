"""Transparency summaries: decided outcomes only, counted and rendered within 300 graphemes, and
posted once per batch from the labeler account to a PDS over real HTTP (tests/fakes/labeler_pds.py)
through the atproto SDK, surviving restarts and PDS failures without posting twice or skipping.

Events come from the real review desk (and the real report desk) on a real database.
"""

from __future__ import annotations

import argparse
import json
import time
from contextlib import asynccontextmanager
from dataclasses import replace

import anyio
import httpx
import pytest
from structlog.testing import capture_logs

from firehose_mod.config import ConfigError, load_settings
from firehose_mod.ingest.lexicon import grapheme_count
from firehose_mod.review.reports import STRONG_REF, ReportDesk
from firehose_mod.review.transparency import (
    MAX_GRAPHEMES,
    PdsPublisher,
    PosterConfig,
    Summary,
    TransparencyPoster,
    fits,
    render,
    summarise,
)
from firehose_mod.store.reports import ReportStore
from firehose_mod.store.transparency import TransparencyStore
from firehose_mod.syntax import is_tid
from tests.conftest import uri
from tests.fakes.labeler_pds import FakeLabelerPDS, record_cid
from tests.helpers.review import CID1

pytestmark = pytest.mark.anyio

LABELER = "did:plc:labelerabcdefghijklmnopq"
PASSWORD = "abcd-efgh-ijkl-mnop"
AUTHOR = "did:plc:" + "a" * 24
REPORTER = "did:plc:" + "r" * 24
UPLOADER = "did:plc:" + "u" * 24
DAY = 86400.0


class Clock:
    def __init__(self):
        self.now = time.time() + 30  # a little ahead of the events each test makes next

    def __call__(self) -> float:
        return self.now


@asynccontextmanager
async def transparency_store(settings):
    store = await TransparencyStore.open(settings.db_path)
    try:
        yield store
    finally:
        await store.close()


async def decided_world(d, settings) -> dict:
    """Items in every state, reports and an appeal; returns the ids by what happened to them."""
    ids = {name: await d.scan_opens(uri(n, AUTHOR if name == "labeled" else UPLOADER))
           for n, name in enumerate(["labeled", "cleared", "allowed", "overturned", "escalated", "proposed"])}
    ids["waiting"] = await d.scan_opens(uri(9, UPLOADER), value="sexual")  # a suspicion nobody decided: never told
    await d.desk.confirm(d.moderator, [ids["labeled"], ids["overturned"]])
    await d.desk.reject(d.moderator, [ids["cleared"]], reason="the uploader's own stem")
    await d.desk.allow(d.moderator, [ids["allowed"]], reason="licensed")
    await d.desk.reject(d.admin, [ids["overturned"]], reason="on a second listen: not a match")
    await d.desk.escalate(d.moderator, [ids["escalated"]])
    await d.desk.propose(d.agent, [ids["proposed"]], "reject", reason="looks like a cover")
    reports = await ReportStore.open(settings.db_path)
    try:
        desk = ReportDesk(d.desk, reports)
        await desk.receive(REPORTER, None, {  # a report: counted as received, its item waits
            "reasonType": "com.atproto.moderation.defs#reasonRude", "reason": "slur in the title",
            "subject": {"$type": STRONG_REF, "uri": uri(7, UPLOADER), "cid": CID1}})
        await desk.receive(AUTHOR, None, {  # the author appeals the label on their track: granted
            "reasonType": "com.atproto.moderation.defs#reasonAppeal", "reason": "it is my own track",
            "subject": {"$type": STRONG_REF, "uri": uri(0, AUTHOR), "cid": CID1}})
    finally:
        await reports.close()
    [appeal] = [i for i in await d.store.query(replace_query(kinds=("appeal",)))]
    await d.desk.reject(d.moderator, [appeal.id], reason="the author's own recording")
    ids["appeal"] = appeal.id
    return ids


def replace_query(**kw):
    from firehose_mod.store.review import ItemQuery

    return ItemQuery(**kw)


async def events_and_kinds(settings, after: int = 0):
    async with transparency_store(settings) as store:
        rows = await store.events_after(after)
    return [e for e, _ in rows], {e.item_id: k for e, k in rows}


# -- the summary (pure, over events from the real desk) ----------------------------------------

async def test_the_summary_counts_only_decided_outcomes_and_names_no_one(d, settings):
    await decided_world(d, settings)
    events, kinds = await events_and_kinds(settings)
    summary = summarise(events, kinds)
    assert summary.outcomes == {"copyright-violation": {"labeled": 2, "cleared": 1, "allowed": 1, "overturned": 1}}
    assert summary.appeals == {"granted": 1, "upheld": 0}
    assert summary.decisions == 6
    # two labels applied (the two confirms); removed: the overturned one and the one the appeal granted
    assert (summary.labels_applied, summary.labels_removed) == (2, 2)
    assert (summary.reports_received, summary.appeals_received) == (1, 1)
    assert (summary.first_event, summary.last_event) == (events[0].id, events[-1].id)
    assert summary.uploaders == ()
    text = render(summary)
    assert "sexual" not in text and "offensive-text" not in text  # items still waiting: no suspicions
    for secret in ("did:", "at://", UPLOADER, AUTHOR, REPORTER, "stem", "licensed", "alice", "slur"):
        assert secret not in text, secret
    assert "did:" not in json.dumps(summary.to_json()) and "at://" not in json.dumps(summary.to_json())
    assert fits(text) and grapheme_count(text) <= MAX_GRAPHEMES
    assert "copyright-violation: 2 labeled, 1 cleared, 1 allowed, 1 overturned" in text
    assert "Appeals: 1 granted, 0 upheld" in text and "Received: 1 report, 1 appeal" in text
    assert text.splitlines()[1] == "6 decisions (2 labels applied, 2 removed):"


async def test_an_upheld_appeal_and_a_confirm_by_accepting_a_proposal_are_counted(d, settings):
    first = await d.scan_opens(uri(1, AUTHOR))
    proposed = await d.scan_opens(uri(2))
    await d.desk.confirm(d.moderator, [first])
    await d.desk.propose(d.agent, [proposed], "confirm", reason="a clear match")
    await d.desk.accept(d.moderator, [proposed])  # recorded as the confirm it accepted
    reports = await ReportStore.open(settings.db_path)
    try:
        await ReportDesk(d.desk, reports).receive(AUTHOR, None, {
            "reasonType": "com.atproto.moderation.defs#reasonAppeal",
            "subject": {"$type": STRONG_REF, "uri": uri(1, AUTHOR), "cid": CID1}})
    finally:
        await reports.close()
    [appeal] = await d.store.query(replace_query(kinds=("appeal",)))
    await d.desk.confirm(d.moderator, [appeal.id], reason="it is the reference recording")
    summary = summarise(*await events_and_kinds(settings))
    assert summary.outcomes == {"copyright-violation": {"labeled": 2, "cleared": 0, "allowed": 0, "overturned": 0}}
    assert summary.appeals == {"granted": 0, "upheld": 1} and summary.labels_removed == 0


async def test_uploaders_are_named_only_when_configured_and_only_the_labeled(d, settings):
    await decided_world(d, settings)
    named_did = "did:plc:" + "n" * 24
    for n in (11, 12):
        item = await d.scan_opens(uri(n, named_did))
        await d.desk.confirm(d.moderator, [item])
    events, kinds = await events_and_kinds(settings)
    named = summarise(events, kinds, name_uploaders=True)
    # Only accounts whose label stands: not the cleared, allowed or overturned ones, nor AUTHOR,
    # whose label was applied and then negated by their appeal.
    assert named.uploaders == (named_did,)
    text = render(named, {named_did: "ada.example.com"})
    assert text.endswith("\nLabeled: ada.example.com") and "did:" not in text
    assert render(named).endswith(f"\nLabeled: {named_did}")  # no handle known: the DID
    assert "Labeled" not in render(summarise(events, kinds))


def test_the_text_fits_300_graphemes_however_much_was_decided():
    values = {f"value-number-{i:02d}-with-a-long-name": {"labeled": 100 + i, "cleared": i, "allowed": 0,
                                                          "overturned": 1} for i in range(40)}
    uploaders = tuple(f"did:plc:{'u' * 20}{i:04d}" for i in range(50))
    summary = Summary("2026-12-01T04:00:00.000Z", "2026-12-02T04:00:00.000Z", values, {"granted": 3, "upheld": 4},
                      5000, 20, 70, 7, 1, 9000, uploaders)
    text = render(summary)
    assert grapheme_count(text) <= 300 and len(text.encode()) <= 3000
    assert text.startswith("Moderation summary, 2026-12-01 04:00 – 2026-12-02 04:00 UTC\n")
    assert "value-number-39-with-a-long-name: 139 labeled, 39 cleared, 1 overturned" in text  # the biggest first
    assert "more values (" in text and "Appeals: 3 granted, 4 upheld" in text
    assert "Labeled: " in text  # as many names as fit, then how many more (or only the count)
    small = render(Summary("2026-12-01T04:00:00.000Z", "2026-12-01T18:30:00.000Z",
                           {"porn": {"labeled": 1, "cleared": 0, "allowed": 0, "overturned": 0}}, {}, 1, 0))
    assert small == "Moderation summary, 2026-12-01 04:00–18:30 UTC\n1 decision (1 label applied, 0 removed):\nporn: 1 labeled"


# -- posting, to a PDS over real HTTP -----------------------------------------------------------

@pytest.fixture
def pds():
    with FakeLabelerPDS(LABELER, password=PASSWORD) as server:
        yield server


def poster_settings(settings, pds, **kw):
    return replace(settings, **{"did": LABELER, "plc_url": pds.plc_url, "media_allow_networks": ("127.0.0.1/32",),
                                "labeler_app_password": PASSWORD, "transparency_enabled": True, **kw})


@asynccontextmanager
async def poster(settings, pds, clock, **config):
    s = poster_settings(settings, pds)
    async with transparency_store(s) as store:
        yield TransparencyPoster(store, PosterConfig(interval=DAY, backoff=5.0, **config),
                                 publisher=PdsPublisher(s), clock=clock)


def posts(pds) -> list[dict]:
    return [c["record"] for c in pds.created if c["collection"] == "app.bsky.feed.post"]


async def test_one_post_per_batch_then_only_what_was_decided_since(d, settings, pds):
    from atproto_client import models
    from atproto_client.models.utils import get_or_create

    clock = Clock()
    await decided_world(d, settings)
    async with poster(settings, pds, clock) as p:
        assert await p.tick() is None and pds.calls == []  # decisions wait for the interval: one batch
        clock.now += DAY
        first = await p.tick()
        [post] = posts(pds)
        assert post["text"] == first.text and post["$type"] == "app.bsky.feed.post" and post["langs"] == ["en"]
        assert post["createdAt"] == first.created and is_tid(first.rkey)
        get_or_create(post, models.AppBskyFeedPost.Record, strict=True)  # the SDK's own model takes it
        row = await p.store.last()
        assert row.uri == f"at://{LABELER}/app.bsky.feed.post/{first.rkey}" and row.cid == record_cid(post)
        assert row.posted and row.after_event == 0 and p.metrics["posts"] == 1 and p.metrics["decisions_posted"] == 6

        late = await d.scan_opens(uri(20))
        await d.desk.confirm(d.moderator, [late])
        assert await p.tick() is None and len(posts(pds)) == 1  # decided, but within the interval of the last post
        clock.now += DAY
        second = await p.tick()
        assert len(posts(pds)) == 2 and second.after_event == first.last_event
        assert "1 decision (1 label applied, 0 removed):\ncopyright-violation: 1 labeled" in second.text
        assert second.period_start == first.period_end  # periods tile, as the log's stretches do
        assert pds.count("createSession") == 2 and pds.count("getRecord") == 0  # first attempts ask nothing
        clock.now += 3 * DAY
        assert await p.tick() is None and len(posts(pds)) == 2  # nothing decided since: nothing posted


async def test_nothing_is_posted_when_nothing_was_decided(d, settings, pds):
    clock = Clock()
    waiting = [await d.scan_opens(uri(n)) for n in range(3)]
    await d.desk.escalate(d.moderator, [waiting[0]])
    await d.desk.propose(d.agent, [waiting[1]], "confirm", reason="probably")
    async with poster(settings, pds, clock) as p:
        clock.now += 10 * DAY
        assert await p.tick() is None and await p.draft() is None
        assert pds.calls == [] and await p.store.last() is None


async def test_a_restart_resumes_without_posting_twice_or_skipping(d, settings, pds):
    clock = Clock()
    first = await d.scan_opens(uri(1))
    await d.desk.confirm(d.moderator, [first])
    clock.now += DAY
    async with poster(settings, pds, clock) as p:
        await p.tick()
    async with poster(settings, pds, clock) as p:  # restarted: the batch is recorded
        clock.now += DAY
        assert await p.tick() is None and len(posts(pds)) == 1

    second = await d.scan_opens(uri(2))
    await d.desk.reject(d.moderator, [second])
    pds.lose_create_answers = 1  # the post lands, its answer is lost, then the process dies
    async with poster(settings, pds, clock) as p:
        clock.now += DAY
        landed = await p.tick()
        assert (await p.store.pending()).id == landed.id and p.metrics["posts_failed"] == 1
    async with poster(settings, pds, clock) as p:  # the restart asks for the batch's key first
        row = await p.tick()
        assert row.id == landed.id and await p.store.pending() is None
        assert len(posts(pds)) == 2 and pds.count("getRecord") == 1 and p.metrics["posts"] == 1
        assert (await p.store.last()).uri == f"at://{LABELER}/app.bsky.feed.post/{landed.rkey}"

    third = await d.scan_opens(uri(3))
    await d.desk.allow(d.moderator, [third])
    pds.fail_creates = 1  # a batch made, its post refused, then a restart: posted once, same text
    async with poster(settings, pds, clock) as p:
        clock.now += DAY
        made = await p.tick()
    async with poster(settings, pds, clock) as p:
        await p.tick()
    texts = [r["text"] for r in posts(pds)]
    assert len(texts) == 3 and texts[2] == made.text and "1 allowed" in made.text
    async with transparency_store(settings) as store:
        one, two, three = reversed(await store.posts())
    assert (one.after_event, two.after_event, three.after_event) == (0, one.last_event, two.last_event)  # tiled
    assert all(r.posted for r in (one, two, three))


async def test_a_failed_post_is_retried_with_backoff_and_the_desk_goes_on(d, settings, pds, capsys):
    from firehose_mod.cli.transparency import transparency

    clock = Clock()
    item = await d.scan_opens(uri(1))
    await d.desk.confirm(d.moderator, [item])
    pds.fail_creates = 2
    async with poster(settings, pds, clock) as p:
        clock.now += DAY
        with capture_logs() as logs:
            batch = await p.tick()
        assert p.metrics["posts_failed"] == 1 and posts(pds) == []
        failed = next(e for e in logs if e["event"] == "transparency.undelivered")
        assert "503" in failed["error"] and failed["retry_in_seconds"] == 5.0
        capsys.readouterr()
        await transparency(settings, argparse.Namespace(json=False))  # preview: the batch as it will be sent
        shown = capsys.readouterr().out
        assert f"batch {batch.id} waits to be posted (attempts 1, last error: RuntimeError:" in shown
        assert batch.text in shown
        other = await d.scan_opens(uri(2))
        await d.desk.confirm(d.moderator, [other])  # the desk is not held up by the post
        await p.tick()
        assert pds.count("createRecord") == 1  # still backing off
        clock.now += 5
        await p.tick()
        clock.now += 9  # the second backoff is 10 s
        assert (await p.tick()).id == batch.id and pds.count("createRecord") == 2
        clock.now += 1
        await p.tick()
        [post] = posts(pds)
        assert post["text"] == batch.text and "1 decision" in batch.text  # the batch as made: one post
        assert {c["json"]["rkey"] for c in pds.calls if c["path"].endswith("createRecord")} == {batch.rkey}
        assert p.metrics["posts"] == 1 and (await p.store.last()).last_error is None


async def test_a_refused_app_password_posts_nothing_and_is_never_logged(d, settings, pds):
    clock = Clock()
    item = await d.scan_opens(uri(1))
    await d.desk.confirm(d.moderator, [item])
    s = poster_settings(settings, pds, labeler_app_password="wrong-pass-word")
    async with transparency_store(s) as store:
        p = TransparencyPoster(store, PosterConfig(interval=DAY, backoff=5.0), publisher=PdsPublisher(s), clock=clock)
        clock.now += DAY
        with capture_logs() as logs:
            await p.tick()
        assert posts(pds) == [] and p.metrics["posts_failed"] == 1
        [failed] = [e for e in logs if e["event"] == "transparency.undelivered"]
        assert "refused the app password" in failed["error"] and "nothing was posted" in failed["error"]
        assert "wrong-pass-word" not in json.dumps(logs, default=str)


async def test_dry_run_logs_the_post_and_records_nothing(d, settings, pds):
    clock = Clock()
    item = await d.scan_opens(uri(1))
    await d.desk.confirm(d.moderator, [item])
    async with poster(settings, pds, clock, dry_run=True) as p:
        clock.now += DAY
        with capture_logs() as logs:
            assert await p.tick() is None
            assert await p.tick() is None  # once per interval
        [dry] = [e for e in logs if e["event"] == "transparency.dry_run"]
        assert dry["text"].startswith("Moderation summary, ") and p.metrics["dry_runs"] == 1
        assert pds.calls == [] and await p.store.last() is None


async def test_preview_prints_the_next_post(d, settings, capsys):
    from firehose_mod.cli.transparency import transparency

    item = await d.scan_opens(uri(1))
    await d.desk.confirm(d.moderator, [item])
    assert await transparency(settings, argparse.Namespace(json=False)) == 0
    out = capsys.readouterr().out
    assert "[transparency] is off" in out and "copyright-violation: 1 labeled" in out and "/300 graphemes" in out
    assert await transparency(settings, argparse.Namespace(json=True)) == 0
    body = json.loads(capsys.readouterr().out)
    assert body["next"]["summary"]["decisions"] == 1 and body["pending"] is None and body["last_posted"] is None


async def test_the_daemon_posts_the_summary_under_supervision(settings, pds):
    from firehose_mod.daemon import run_daemon
    from firehose_mod.review.actors import Actor

    s = poster_settings(settings, pds, ingest_source="none", scanners=("self-labels",), transparency_interval=0.3)
    async with anyio.create_task_group() as tg:
        parts = await tg.start(run_daemon, s)
        review = parts["review"]
        root = Actor("system", "test", "admin", "local")
        outcome = await review.desk.open(root, uri(1), "copyright-violation", reason="by hand")
        await review.desk.confirm(root, [outcome.steps[0].item_id])
        metrics = ""
        async with httpx.AsyncClient() as client:
            with anyio.fail_after(10):  # the PDS holds the post a moment before the poster counts it
                while not posts(pds) or 'transparency_total{what="posts"} 1.0' not in metrics:
                    metrics = (await client.get(f"http://127.0.0.1:{parts['server'].port}/metrics")).text
                    await anyio.sleep(0.05)
        tg.cancel_scope.cancel()
    assert 'firehose_mod_transparency_total{what="posts"} 1.0' in metrics
    assert len(posts(pds)) == 1 and "1 decision" in posts(pds)[0]["text"]


# -- configuration -----------------------------------------------------------------------------

def test_the_transparency_settings_are_validated(tmp_path):
    assert load_settings(env={}).transparency_enabled is False
    with pytest.raises(ConfigError, match=r"\[transparency\] interval .*at least 3600"):
        load_settings(env={"FIREHOSE_MOD_TRANSPARENCY_INTERVAL": "60"})
    with pytest.raises(ConfigError, match=r"\[transparency\] enabled .*set \[labeler\] did"):
        load_settings(env={"FIREHOSE_MOD_TRANSPARENCY_ENABLED": "true"})
    with pytest.raises(ConfigError, match=r"\[transparency\] enabled .*app password"):
        load_settings(env={"FIREHOSE_MOD_TRANSPARENCY_ENABLED": "true", "FIREHOSE_MOD_DID": LABELER})
    ok = load_settings(env={"FIREHOSE_MOD_TRANSPARENCY_ENABLED": "true", "FIREHOSE_MOD_DID": LABELER,
                            "FIREHOSE_MOD_LABELER_APP_PASSWORD": PASSWORD})
    assert ok.transparency_interval == DAY and not ok.transparency_name_uploaders
    assert load_settings(env={"FIREHOSE_MOD_TRANSPARENCY_ENABLED": "true",
                              "FIREHOSE_MOD_TRANSPARENCY_DRY_RUN": "true"}).transparency_dry_run
