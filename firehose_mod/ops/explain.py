"""`explain`: why a record or account carries the labels it does, or why it carries none.

Reads only: the label log (every label ever written on the subject) and the decision store
(the policy decision, the findings and the review history behind each label, and the scans
that found nothing). `explain` returns a plain dataclass so the CLI and an admin page show
the same facts; `render_text` is the operator's report.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

from firehose_mod.labels.model import format_datetime
from firehose_mod.store.decisions import DecisionStore, ReviewItem
from firehose_mod.store.review import ModerationEvent
from firehose_mod.store.label_log import LabelLog, StoredLabel

HAND_EMITTED = "no decision recorded (emitted by hand)"


class ExplainError(ValueError):
    """The subject cannot be explained; the message says what to pass instead."""


@dataclass
class FindingView:
    """One scanner finding with a one-line summary of its evidence."""

    scanner: str
    kind: str
    score: float | None
    value: str | None
    summary: str
    evidence: dict


@dataclass
class DecisionView:
    """One row of the decision store: what the policy (or a human) decided, and on what grounds."""

    id: int
    created: str
    action: str  # label | negate | review | none
    value: str | None
    origin: str  # policy | human | delete
    rule: str | None
    policy_version: str | None
    scanners: dict[str, str]  # name -> version that ran
    findings: list[FindingView]
    cid: str | None
    label_seq: int | None
    actor: str | None
    reason: str | None  # for a clean scan: the scanners that failed, with their errors
    note: str | None = None  # for a decision that wrote nothing: why


@dataclass
class LabelView:
    """One label from the log, its state now and the decision that wrote it (None: by hand)."""

    seq: int
    val: str
    neg: bool
    cts: str
    exp: str | None
    cid: str | None
    src: str
    key_id: str
    state: str  # in_force | negated | expired | superseded
    decision: DecisionView | None
    note: str | None = None
    negated_by: int | None = None  # seq of the negation of this label
    negates: int | None = None  # for a negation: seq of the label it negates
    superseded_by: int | None = None


@dataclass
class EventView:
    """One moderation event on a review item (review/states.py maps the names onto Ozone's)."""

    id: int
    created: str
    event_type: str  # Ozone's name: modEventReport, modEventLabel, modEventAcknowledge, ...
    action: str  # ours: open, propose, confirm, reject, allow, escalate, comment, delete, resolve
    state_before: str | None
    state_after: str
    actor: str  # "kind name (via)"
    reason: str | None
    labels: list[dict]  # [{seq, val, neg}] written with the event
    details: dict  # the proposal, what it accepted or overturned (evidence left out: see findings)


@dataclass
class ReviewView:
    id: int
    opened: str
    cid: str | None
    value: str
    reason: str
    findings: list[FindingView]
    state: str  # open | resolved
    resolution: str | None
    resolved_by: str | None
    resolved_at: str | None
    status: str = "open"  # open | proposed | escalated | confirmed | rejected | allowed | content-deleted | resolved
    kind: str = "other"
    source: str = "scan"
    events: list[EventView] = field(default_factory=list)


@dataclass
class RecordSummary:
    """One record of an account: what is in force on it and what waits for a human."""

    uri: str
    in_force: list[str]
    open_reviews: list[str]
    decisions: int
    last_decision: str | None


@dataclass
class Explanation:
    subject: str
    kind: str  # record | account
    generated: str
    in_force: list[str] = field(default_factory=list)
    labels: list[LabelView] = field(default_factory=list)
    reviews: list[ReviewView] = field(default_factory=list)
    clean_scans: list[DecisionView] = field(default_factory=list)
    other_decisions: list[DecisionView] = field(default_factory=list)  # decided, but wrote no label
    records: list[RecordSummary] = field(default_factory=list)  # for an account

    @property
    def empty(self) -> bool:
        """Nothing is recorded about the subject: never labelled, never scanned."""
        return not (self.labels or self.reviews or self.clean_scans or self.other_decisions or self.records)

    def to_json(self) -> dict:
        """A dict that `json.dumps` accepts as is."""
        return asdict(self)


# -- building ---------------------------------------------------------------------------------
async def explain(label_log: LabelLog, decisions: DecisionStore, subject: str) -> Explanation:
    """Everything recorded about `subject` (an at:// URI of a record, or an account's DID)."""
    subject = subject.strip()
    if subject.startswith("did:"):
        kind = "account"
    elif subject.startswith("at://"):
        kind = "record"
    else:
        raise ExplainError(f"subject {subject[:80]!r} is neither an at:// URI nor a DID (did:plc:... or did:web:...)")
    out = Explanation(subject, kind, format_datetime(datetime.now(UTC)))
    history = await label_log.history(subject)
    rows = await decisions.history(subject)
    by_seq = {r["label_seq"]: r for r in rows if r["label_seq"] is not None and r["action"] in ("label", "negate")}
    out.labels = _label_views(history, by_seq)
    out.in_force = [label.val for label in await label_log.in_force(subject)]
    used = {lv.decision.id for lv in out.labels if lv.decision is not None}
    for r in rows:
        if r["id"] in used:
            continue
        view = _decision_view(r)
        if r["action"] == "none":
            out.clean_scans.append(view)
        else:
            view.note = _unwritten_note(r)
            out.other_decisions.append(view)
    events: dict[int, list[EventView]] = {}
    for e in await decisions.review_events(subject):
        events.setdefault(e.item_id, []).append(_event_view(e))
    out.reviews = [_review_view(item, events.get(item.id, [])) for item in await decisions.reviews_for(subject)]
    if kind == "account":
        out.records = await _records_of(label_log, decisions, f"at://{subject}/")
    return out


def _label_views(history: list[StoredLabel], by_seq: dict[int, dict]) -> list[LabelView]:
    views = []
    for s in history:
        decision = by_seq.get(s.seq)
        label = s.label
        views.append(LabelView(
            s.seq, label.val, label.neg, label.cts, label.exp, label.cid, label.src, s.key_id, "",
            _decision_view(decision) if decision else None, None if decision else HAND_EMITTED,
        ))
    now = datetime.now(UTC)
    chains: dict[tuple[str, str], list[tuple[LabelView, StoredLabel]]] = {}
    for view, s in zip(views, history):
        chains.setdefault((view.src, view.val), []).append((view, s))
    for chain in chains.values():
        for i, (view, s) in enumerate(chain):
            prev = chain[i - 1][0] if i else None
            nxt = chain[i + 1][0] if i + 1 < len(chain) else None
            if view.neg:
                view.negates = prev.seq if prev is not None and not prev.neg else None
            if nxt is None:
                view.state = "negated" if view.neg else ("in_force" if s.label.in_force_at(now) else "expired")
            elif nxt.neg and not view.neg:
                view.state, view.negated_by = "negated", nxt.seq
            else:
                view.state, view.superseded_by = "superseded", nxt.seq
    return views


def _decision_view(r: dict) -> DecisionView:
    return DecisionView(
        r["id"], r["created"], r["action"], r["value"], r["origin"], r["rule"], r["policy_version"],
        r["scanners"] or {}, [_finding_view(f) for f in r["evidence"] or []], r["cid"], r["label_seq"],
        r["actor"], r["reason"],
    )


def _unwritten_note(r: dict) -> str:
    if r["action"] == "review":
        return "sent to a human instead of labelled"
    if r["action"] == "label":
        return "already in force with this cid: nothing written"
    return "not in force: nothing to negate"


def _review_view(item: ReviewItem, events: list[EventView]) -> ReviewView:
    return ReviewView(item.id, item.created, item.cid, item.value, item.reason,
                      [_finding_view(f) for f in item.evidence], item.state, item.resolution, item.resolved_by,
                      item.resolved_at, item.status, item.kind, item.source, events)


def _event_view(e: ModerationEvent) -> EventView:
    details = {k: v for k, v in e.payload.items() if k != "evidence"}
    return EventView(e.id, e.created, e.event_type, e.action, e.state_before, e.state_after,
                     f"{e.actor_kind} {e.actor_name} ({e.actor_via})", e.reason, e.labels, details)


async def _records_of(label_log: LabelLog, decisions: DecisionStore, prefix: str) -> list[RecordSummary]:
    now = datetime.now(UTC)
    in_force: dict[str, list[str]] = {}
    for s in await label_log.current_under(prefix):
        values = in_force.setdefault(s.label.uri, [])
        if s.label.in_force_at(now):
            values.append(s.label.val)
    reviews: dict[str, list[str]] = {}
    for item in await decisions.open_reviews_under(prefix):
        reviews.setdefault(item.uri, []).append(item.value)
    counts = await decisions.uris_under(prefix)
    return [
        RecordSummary(uri, in_force.get(uri, []), reviews.get(uri, []), *counts.get(uri, (0, None)))
        for uri in sorted(set(in_force) | set(reviews) | set(counts))
    ]


# -- evidence summaries -----------------------------------------------------------------------
def _finding_view(f: dict) -> FindingView:
    evidence = f.get("evidence") or {}
    return FindingView(f.get("scanner", "?"), f.get("kind", "?"), f.get("score"), f.get("value"),
                       summarise(f.get("kind", ""), f.get("score"), evidence), evidence)


def summarise(kind: str, score: float | None, e: dict) -> str:
    """One line of the evidence a reviewer looks at first, per finding kind."""
    match kind:
        case "copyright-match" if e.get("source") == "audd":
            d = e.get("dominant") or {}
            return (f"AudD heard {d.get('title')!r} by {d.get('artist')!r} in {d.get('chunks')} of"
                    f" {e.get('chunks_scanned')} chunks (score {_num(score)})")
        case "copyright-match":
            who = " ".join(x for x in (repr(e["title"]) if e.get("title") else "",
                                       f"by {e['artist']!r}" if e.get("artist") else "") if x)
            same = ", same account" if e.get("same_did") else ""
            parts = [f"matches {e.get('ref')} ({e.get('ref_kind') or 'ref'}{same})" + (f" {who}" if who else ""),
                     f"{_num(e.get('seconds_matched'))} s matched"]
            if e.get("query_start") is not None:
                parts.append(f"upload {_num(e.get('query_start'))}-{_num(e.get('query_end'))} s ="
                             f" ref {_num(e.get('ref_start'))}-{_num(e.get('ref_end'))} s")
            if e.get("pitch_shift"):
                parts.append(f"pitch {e['pitch_shift']:+} st")
            if e.get("chromaprint_duplicate"):
                parts.append("chromaprint duplicate")
            return ", ".join(parts) + f" (score {_num(score)})"
        case "nsfw":
            return f"nsfw score {_num(e.get('score', score), 3)}" + (f" ({e['model']})" if e.get("model") else "")
        case "pdq-match":
            note = f", note: {e['list_entry_note']}" if e.get("list_entry_note") else ""
            low = ", low-quality image: review only" if e.get("low_quality") else ""
            return (f"cover PDQ distance {e.get('distance')} (max {e.get('max_distance')}) to blocklist line"
                    f" {e.get('list_line')}{note}{low}")
        case "text":
            count = f" x{e['count']}" if (e.get("count") or 1) > 1 else ""
            excerpt = f": ...{e['excerpt']}..." if e.get("excerpt") else ""
            return f"{e.get('field')}: {e.get('term')!r} ({e.get('category')}){count}{excerpt}"
        case "self-label":
            return f"self-labelled by the author: {', '.join(e.get('values') or [])}"
        case "cover-unusable":
            return f"cover not scanned: {e.get('reason')}" + (f" ({e['error']})" if e.get("error") else "")
    return f"{kind} score {_num(score)}: {json.dumps(e, sort_keys=True, default=str)[:200]}"


def _num(x, digits: int = 2) -> str:
    if isinstance(x, float):
        return f"{round(x, digits):g}"
    return "?" if x is None else str(x)


# -- the operator report -----------------------------------------------------------------------
def render_text(expl: Explanation) -> str:
    """A readable report: values in force, then each label with its decision, reviews, clean scans."""
    where = " on the account itself" if expl.kind == "account" else ""
    lines = [f"{expl.subject} ({expl.kind})",
             f"in force{where}: {', '.join(expl.in_force) if expl.in_force else 'nothing'}"]
    if expl.empty:
        lines.append("nothing recorded: never labelled and never scanned by this labeler")
    for lv in expl.labels:
        lines += ["", _label_heading(lv)]
        lines += [f"  cts {lv.cts}" + (f"  exp {lv.exp}" if lv.exp else "") + f"  cid {lv.cid or '-'}"]
        lines += _decision_lines(lv.decision) if lv.decision else [f"  {lv.note}"]
    if expl.reviews:
        lines += ["", "reviews:"]
        for r in expl.reviews:
            lines.append(f"  #{r.id} {r.value} ({r.kind}, from {r.source}): opened {r.opened} ({r.reason}), {r.status}")
            if r.state == "resolved":
                lines.append(f"    resolved {r.resolution!r} by {r.resolved_by} at {r.resolved_at}")
            lines += [f"    - {f.scanner}: {f.summary}" for f in r.findings]
            lines += [_event_line(e) for e in r.events]
    if expl.other_decisions:
        lines += ["", "decisions that wrote no label:"]
        for d in expl.other_decisions:
            lines += _decision_lines(d)
    if expl.clean_scans:
        lines += ["", "scans that labelled nothing:"]
        for d in expl.clean_scans:
            lines.append(f"  {d.created} cid {d.cid or '-'}  policy {d.policy_version}  scanners {_versions(d)}")
            if d.reason:
                lines.append(f"    failed: {d.reason}")
            lines += [f"    below the policy: {f.scanner}: {f.summary}" for f in d.findings]
    if expl.kind == "account":
        lines += ["", f"records ({len(expl.records)}):"]
        for rec in expl.records:
            lines.append(f"  {rec.uri}  in force: {', '.join(rec.in_force) or '-'}"
                         f"  open reviews: {', '.join(rec.open_reviews) or '-'}"
                         f"  decisions: {rec.decisions} (last {rec.last_decision or '-'})")
    return "\n".join(lines) + "\n"


def _event_line(e: EventView) -> str:
    labels = " ".join(f"{'-' if x['neg'] else '+'}{x['val']} (seq {x['seq']})" for x in e.labels)
    proposal = f" proposes {e.details['decision']}" if e.action == "propose" else ""
    return (f"    {e.created} {e.event_type} {e.action}{proposal} by {e.actor}: {e.state_before or '-'} -> {e.state_after}"
            + (f", {labels}" if labels else "") + (f"; {e.reason}" if e.reason else ""))


def _label_heading(lv: LabelView) -> str:
    if lv.neg:
        what = f"seq {lv.seq}  NEGATION of {lv.val}" + (f" (negates seq {lv.negates})" if lv.negates else "")
        return what + ("  [current]" if lv.state == "negated" else f"  [{lv.state}]")
    after = {"negated": f" by seq {lv.negated_by}", "superseded": f" by seq {lv.superseded_by}"}.get(lv.state, "")
    return f"seq {lv.seq}  {lv.val}  [{lv.state}{after}]"


def _decision_lines(d: DecisionView, indent: str = "  ") -> list[str]:
    who = f"{d.origin}" + (f" ({d.actor})" if d.actor else "")
    lines = [f"{indent}decision #{d.id} {d.created}: {d.action} {d.value or ''} by {who}, rule {d.rule or '-'},"
             f" policy {d.policy_version or '-'}, scanners {_versions(d)}"]
    if d.note:
        lines.append(f"{indent}{d.note}")
    if d.reason:
        lines.append(f"{indent}reason: {d.reason}")
    lines += [f"{indent}- {f.scanner}: {f.summary}" for f in d.findings]
    return lines


def _versions(d: DecisionView) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(d.scanners.items())) or "-"
