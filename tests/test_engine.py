"""The scan engine and the policy over a real label log: findings -> labels, reviews, negations."""

from __future__ import annotations

from dataclasses import dataclass, field

import anyio
import pytest

from firehose_mod.scan.base import Finding, MediaError, ScanContext, Scanner, Track
from firehose_mod.scan.cover import CoverArtScanner, PdqBlocklist
from firehose_mod.scan.engine import ScanEngine, ScannersFailed
from firehose_mod.scan.policy import PolicyError, load_policy, parse_policy
from firehose_mod.scan.selflabels import SelfLabelScanner
from firehose_mod.scan.text import TextBlocklist, TextScanner
from firehose_mod.store.decisions import DecisionRow, DecisionStore

pytestmark = pytest.mark.anyio

URI = "at://did:plc:artist/fm.plyr.track/3kone"


def cid(version: str) -> str:
    """A real CID string for a record version."""
    import libipld

    from tests.fakes.car import cid_for

    return libipld.encode_cid(cid_for(version.encode()))


V1, V2 = cid("v1"), cid("v2")


# What the real scanners of these names declare (test_every_scanner_declares_what_it_can_report
# checks it), so that a fake's failure protects what the real scanner's would: (kinds, values).
DECLARED: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    "copyright": (frozenset({"copyright-match", "media-unavailable"}), frozenset({"copyright-violation"})),
    "audd": (frozenset({"copyright-match", "media-unavailable"}), frozenset({"copyright-violation"})),
    "cover-art": (frozenset({"nsfw", "pdq-match", "cover-unusable", "media-unavailable"}), frozenset()),
    "text": (frozenset({"text"}), frozenset()),
    "self-labels": (frozenset({"self-label"}), frozenset()),
}


@dataclass
class FakeScanner:
    """A scanner whose findings the test chooses; it can also fail or hang."""

    name: str
    findings: list[Finding] = field(default_factory=list)
    fail: bool = False
    hang: bool = False
    version: str = "1"
    kinds: frozenset[str] = frozenset()
    values: frozenset[str] = frozenset()
    after_local: bool = False
    calls: int = 0

    def __post_init__(self) -> None:
        kinds, values = DECLARED.get(self.name, (frozenset(), frozenset()))
        self.kinds = self.kinds or kinds
        self.values = self.values or values
        self.after_local = self.after_local or self.name == "audd"

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


class UnreachableCovers:
    """Media whose cover host answers 503 (a transient fetch failure) and has no audio."""

    async def audio(self, track: Track):
        return None

    async def image(self, track: Track):
        raise MediaError("https://cdn.example/cover.jpg: HTTP 503")


async def test_a_failed_cover_fetch_does_not_keep_an_unrelated_copyright_label(label_log, decisions):
    copyright_scanner = FakeScanner("copyright", [copyright(95)])
    cover = CoverArtScanner(scorer=lambda img: 0.0)  # the real scanner, its fetch failing
    engine = ScanEngine([copyright_scanner, cover], load_policy(None), label_log, decisions,
                        ScanContext(media=UnreachableCovers(), run_cpu=None), timeout=5.0)
    with pytest.raises(ScannersFailed, match="cover-art"):
        await engine.process(track())
    assert await values_in_force(label_log) == {"copyright-violation"}
    copyright_scanner.findings = []  # the audio was replaced by unrelated audio
    with pytest.raises(ScannersFailed, match="cover-art"):
        await engine.process(track(V2))
    assert await values_in_force(label_log) == set()  # the cover could not have kept it
    (negation,) = [r for r in await decisions.history(URI) if r["action"] == "negate"]
    assert negation["value"] == "copyright-violation"


def test_a_failed_scanner_protects_what_the_policy_can_label_from_its_findings():
    policy = load_policy(None)
    cover = CoverArtScanner(blocklist=PdqBlocklist.parse(f"{'a' * 64} gore\n{'b' * 64}\n"))
    assert cover.values == {"gore"}  # what its blocklist entries name
    assert policy.label_values(cover) == {"porn", "sexual", "gore"}  # the nsfw rules, pdq-blocklist
    assert policy.label_values(TextScanner(builtin=False)) == set()  # the default text rules only review
    assert policy.label_values(SelfLabelScanner()) == set()
    assert policy.label_values(FakeScanner("copyright")) == {"copyright-violation"}
    assert policy.label_values(FakeScanner("audd")) == {"copyright-violation"}
    stricter = parse_policy(base_text().replace(
        'name = "text-slur"\nkind = "text"\nequals = { category = "slur" }\naction = "review"',
        'name = "text-slur"\nkind = "text"\nequals = { category = "slur" }\naction = "label"'))
    assert stricter.label_values(TextScanner(builtin=False)) == {"offensive-text"}
    # A rule for one scanner's findings does not make another scanner of the same kinds keep it.
    only_audd = parse_policy('[[rules]]\nkind = "copyright-match"\nscanner = "audd"\naction = "label"\n')
    assert only_audd.label_values(FakeScanner("audd")) == {"copyright-violation"}
    assert only_audd.label_values(FakeScanner("copyright")) == set()


def test_every_scanner_declares_what_it_can_report():
    from firehose_mod.scan.audd import AuddClient, AuddScanner
    from firehose_mod.scan.copyright import CopyrightScanner

    scanners = [SelfLabelScanner(), TextScanner(builtin=False), CoverArtScanner(scorer=None),
                CopyrightScanner(store=None, index=None), AuddScanner(AuddClient("token"))]
    for scanner in scanners:
        assert isinstance(scanner, Scanner), scanner.name
        assert isinstance(scanner.kinds, frozenset) and scanner.kinds, scanner.name
        assert isinstance(scanner.values, frozenset) and isinstance(scanner.after_local, bool), scanner.name
        assert (scanner.kinds, scanner.values) == DECLARED[scanner.name], scanner.name
    assert [s.name for s in scanners if s.after_local] == ["audd"]
    operator_list = TextBlocklist.parse("term cheap pills -> spam\nre win \\d+ prizes -> scam\nterm meh\n")
    assert TextScanner(blocklist=operator_list, builtin=False).values == {"spam", "scam"}


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

    from firehose_mod.scan.metrics import ScanCollector

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


async def test_a_label_a_reviewer_negated_is_not_written_again_for_the_same_version(label_log, decisions):
    """A reject or allow on the desk holds against the next scan of that version; a new version is judged anew."""
    from firehose_mod.store import EmitRequest

    engine = engine_with(label_log, decisions, FakeScanner("copyright", [copyright(95)]))
    await engine.process(track())

    async def by_a_person(writer, written) -> None:
        await writer.write([DecisionRow(URI, V1, "negate", "copyright-violation", origin="human", actor="mo",
                                        reason="the uploader's own song", label_seq=written[0].seq)])

    await label_log.emit_many([EmitRequest(URI, "copyright-violation", cid=V1, neg=True)], also=by_a_person)
    again = await engine.process(track())  # a rescan, an update that kept the cid, a retried job
    assert again.emitted == [] and await values_in_force(label_log) == set()
    assert ("overruled by a reviewer for this version", "copyright-match") in [
        (why, f.kind) for why, f in again.plan.ignored]
    assert (await engine.process(track(V2))).emitted == ["copyright-violation"]
