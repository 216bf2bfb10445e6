"""The scan engine and the policy over a real label log: findings -> labels, reviews, negations."""

from __future__ import annotations

from dataclasses import dataclass, field

import anyio
import pytest

from firehose_mod.scan.base import Finding, ScanContext, Track
from firehose_mod.scan.engine import ScanEngine, ScannersFailed
from firehose_mod.scan.policy import PolicyError, load_policy, parse_policy
from firehose_mod.store.decisions import DecisionRow, DecisionStore

pytestmark = pytest.mark.anyio

URI = "at://did:plc:artist/fm.plyr.track/3kone"


def cid(version: str) -> str:
    """A real CID string for a record version."""
    import libipld

    from tests.fakes.car import cid_for

    return libipld.encode_cid(cid_for(version.encode()))


V1, V2 = cid("v1"), cid("v2")


@dataclass
class FakeScanner:
    """A scanner whose findings the test chooses; it can also fail or hang."""

    name: str
    findings: list[Finding] = field(default_factory=list)
    fail: bool = False
    hang: bool = False
    version: str = "1"
    values: frozenset[str] | None = None
    calls: int = 0

    async def scan(self, track: Track, ctx: ScanContext) -> list[Finding]:
        self.calls += 1
        if self.hang:
            await anyio.sleep_forever()
        if self.fail:
            raise RuntimeError("model exploded")
        return list(self.findings)


def track(version: str = V1, **record) -> Track:
    return Track(URI, "did:plc:artist", "3kone", version, {"title": "Song", "artist": "A", **record})


def copyright(seconds: float, ref_kind: str = "reference") -> Finding:
    return Finding("copyright", "copyright-match", 0.9, {"ref": "label-catalogue/song-42", "ref_kind": ref_kind,
                                                         "seconds_matched": seconds}, "copyright-violation")


def nsfw(p: float) -> Finding:
    return Finding("cover-art", "nsfw", p, {"score": p})


@pytest.fixture
async def decisions(settings, label_log):
    store = await DecisionStore.open(settings.db_path)
    yield store
    await store.close()


def engine_with(label_log, decisions, *scanners, timeout=5.0) -> ScanEngine:
    ctx = ScanContext(media=None, run_cpu=None)
    return ScanEngine(list(scanners), load_policy(None), label_log, decisions, ctx, timeout=timeout)


async def values_in_force(label_log) -> set[str]:
    return {label.val for label in await label_log.in_force(URI)}


async def test_strong_catalogue_match_labels_with_the_record_cid_and_keeps_the_evidence(label_log, decisions):
    engine = engine_with(label_log, decisions, FakeScanner("copyright", [copyright(95)]))
    outcome = await engine.process(track())
    assert outcome.emitted == ["copyright-violation"]
    (label,) = await label_log.in_force(URI)
    assert label.cid == V1
    (row,) = await decisions.history(URI)
    assert (row["action"], row["rule"], row["origin"]) == ("label", "catalogue-match", "policy")
    assert row["evidence"][0]["evidence"]["ref"] == "label-catalogue/song-42"
    assert row["policy_version"] == engine.policy.version and row["scanners"] == {"copyright": "1"}


async def test_doubtful_cases_wait_for_a_human_once(label_log, decisions):
    engine = engine_with(label_log, decisions, FakeScanner("copyright", [copyright(12, "upload")]),
                         FakeScanner("cover-art", [nsfw(0.7)]))
    first = await engine.process(track())
    second = await engine.process(track())  # the same scan again: no second review item
    assert first.reviews_opened == 2 and second.reviews_opened == 0
    assert await values_in_force(label_log) == set()
    assert {r.value for r in await decisions.open_reviews(URI)} == {"copyright-violation", "sexual"}


async def test_nsfw_thresholds_map_to_global_values(label_log, decisions):
    scanner = FakeScanner("cover-art", [nsfw(0.99)])
    engine = engine_with(label_log, decisions, scanner)
    await engine.process(track())
    assert await values_in_force(label_log) == {"porn"}
    scanner.findings = [nsfw(0.9)]
    await engine.process(track(V2))  # an update: porn no longer holds, sexual does
    assert await values_in_force(label_log) == {"sexual"}
    assert [(s.label.val, s.label.neg) for s in await label_log.history(URI)] == [
        ("porn", False), ("sexual", False), ("porn", True)]


async def test_update_negates_automatic_labels_that_no_longer_hold_but_never_human_ones(label_log, decisions):
    scanner = FakeScanner("cover-art", [nsfw(0.99)])
    engine = engine_with(label_log, decisions, scanner)
    await engine.process(track())
    human = await label_log.emit(URI, "copyright-violation")
    await decisions.record([DecisionRow(URI, None, "label", "copyright-violation", "human", actor="moderator",
                                        label_seq=human.seq)])
    scanner.findings = []
    outcome = await engine.process(track(V2))
    assert outcome.negated == ["porn"]
    assert await values_in_force(label_log) == {"copyright-violation"}


