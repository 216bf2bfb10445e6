"""`explain` over a real label log and decisions written by the real scan engine."""

from __future__ import annotations

import json

import pytest

from firehose_mod.ops.explain import HAND_EMITTED, ExplainError, explain, render_text
from firehose_mod.scan.base import Finding, ScanContext, Track
from firehose_mod.scan.engine import ScanEngine, ScannersFailed
from firehose_mod.scan.policy import load_policy
from firehose_mod.store.decisions import DecisionStore
from tests.test_engine import FakeScanner, cid, copyright, nsfw

pytestmark = pytest.mark.anyio

DID = "did:plc:artist"
URI = f"at://{DID}/fm.plyr.track/3kone"
V1, V2 = cid("v1"), cid("v2")


@pytest.fixture
async def decisions(settings, label_log):
    store = await DecisionStore.open(settings.db_path)
    yield store
    await store.close()


def engine(label_log, decisions, *scanners) -> ScanEngine:
    return ScanEngine(list(scanners), load_policy(None), label_log, decisions,
                      ScanContext(media=None, run_cpu=None), timeout=5.0)


def track(version: str = V1, uri: str = URI) -> Track:
    did = uri.removeprefix("at://").split("/")[0]
    return Track(uri, did, uri.rsplit("/", 1)[1], version, {"title": "Song", "artist": "A"})


async def test_each_label_shows_its_evidence_rule_policy_and_scanner_versions(label_log, decisions):
    eng = engine(label_log, decisions, FakeScanner("copyright", [copyright(95)]),
                 FakeScanner("cover-art", [nsfw(0.99)], version="2"))
    await eng.process(track())
    expl = await explain(label_log, decisions, URI)
    assert sorted(expl.in_force) == ["copyright-violation", "porn"]
    views = {lv.val: lv for lv in expl.labels}
    cv, porn = views["copyright-violation"], views["porn"]
    assert cv.state == porn.state == "in_force" and cv.cid == V1
    assert (cv.decision.rule, cv.decision.policy_version) == ("catalogue-match", eng.policy.version)
    assert cv.decision.scanners == {"copyright": "1", "cover-art": "2"}
    assert cv.decision.findings[0].evidence["ref"] == "label-catalogue/song-42"
    assert porn.decision.findings[0].evidence["score"] == 0.99
    text = render_text(expl)
    assert "matches label-catalogue/song-42 (reference)" in text and "95 s matched" in text
    assert "nsfw score 0.99" in text and f"policy {eng.policy.version}" in text
    assert "scanners copyright 1, cover-art 2" in text and "rule catalogue-match" in text


async def test_a_negated_label_shows_the_label_and_the_negation_decision(label_log, decisions):
    cover = FakeScanner("cover-art", [nsfw(0.99)])
    eng = engine(label_log, decisions, cover)
    await eng.process(track())
    cover.findings = []
    await eng.process(track(V2))  # the new cover is clean: the automatic label is negated
    expl = await explain(label_log, decisions, URI)
    label, negation = expl.labels
    assert (label.val, label.state, label.negated_by) == ("porn", "negated", negation.seq)
    assert label.decision.action == "label" and label.decision.findings[0].kind == "nsfw"
    assert negation.neg and negation.negates == label.seq and negation.cid == V1
    assert (negation.decision.action, negation.decision.rule) == ("negate", "no longer found")
    assert negation.decision.cid == V2  # the record version whose scan no longer found it
    assert expl.in_force == []
    text = render_text(expl)
    assert f"seq {label.seq}  porn  [negated by seq {negation.seq}]" in text
    assert f"NEGATION of porn (negates seq {label.seq})" in text and "rule no longer found" in text


