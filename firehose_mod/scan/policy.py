"""The policy: which findings become labels, which wait for a human, which are ignored.

Pure: `decide()` turns a track's findings and its current automatic labels into a `Plan`;
the engine is what writes the plan. The policy is data (TOML), ordered rules, first match
wins per finding; its version is a hash of the normalised rules, recorded on every
decision so `explain` and `rescan` can say which policy made which label.

A fingerprint match is a claim, not a finding (covers and remixes by the uploader match
too), so by default only a strong match against an operator's reference catalogue labels
by itself; matches against other uploads go to review.
"""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from firehose_mod.scan.base import Finding, Scanner, Track

ACTIONS = ("label", "review", "ignore")
_VALUE_RE = re.compile(r"^!?[a-z][a-z0-9-]{0,127}$")
# Bluesky's adult values, weakest first: a self-label covers our finding of its own or a weaker value.
ADULT_RANK = {"nudity": 1, "sexual": 2, "porn": 3}

DEFAULT_POLICY = """
# firehose-mod's default policy. Rules are tried in order; the first that matches a finding
# decides it. Fields: kind (finding kind), scanner (optional), min_score, min (evidence key ->
# minimum number), equals (evidence key -> value), action (label | review | ignore), value
# (label value; default: the finding's own value).

[[rules]]
name = "catalogue-match"
kind = "copyright-match"
equals = { ref_kind = "reference" }
min = { seconds_matched = 30 }
action = "label"
value = "copyright-violation"

[[rules]]
name = "catalogue-partial-match"
kind = "copyright-match"
equals = { ref_kind = "reference" }
min = { seconds_matched = 8 }
action = "review"
value = "copyright-violation"

[[rules]]
name = "same-artist-reupload"
kind = "copyright-match"
equals = { same_did = true }
action = "ignore"

[[rules]]
name = "upload-match"
kind = "copyright-match"
min = { seconds_matched = 10 }
action = "review"
value = "copyright-violation"

[[rules]]
name = "audd-match"
kind = "copyright-match"
scanner = "audd"
action = "review"
value = "copyright-violation"

[[rules]]
name = "pdq-blocklist"
kind = "pdq-match"
action = "label"

[[rules]]
name = "cover-porn"
kind = "nsfw"
min_score = 0.95
action = "label"
value = "porn"

[[rules]]
name = "cover-sexual"
kind = "nsfw"
min_score = 0.85
action = "label"
value = "sexual"

[[rules]]
name = "cover-doubtful"
kind = "nsfw"
min_score = 0.6
action = "review"
value = "sexual"

# A cover we could not decode may still show in a browser: a human looks at it, for what a
# doubtful score would be checked for. Too small to show anything (under 16 px a side) or an
# empty file: nothing for anyone to see.
[[rules]]
name = "cover-too-small"
kind = "cover-unusable"
equals = { reason = "too-small" }
action = "ignore"

[[rules]]
name = "cover-empty"
kind = "cover-unusable"
equals = { reason = "empty" }
action = "ignore"

[[rules]]
name = "cover-undecodable"
kind = "cover-unusable"
action = "review"
value = "sexual"

# The media host answers 404/410/403 (a PDS: BlobNotFound): listeners get the same answer, so
# there is nothing to label or review. The labels the scanner made earlier stay in force.
[[rules]]
name = "media-unavailable"
kind = "media-unavailable"
action = "ignore"

[[rules]]
name = "text-blocklist"
kind = "text"
equals = { category = "blocklist" }
action = "review"
value = "offensive-text"

[[rules]]
name = "text-slur"
kind = "text"
equals = { category = "slur" }
action = "review"
value = "offensive-text"

[[rules]]
name = "text-profanity"
kind = "text"
action = "ignore"

[[rules]]
name = "self-labels"
kind = "self-label"
action = "ignore"
"""


class PolicyError(ValueError):
    """The policy file is invalid; the message names the rule and the fix."""


@dataclass(frozen=True)
class Rule:
    name: str
    kind: str
    action: str
    value: str | None = None
    scanner: str | None = None
    min_score: float = 0.0
    min: dict[str, float] = field(default_factory=dict)
    equals: dict[str, Any] = field(default_factory=dict)

    def matches(self, f: Finding) -> bool:
        if f.kind != self.kind or (self.scanner and f.scanner != self.scanner) or f.score < self.min_score:
            return False
        for key, minimum in self.min.items():
            got = f.evidence.get(key)
            if not isinstance(got, (int, float)) or got < minimum:
                return False
        return all(f.evidence.get(key) == want for key, want in self.equals.items())


@dataclass(frozen=True)
class Policy:
    rules: tuple[Rule, ...]
    version: str
    source: str = "default"

    def rule_for(self, f: Finding) -> Rule | None:
        return next((r for r in self.rules if r.matches(f)), None)

    def label_values(self, scanner: Scanner) -> frozenset[str]:
        """Every label value a `label` rule could write from `scanner`'s findings: the rule's
        value, or else the finding's own (one of `scanner.values`). What its failure keeps."""
        out: set[str] = set()
        for r in self.rules:
            if r.action == "label" and r.kind in scanner.kinds and r.scanner in (None, scanner.name):
                out |= {r.value} if r.value else scanner.values
        return frozenset(out)