async def test_self_labels_are_honoured_and_never_contradicted(label_log, decisions):
    engine = engine_with(label_log, decisions, FakeScanner("cover-art", [nsfw(0.99)]))
    outcome = await engine.process(track(labels={"values": [{"val": "porn"}]}))
    assert outcome.emitted == [] and outcome.reviews_opened == 0
    assert "self-labelled" in outcome.plan.ignored[0][0]


async def test_a_failing_and_a_hanging_scanner_do_not_block_the_others(label_log, decisions):
    good = FakeScanner("cover-art", [nsfw(0.99)])
    engine = engine_with(label_log, decisions, good, FakeScanner("copyright", fail=True),
                         FakeScanner("audd", hang=True), timeout=0.3)
    with anyio.fail_after(5), pytest.raises(ScannersFailed, match="copyright .*model exploded"):
        await engine.process(track())
    assert await values_in_force(label_log) == {"porn"}  # what the good scanner found was applied
    assert engine.stats["audd"]["timeouts"] == 1 and engine.stats["copyright"]["failures"] == 1


async def test_a_failed_scanner_never_causes_a_negation(label_log, decisions):
    cover = FakeScanner("cover-art", [nsfw(0.99)])
    engine = engine_with(label_log, decisions, cover)
    await engine.process(track())
    cover.fail = True  # the model is down this time: "no finding" is not "nothing there"
    with pytest.raises(ScannersFailed):
        await engine.process(track(V2))
    assert await values_in_force(label_log) == {"porn"}


async def test_clean_scan_is_recorded_so_not_labeled_is_explainable(label_log, decisions):
    engine = engine_with(label_log, decisions, FakeScanner("copyright"), FakeScanner("text", [
        Finding("text", "text", 0.4, {"category": "profanity", "field": "title"})]))
    await engine.process(track())
    (row,) = await decisions.history(URI)
    assert row["action"] == "none" and row["scanners"] == {"copyright": "1", "text": "1"}


async def test_delete_negates_and_closes_reviews(label_log, decisions):
    engine = engine_with(label_log, decisions, FakeScanner("cover-art", [nsfw(0.99), nsfw(0.7)]),
                         FakeScanner("copyright", [copyright(12, "upload")]))
    await engine.process(track())
    assert await engine.deleted(URI, None, negate=True) == ["porn"]
    assert await values_in_force(label_log) == set()
    reviews = await decisions.reviews_for(URI)
    assert reviews and all(r.state == "resolved" and r.resolution == "content-deleted" for r in reviews)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[[rules]]\nkind = 'nsfw'\naction = 'delete'\n", "'action' must be one of"),
        ("[[rules]]\naction = 'label'\n", "'kind' is required"),
        ("[[rules]]\nkind = 'nsfw'\naction = 'label'\nvalue = 'Porn'\n", "lowercase"),
        ("[[rules]]\nkind = 'nsfw'\naction = 'label'\nthreshold = 1\n", "unknown field"),
        ("rules = 3\n", r"at least one \[\[rules\]\]"),
    ],
)
def test_policy_errors_name_the_rule_and_the_fix(text, message):
    with pytest.raises(PolicyError, match=message):
        parse_policy(text, "policy.toml")


def test_policy_version_changes_with_any_threshold():
    base = load_policy(None)
    changed = parse_policy(base_text().replace("min_score = 0.95", "min_score = 0.93"))
    assert base.version != changed.version and len(base.version) == 12


def base_text() -> str:
    from firehose_mod.scan.policy import DEFAULT_POLICY

    return DEFAULT_POLICY


async def test_scan_metrics_count_runs_failures_and_audd_cost(label_log, decisions):
    from prometheus_client import CollectorRegistry, generate_latest

    from firehose_mod.ingest.metrics import ScanCollector

    audd = FakeScanner("audd", fail=True)
    audd.stats = {"calls": 3, "units": 45, "usd": 0.225, "skipped_local_match": 7}
    engine = engine_with(label_log, decisions, FakeScanner("cover-art", [nsfw(0.1)]), audd)
    with pytest.raises(ScannersFailed):
        await engine.process(track())
    registry = CollectorRegistry()
    registry.register(ScanCollector(engine))
    text = generate_latest(registry).decode()
    assert 'firehose_mod_scanner_runs_total{scanner="cover-art"} 1.0' in text
    assert 'firehose_mod_scanner_failures_total{scanner="audd"} 1.0' in text
    assert "firehose_mod_audd_cost_usd_total 0.225" in text and "firehose_mod_audd_units_total 45.0" in text
