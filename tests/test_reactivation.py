"""A reactivated account's tracks whose media was unavailable (400 RepoDeactivated) are scanned again."""

from __future__ import annotations

from dataclasses import replace

import anyio
import pytest
from structlog.testing import capture_logs

from firehose_mod.daemon import run_daemon
from firehose_mod.events import RepoEvent, TrackEvent
from firehose_mod.scan.base import MEDIA_UNAVAILABLE, Finding
from firehose_mod.store.decisions import DecisionRow, DecisionStore
from firehose_mod.store.ingest import IngestStore
from tests.fakes.jetstream import T0, FakeJetstream, commit, track_record
from tests.fakes.jetstream import account as account_event
from tests.fakes.media_server import MediaServer
from tests.test_scan_e2e import png

pytestmark = pytest.mark.anyio

DID = "did:plc:uploader"
GONE = f"at://{DID}/fm.plyr.track/3kgone"
FINE = f"at://{DID}/fm.plyr.track/3kfine"


@pytest.fixture
async def stores(settings):
    store = await IngestStore.open(settings.db_path)
    decisions = await DecisionStore.open(settings.db_path)
    yield store, decisions
    await decisions.close()
    await store.close()


def create(rkey: str, cid: str, rev: str) -> TrackEvent:
    return TrackEvent(DID, "fm.plyr.track", rkey, "create", cid, track_record(rkey), 1, rev, "jetstream")


def account(cursor: int, active: bool, status: str | None = None, did: str = DID) -> RepoEvent:
    return RepoEvent(did, "account", cursor, active, status, None, "jetstream")


def unavailable() -> Finding:
    return Finding("copyright", MEDIA_UNAVAILABLE, 1.0, {"media": "audio", "status": 400,
                                                         "url": "https://pds.example/xrpc/com.atproto.sync.getBlob",
                                                         "error": "RepoDeactivated"})


async def scanned(store: IngestStore, decisions: DecisionStore, *, gone_cid: str = "bafygone") -> None:
    """Both tracks published and scanned: the first found its audio unavailable, the second clean."""
    await store.commit("jetstream", 1, [create("3kgone", gone_cid, "3k0001"), create("3kfine", "bafyfine", "3k0002")])
    for job in await store.claim(10):
        await store.finish(job.id)
    await decisions.record([
        DecisionRow(GONE, gone_cid, "none", None, "policy", evidence=[unavailable()], reason="copyright: gone"),
        DecisionRow(FINE, "bafyfine", "none", None, "policy", evidence=[Finding("text", "text", 0.1, {"matched": "x"})]),
    ])


async def rescans(store: IngestStore, uri: str) -> list[dict]:
    return [j for j in await store.jobs(uri) if j["operation"] == "rescan"]


async def test_reactivation_rescans_only_the_tracks_whose_media_was_unavailable(stores):
    store, decisions = stores
    await scanned(store, decisions)
    res = await store.commit("jetstream", 10, [account(10, False, "deactivated")])
    assert res.enqueued == 0 and await rescans(store, GONE) == []
    with capture_logs() as logs:
        res = await store.commit("jetstream", 11, [account(11, True)])
    assert res.enqueued == 1
    assert [(j["cid"], j["state"]) for j in await rescans(store, GONE)] == [("bafygone", "pending")]
    assert await rescans(store, FINE) == []
    assert [(e["did"], e["count"]) for e in logs if e["event"] == "ingest.reactivated_rescan"] == [(DID, 1)]
    assert await store.cursor("jetstream") == 11

    # the same event again (another source, a replay) or a second active=true: nothing more queued
    assert (await store.commit("jetstream", 12, [account(12, True)])).enqueued == 0
    assert (await store.commit("relay", 11, [account(11, True)])).enqueued == 0
    await store.commit("jetstream", 13, [account(13, False, "takendown")])
    assert (await store.commit("jetstream", 14, [account(14, True)])).enqueued == 0  # one is pending
    assert len(await rescans(store, GONE)) == 1
    assert (await store.job_counts())["pending"] == 1


async def test_a_finished_rescan_is_queued_again_only_by_a_later_reactivation(stores):
    store, decisions = stores
    await scanned(store, decisions)
    await store.commit("jetstream", 10, [account(10, False, "deactivated")])
    await store.commit("jetstream", 11, [account(11, True)])
    [job] = await store.claim(10)
    await store.finish(job.id)
    # still unavailable (deactivated again before the rescan ran): the latest scan says so again
    await decisions.record([DecisionRow(GONE, "bafygone", "none", None, "policy", evidence=[unavailable()])])
    assert (await store.commit("jetstream", 12, [account(12, True)])).enqueued == 0  # already active
    await store.commit("jetstream", 13, [account(13, False, "deactivated")])
    assert (await store.commit("jetstream", 14, [account(14, True)])).enqueued == 1
    assert [(j["state"], j["attempts"]) for j in await rescans(store, GONE)] == [("pending", 0)]


