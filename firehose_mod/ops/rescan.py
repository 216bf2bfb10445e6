"""Rescan: re-evaluate stored tracks against today's scanners, policy and catalogue.

A dry run (the default) computes, per track, what would change: labels to add, automatic
labels to negate, review items to open. `apply=True` writes exactly that difference through
the engine, so a second apply finds nothing left to change and writes nothing. An applied
run records its progress (last uri) under a key made of the selection, the policy version
and the scanner versions, so an interrupted run resumes where it stopped. `rate` bounds the
tracks per second, so the live daemon's ingest and scans keep their share of the machine.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import anyio
import structlog

from firehose_mod.config import Settings
from firehose_mod.scan.base import Track
from firehose_mod.scan.engine import ScanEngine
from firehose_mod.scan.policy import Plan
from firehose_mod.store.ingest import IngestStore

log = structlog.get_logger(__name__)

PAGE = 50


@dataclass
class TrackChange:
    """What a rescan changes (or would change) on one track."""

    uri: str
    cid: str
    emit: list[dict] = field(default_factory=list)  # {value, rule, evidence}
    negate: list[str] = field(default_factory=list)
    review: list[dict] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)

    @property
    def changes(self) -> bool:
        return bool(self.emit or self.negate or self.review)

    def to_json(self) -> dict:
        return {"uri": self.uri, "cid": self.cid, "emit": self.emit, "negate": self.negate,
                "review": self.review, "failures": self.failures}


@dataclass
class RescanReport:
    checked: int = 0
    changed: int = 0
    labels: int = 0
    negations: int = 0
    reviews: int = 0
    failures: int = 0
    resumed_after: str = ""
    applied: bool = False
    seconds: float = 0.0


def _summary(decision) -> dict:
    return {"value": decision.value, "rule": decision.rule,
            "evidence": [{"scanner": f.scanner, "kind": f.kind, "score": round(f.score, 4), **f.evidence}
                         for f in decision.findings]}


async def effective_change(engine: ScanEngine, track: Track, plan: Plan) -> tuple[Plan, TrackChange]:
    """Drop from `plan` what is already true (label in force, review already open or already
    decided by a person for this version)."""
    in_force = {label.val for label in await engine.label_log.in_force(track.uri)}
    open_reviews = await engine.decisions.settled_reviews(track.uri, track.cid)
    effective = Plan(
        emit=[d for d in plan.emit if d.value not in in_force],
        negate=list(plan.negate),
        review=[d for d in plan.review if d.value not in open_reviews],
        ignored=plan.ignored,
    )
    change = TrackChange(track.uri, track.cid, [_summary(d) for d in effective.emit], list(effective.negate),
                         [_summary(d) for d in effective.review])
    return effective, change


def run_key(settings: Settings, engine: ScanEngine, selection: dict) -> str:
    versions = {s.name: s.version for s in engine.scanners}
    raw = json.dumps({"selection": selection, "policy": engine.policy.version, "scanners": versions}, sort_keys=True)
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


async def rescan(
    settings: Settings, engine: ScanEngine, store: IngestStore, *, uris: list[str] | None = None,
    since: str | None = None, scanner: str | None = None, apply: bool = False, rate: float = 20.0,
    progress: Callable[[RescanReport], None] | None = None, report: RescanReport | None = None,
) -> AsyncIterator[TrackChange]:
    """Yield the change of every selected track that would change (and write it if `apply`)."""
    only = {scanner} if scanner else None
    if scanner and scanner not in {s.name for s in engine.scanners}:
        raise ValueError(f"scanner {scanner!r} is not enabled; enabled: {sorted(s.name for s in engine.scanners)}")
    report = report or RescanReport(applied=apply)
    key = run_key(settings, engine, {"uris": uris, "since": since, "scanner": scanner})
    after = ""
    if apply:
        state = await store.rescan_state(key)
        if state and not state["finished"]:
            after = state["last_uri"]
            report.resumed_after = after
            report.checked, report.changed = state["checked"], state["changed"]
            log.info("rescan.resuming", after=after, checked=state["checked"])
    started = time.monotonic()
    interval = 1.0 / rate if rate > 0 else 0.0
    while True:
        page = await store.tracks_page(after, PAGE, since=since, uris=uris)
        if not page:
            break
        for uri, cid, record in page:
            tick = time.monotonic()
            did, _collection, rkey = uri.removeprefix("at://").split("/", 2)
            track = Track(uri, did, rkey, cid, record)
            result = await engine.scan(track, only=only)
            effective, change = await effective_change(engine, track, await engine.plan(track, result))
            change.failures = dict(result.failures)
            report.checked += 1
            report.failures += bool(result.failures)
            if change.changes:
                report.changed += 1
                report.labels += len(change.emit)
                report.negations += len(change.negate)
                report.reviews += len(change.review)
                if apply:
                    await engine.apply(track, effective, result)
                yield change
            elif apply:
                await engine.perform_effects(result)  # e.g. index an upload scanned before copyright was on
            after = uri
            if progress:
                progress(report)
            # Throttle: at most `rate` tracks a second, so live work keeps its share.
            await anyio.sleep(max(0.0, interval - (time.monotonic() - tick)))
        if apply:
            await store.save_rescan(key, after, report.checked, report.changed, finished=False)
    if apply:
        await store.save_rescan(key, after, report.checked, report.changed, finished=True)
    report.seconds = round(time.monotonic() - started, 2)
    log.info("rescan.finished", **report.__dict__)
