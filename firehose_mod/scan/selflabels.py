"""Self-labels: the creator's own warnings (`labels`, com.atproto.label.defs#selfLabels).

Each value becomes a finding the policy honours as stated: a self-label is never negated or
contradicted by this labeler, whatever the other scanners find.
"""

from __future__ import annotations

from firehose_mod.scan.base import Finding, ScanContext, Track

MAX_SELF_LABELS = 10  # the lexicon's limit; anything past it is ignored


def self_label_values(record: dict) -> list[str]:
    """The record's self-label values, in order, without duplicates; malformed entries are skipped."""
    labels = record.get("labels")
    values = labels.get("values") if isinstance(labels, dict) else None
    if not isinstance(values, list):
        return []
    out: list[str] = []
    for item in values[:MAX_SELF_LABELS]:
        val = item.get("val") if isinstance(item, dict) else None
        if isinstance(val, str) and 0 < len(val) <= 128 and val not in out:
            out.append(val)
    return out


class SelfLabelScanner:
    """One `self-label` finding (score 1.0) per value the record labels itself with."""

    name = "self-labels"
    version = "1"
    kinds = frozenset({"self-label"})
    # Each finding carries the creator's own value, which the policy never labels over
    # (a self-labelled value is set aside): this scanner leads to no label value of its own.
    values: frozenset[str] = frozenset()
    after_local = False

    async def scan(self, track: Track, ctx: ScanContext) -> list[Finding]:
        values = self_label_values(track.record)
        return [Finding(self.name, "self-label", 1.0, {"values": values}, value) for value in values]