def parse_policy(text: str, source: str = "default") -> Policy:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(f"{source}: not valid TOML: {exc}") from exc
    raw_rules = doc.get("rules")
    if not isinstance(raw_rules, list) or not raw_rules:
        raise PolicyError(f"{source}: needs at least one [[rules]] table")
    rules = []
    for i, r in enumerate(raw_rules, 1):
        where = f"{source}: rule {i} ({r.get('name', 'unnamed')})"
        unknown = set(r) - {"name", "kind", "action", "value", "scanner", "min_score", "min", "equals"}
        if unknown:
            raise PolicyError(f"{where}: unknown field(s) {sorted(unknown)}")
        if not isinstance(r.get("kind"), str):
            raise PolicyError(f"{where}: 'kind' is required (e.g. copyright-match, nsfw, pdq-match, text)")
        if r.get("action") not in ACTIONS:
            raise PolicyError(f"{where}: 'action' must be one of {ACTIONS}")
        value = r.get("value")
        if value is not None and (not isinstance(value, str) or not _VALUE_RE.match(value)):
            raise PolicyError(f"{where}: value {value!r} must be lowercase a-z, 0-9 and '-' (apps hide others)")
        mins = r.get("min", {})
        if not isinstance(mins, dict) or not all(isinstance(v, (int, float)) for v in mins.values()):
            raise PolicyError(f"{where}: 'min' must map evidence keys to numbers")
        equals = r.get("equals", {})
        if not isinstance(equals, dict):
            raise PolicyError(f"{where}: 'equals' must be a table")
        rules.append(Rule(name=str(r.get("name", f"rule-{i}")), kind=r["kind"], action=r["action"], value=value,
                          scanner=r.get("scanner"), min_score=float(r.get("min_score", 0.0)), min=dict(mins),
                          equals=dict(equals)))
    canonical = json.dumps([r.__dict__ for r in rules], sort_keys=True, separators=(",", ":"))
    return Policy(tuple(rules), hashlib.sha256(canonical.encode()).hexdigest()[:12], source)


def load_policy(path: Path | None) -> Policy:
    """The policy in `path`, or the built-in default."""
    if path is None:
        return parse_policy(DEFAULT_POLICY)
    try:
        return parse_policy(path.read_text(), str(path))
    except OSError as exc:
        raise PolicyError(f"cannot read policy file {path}: {exc.strerror}") from exc


@dataclass(frozen=True)
class Decision:
    value: str
    rule: str
    findings: tuple[Finding, ...]


@dataclass
class Plan:
    """What applying the policy to one track would change."""

    emit: list[Decision] = field(default_factory=list)
    negate: list[str] = field(default_factory=list)
    review: list[Decision] = field(default_factory=list)
    ignored: list[tuple[str, Finding]] = field(default_factory=list)  # (rule or reason, finding)

    @property
    def changes(self) -> bool:
        return bool(self.emit or self.negate or self.review)


def self_label_values(record: dict) -> set[str]:
    labels = record.get("labels")
    values = labels.get("values") if isinstance(labels, dict) else None
    return {v["val"] for v in values or [] if isinstance(v, dict) and isinstance(v.get("val"), str)}


def _covered_by_self_label(value: str, self_values: set[str]) -> bool:
    if value in self_values:
        return True
    rank = ADULT_RANK.get(value)
    return rank is not None and any(ADULT_RANK.get(v, 0) >= rank for v in self_values)


def decide(policy: Policy, track: Track, findings: list[Finding], auto_in_force: set[str],
           protected: set[str] = frozenset(), overruled: set[str] = frozenset()) -> Plan:
    """The plan for `track`: labels to emit, automatic labels to negate, review items to open.

    `auto_in_force` are the values in force on the track that an earlier policy decision
    made (human labels are never negated here); `protected` values are not negated either
    (e.g. the values a scanner that failed this time could have produced); `overruled` values
    were negated by a person for this version, so the same evidence does not label them again.
    """
    plan = Plan()
    self_values = self_label_values(track.record)
    labels: dict[str, list[tuple[Rule, Finding]]] = {}
    reviews: dict[str, list[tuple[Rule, Finding]]] = {}
    for f in findings:
        rule = policy.rule_for(f)
        if rule is None:
            plan.ignored.append(("no rule", f))
            continue
        value = rule.value or f.value
        if rule.action == "ignore" or value is None:
            plan.ignored.append((rule.name, f))
            continue
        if _covered_by_self_label(value, self_values):
            plan.ignored.append((f"self-labelled {sorted(self_values)}", f))
            continue
        if value in overruled:
            plan.ignored.append(("overruled by a reviewer for this version", f))
            continue
        (labels if rule.action == "label" else reviews).setdefault(value, []).append((rule, f))
    for value, hits in labels.items():
        plan.emit.append(Decision(value, hits[0][0].name, tuple(f for _, f in hits)))
    for value, hits in reviews.items():
        if value not in labels:
            plan.review.append(Decision(value, hits[0][0].name, tuple(f for _, f in hits)))
    # An automatic label the policy would not write today is withdrawn, even when the same
    # evidence now calls for a human: the review decides, not yesterday's threshold.
    plan.negate = sorted(auto_in_force - set(labels) - set(protected))
    return plan
