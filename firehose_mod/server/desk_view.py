"""What the admin page shows of an item (pure): findings as a person reads them.

Each finding becomes a small dict the templates lay out: a one-line summary for the queue, and
for the item page the evidence a moderator decides on (matched seconds and offsets with the two
excerpts, the cover, the words found highlighted in their field).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

from markupsafe import Markup, escape

from firehose_mod.review import states as st

COVER_KINDS = ("nsfw", "pdq-match", "cover-unusable")
TEXT_FIELDS = ("title", "artist", "album", "description")


def clock(seconds) -> str:
    """1:03.5 for 63.5 seconds (the way a player shows time)."""
    try:
        s = max(0.0, float(seconds))
    except (TypeError, ValueError):
        return "?"
    return f"{int(s // 60)}:{s % 60:04.1f}"


def age(iso: str | None, now: datetime | None = None) -> str:
    """'3 h ago' from an ISO timestamp."""
    if not iso:
        return ""
    try:
        then = datetime.fromisoformat(iso)
    except ValueError:
        return iso
    secs = ((now or datetime.now(UTC)) - then).total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if secs >= size:
            return f"{int(secs // size)} {unit} ago"
    return "just now"


def summary(finding: dict) -> str:
    """One line for the queue."""
    kind, ev = finding.get("kind", ""), finding.get("evidence") or {}
    score = finding.get("score")
    if kind == "copyright-match":
        ref = " by ".join(x for x in (ev.get("title"), ev.get("artist")) if x) or ev.get("ref", "a reference")
        return (f"{float(ev.get('seconds_matched') or 0):.1f} s of “{ref}” at {clock(ev.get('query_start'))}"
                f"–{clock(ev.get('query_end'))}")
    if kind == "pdq-match":
        return f"cover matches a blocklisted image (distance {ev.get('distance')}, {ev.get('variant', 'as is')})"
    if kind == "nsfw":
        return f"cover scored {float(score or 0):.2f} by the image model"
    if kind == "cover-unusable":
        return f"cover could not be checked: {ev.get('reason') or ev.get('error') or 'unusable'}"
    if kind == "text":
        return f"“{ev.get('matched') or ev.get('term')}” in {ev.get('field', 'the text')} ({ev.get('category', '')})"
    if kind == "self-label":
        return f"the uploader labeled it {ev.get('value') or finding.get('value')}"
    if kind in ("report", "appeal"):
        reason = str(ev.get("reason") or "").strip()
        reason = reason if len(reason) <= 100 else reason[:99] + "…"
        what = str(ev.get("reason_type") or "").rsplit("#", 1)[-1].removeprefix("reason")
        return f"{kind} by {ev.get('reporter')} ({what}){': ' + reason if reason else ''}"
    if kind == "media-unavailable":
        return f"media unavailable: {ev.get('error') or ev.get('reason') or ''}"
    return kind or "finding"


def highlight(text: str, needles: list[str]) -> Markup:
    """`text` escaped, every case-insensitive occurrence of a needle wrapped in <mark>."""
    spans: list[tuple[int, int]] = []
    low = text.casefold()
    for needle in {n.casefold() for n in needles if n}:
        start = low.find(needle)
        while start >= 0:
            spans.append((start, start + len(needle)))
            start = low.find(needle, start + 1)
    out, pos = [], 0
    for a, b in sorted(spans):
        if a < pos:
            continue
        out.append(escape(text[pos:a]))
        out.append(Markup("<mark>") + escape(text[a:b]) + Markup("</mark>"))
        pos = b
    out.append(escape(text[pos:]))
    return Markup("").join(out)


def evidence_view(item, record: dict | None) -> list[dict]:
    """Each finding as the item page lays it out (`type` picks the template block)."""
    record = record or {}
    out = []
    for index, f in enumerate(item.evidence):
        if not isinstance(f, dict):
            continue
        kind, ev = f.get("kind", ""), f.get("evidence") or {}
        view = {"index": index, "kind": kind, "scanner": f.get("scanner"), "score": f.get("score"),
                "value": f.get("value"), "summary": summary(f), "type": "other",
                "json": json.dumps(ev, indent=1, sort_keys=True, default=str)[:4000]}
        if kind == "copyright-match":
            view.update(type="copyright", ev=ev, upload_span=f"{clock(ev.get('query_start'))}–{clock(ev.get('query_end'))}",
                        ref_span=f"{clock(ev.get('ref_start'))}–{clock(ev.get('ref_end'))}")
        elif kind in COVER_KINDS:
            view.update(type="cover", ev=ev, has_cover=isinstance(record.get("imageUrl"), str))
        elif kind == "text":
            field = ev.get("field")
            text = record.get(field) if isinstance(record.get(field), str) else None
            needles = [x for x in (ev.get("matched"), ev.get("term")) if isinstance(x, str)]
            view.update(type="text", ev=ev, field=field,
                        marked=highlight(text, needles) if text else None)
        out.append(view)
    return out


def track_fields(record: dict | None, item) -> list[tuple[str, Markup]]:
    """The track's text fields, with every flagged word highlighted wherever it appears."""
    record = record or {}
    needles = [v for f in item.evidence if isinstance(f, dict) and f.get("kind") == "text"
               for v in ((f.get("evidence") or {}).get("matched"), (f.get("evidence") or {}).get("term"))
               if isinstance(v, str)]
    return [(name, highlight(record[name], needles)) for name in TEXT_FIELDS if isinstance(record.get(name), str)]


def step_text(step) -> str:
    """What one planned step will do, in words: the line shown before any action."""
    if step.error:
        return f"#{step.item_id}: not possible: {step.error}"
    parts = [f"#{step.item_id}: {step.before} → {step.after}"]
    if step.emit:
        parts.append(f"emits {', '.join(step.emit)}")
    if step.negate:
        parts.append(f"negates {', '.join(step.negate)}")
    if not step.emit and not step.negate:
        parts.append("emits no label")
    return "; ".join(parts)


ACTION_KEYS = {"confirm": "c", "reject": "r", "allow": "a", "escalate": "e", "accept": "p"}
ACTION_HELP = {
    "confirm": "the finding is right: the label is emitted",
    "reject": "the finding is wrong: the label is negated if it is in force",
    "allow": "right finding, allowed anyway (licensed, the artist's own)",
    "escalate": "a senior moderator decides",
    "accept": "apply the pending proposal as proposed",
}


def waiting_label(statuses: tuple[str, ...]) -> str:
    return "waiting" if set(statuses) == set(st.WAITING) else ", ".join(statuses)