async def test_a_clean_scan_is_listed_with_its_versions_failures_and_findings_below_the_policy(label_log, decisions):
    profanity = Finding("text", "text", 0.4, {"category": "profanity", "field": "title", "term": "darn"})
    eng = engine(label_log, decisions, FakeScanner("copyright"), FakeScanner("text", [profanity], version="3"),
                 FakeScanner("audd", fail=True))
    with pytest.raises(ScannersFailed):
        await eng.process(track())
    expl = await explain(label_log, decisions, URI)
    assert expl.labels == [] and expl.in_force == [] and not expl.empty
    (scan,) = expl.clean_scans
    assert scan.scanners == {"audd": "1", "copyright": "1", "text": "3"} and scan.policy_version == eng.policy.version
    assert scan.reason == "audd: RuntimeError: model exploded" and scan.cid == V1
    text = render_text(expl)
    assert "scans that labelled nothing:" in text and "failed: audd: RuntimeError: model exploded" in text
    assert "below the policy: text: title: 'darn' (profanity)" in text


async def test_a_review_opened_then_resolved_shows_who_when_and_why(label_log, decisions):
    await engine(label_log, decisions, FakeScanner("copyright", [copyright(12, "upload")])).process(track())
    assert await decisions.resolve_reviews(URI, "licensed sample, cleared", "did:plc:moderator") == 1
    expl = await explain(label_log, decisions, URI)
    (review,) = expl.reviews
    assert (review.value, review.state, review.resolution, review.resolved_by) == (
        "copyright-violation", "resolved", "licensed sample, cleared", "did:plc:moderator")
    assert review.resolved_at and review.opened and review.reason.startswith("policy rule ")
    assert review.findings[0].evidence["seconds_matched"] == 12
    (sent,) = expl.other_decisions
    assert sent.action == "review" and sent.note == "sent to a human instead of labelled"
    text = render_text(expl)
    assert f"resolved 'licensed sample, cleared' by did:plc:moderator at {review.resolved_at}" in text
    assert "12 s matched" in text


async def test_a_label_emitted_by_hand_says_so_and_an_expired_one_is_expired(label_log, decisions):
    await label_log.emit(URI, "misleading")
    await label_log.emit(URI, "spam", exp="2001-01-01T00:00:00.000Z")
    expl = await explain(label_log, decisions, URI)
    assert [(lv.val, lv.state, lv.decision, lv.note) for lv in expl.labels] == [
        ("misleading", "in_force", None, HAND_EMITTED), ("spam", "expired", None, HAND_EMITTED)]
    assert expl.in_force == ["misleading"]
    assert HAND_EMITTED in render_text(expl)


async def test_an_account_lists_its_own_labels_and_its_records(label_log, decisions):
    two, other = f"at://{DID}/fm.plyr.track/3ktwo", "at://did:plc:artistx/fm.plyr.track/3kone"
    eng = engine(label_log, decisions, FakeScanner("cover-art", [nsfw(0.99)]))
    await eng.process(track())
    await eng.process(track(uri=other))  # a DID sharing the prefix: not this account's record
    await engine(label_log, decisions, FakeScanner("cover-art", [nsfw(0.7)])).process(track(uri=two))
    await label_log.emit(DID, "spam")
    expl = await explain(label_log, decisions, DID)
    assert expl.kind == "account" and expl.in_force == ["spam"] and expl.labels[0].note == HAND_EMITTED
    assert [(r.uri, r.in_force, r.open_reviews, r.decisions) for r in expl.records] == [
        (URI, ["porn"], [], 1), (two, [], ["sexual"], 1)]
    text = render_text(expl)
    assert "records (2):" in text and f"{two}  in force: -  open reviews: sexual" in text and other not in text


async def test_json_round_trips(label_log, decisions):
    await engine(label_log, decisions, FakeScanner("copyright", [copyright(95)]),
                 FakeScanner("cover-art", [nsfw(0.7)])).process(track())
    await label_log.emit(URI, "misleading")
    for subject in (URI, DID):
        body = (await explain(label_log, decisions, subject)).to_json()
        assert json.loads(json.dumps(body)) == body
    assert body["records"][0]["in_force"] == ["copyright-violation", "misleading"]


async def test_nothing_recorded_and_a_bad_subject(label_log, decisions):
    expl = await explain(label_log, decisions, URI)
    assert expl.empty and "nothing recorded" in render_text(expl)
    with pytest.raises(ExplainError, match="neither an at:// URI nor a DID"):
        await explain(label_log, decisions, "https://plyr.fm/track/1")