async def test_a_clean_rescan_or_a_new_version_or_a_delete_is_not_requeued(stores):
    store, decisions = stores
    await scanned(store, decisions)
    # the latest scan of the same version was clean: the old media-unavailable row does not count
    await decisions.record([DecisionRow(GONE, "bafygone", "none", None, "policy", evidence=[])])
    await store.commit("jetstream", 10, [account(10, False, "deactivated")])
    assert (await store.commit("jetstream", 11, [account(11, True)])).enqueued == 0

    # a media-unavailable decision of an older version: the current one is scanned by its own job
    await decisions.record([DecisionRow(GONE, "bafygone", "none", None, "policy", evidence=[unavailable()])])
    await store.commit("jetstream", 12, [TrackEvent(DID, "fm.plyr.track", "3kgone", "update", "bafynew",
                                                    track_record("new"), 12, "3k0009", "jetstream")])
    await store.commit("jetstream", 13, [account(13, False, "deactivated")])
    assert (await store.commit("jetstream", 14, [account(14, True)])).enqueued == 0

    # a deleted track is not scanned again, and another DID's reactivation touches nothing of ours
    await decisions.record([DecisionRow(GONE, "bafynew", "none", None, "policy", evidence=[unavailable()])])
    await store.commit("jetstream", 15, [TrackEvent(DID, "fm.plyr.track", "3kgone", "delete", None, None, 15,
                                                    "3k0010", "jetstream")])
    await store.commit("jetstream", 16, [account(16, False, "deactivated"), account(16, False, did="did:plc:other")])
    res = await store.commit("jetstream", 17, [account(17, True), account(17, True, did="did:plc:other")])
    assert res.enqueued == 0
    assert await rescans(store, GONE) == []


async def test_a_text_match_on_the_words_is_not_a_media_unavailable_finding(stores):
    store, decisions = stores
    await store.commit("jetstream", 1, [create("3kgone", "bafygone", "3k0001")])
    await decisions.record([DecisionRow(GONE, "bafygone", "review", "spam", "policy", evidence=[
        Finding("text", "text", 0.5, {"matched": "media-unavailable"})])])
    await store.commit("jetstream", 10, [account(10, False, "deactivated")])
    assert (await store.commit("jetstream", 11, [account(11, True)])).enqueued == 0


async def test_through_the_daemon_a_cover_refused_while_deactivated_is_scanned_on_reactivation(settings):
    uri = f"at://{DID}/fm.plyr.track/3kcover"
    media = MediaServer()
    with media:
        cover = f"{media.base}/later.png"  # 404 until the account is back
        fake = FakeJetstream([commit(T0, DID, "fm.plyr.track", "3kcover", "create",
                                     track_record("Song", imageUrl=cover))])
        settings = replace(settings, scanners=("self-labels", "cover-art"), cover_nsfw=False,
                           media_allow_networks=("127.0.0.1/32",), media_allow_http=True)
        async with anyio.create_task_group() as tg:
            await tg.start(fake.serve)
            settings = replace(settings, jetstream_endpoints=(fake.url,), jetstream_compress=False)
            parts = await tg.start(run_daemon, settings)
            store, engine = parts["store"], parts["engine"]
            with anyio.fail_after(30):
                while not (history := await engine.decisions.history(uri)):
                    await anyio.sleep(0.05)
            assert [f["kind"] for f in history[0]["evidence"]] == ["media-unavailable"]
            assert media.count("/later.png") == 1
            media.files["/later.png"] = (png(3), "image/png")
            with capture_logs() as logs:
                fake.append(account_event(T0 + 1, DID, False, "deactivated"), account_event(T0 + 2, DID, True))
                with anyio.fail_after(30):
                    while len(history := await engine.decisions.history(uri)) < 2:
                        await anyio.sleep(0.05)
                    while (await store.job_counts())["done"] < 2:
                        await anyio.sleep(0.05)
            jobs = await store.jobs(uri)
            tg.cancel_scope.cancel()
    assert [(j["operation"], j["state"]) for j in jobs] == [("create", "done"), ("rescan", "done")]
    assert history[-1]["action"] == "none"
    assert [f["kind"] for f in history[-1]["evidence"]] == []  # the cover was seen, and is clean
    assert media.count("/later.png") == 2
    assert [(e["did"], e["count"]) for e in logs if e["event"] == "ingest.reactivated_rescan"] == [(DID, 1)]
