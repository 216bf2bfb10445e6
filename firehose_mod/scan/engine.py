"""The scan engine: run the scanners on a track, apply the policy, write the outcome.

This is the only place that writes labels for scans. Scanners run concurrently, each
under its own timeout; a scanner that fails or times out is logged and counted, the
others' findings are still applied (without negating anything the failed scanner could
have produced), and the job is retried later so the missing scanner gets another go.
Media the server says is gone (`MediaUnavailable`) is not a failure: it becomes a
`media-unavailable` finding for the policy, keeps that scanner's labels, and is not retried.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import anyio
import structlog

from firehose_mod.scan.base import (
    MEDIA_UNAVAILABLE, Finding, IndexUpload, MediaUnavailable, ScanContext, Scanner, Track,
)
from firehose_mod.scan.catalogue import Catalogue
from firehose_mod.scan.policy import Plan, Policy, decide
from firehose_mod.store import EmitRequest, LabelLog
from firehose_mod.store.decisions import DecisionRow, DecisionStore, DecisionWriter

log = structlog.get_logger(__name__)


class ScannersFailed(Exception):
    """Some scanners failed; what the others found was applied. The job should be retried."""


@dataclass
class ScanResult:
    findings: list[Finding] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)  # scanner name -> error (retried)
    unavailable: dict[str, str] = field(default_factory=dict)  # scanner name -> why its media is gone
    versions: dict[str, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    effects: list[IndexUpload] = field(default_factory=list)  # writes scanners described, for apply


@dataclass
class Outcome:
    plan: Plan
    result: ScanResult
    emitted: list[str] = field(default_factory=list)
    negated: list[str] = field(default_factory=list)
    reviews_opened: int = 0


class ScanEngine:
    def __init__(self, scanners: list[Scanner], policy: Policy, label_log: LabelLog, decisions: DecisionStore,
                 ctx: ScanContext, *, timeout: float = 300.0, catalogue: Catalogue | None = None):
        self.scanners = scanners
        self.policy = policy
        self.label_log = label_log
        self.decisions = decisions
        self.ctx = ctx
        self.timeout = timeout
        self.catalogue = catalogue  # performs IndexUpload effects; None: effects are dropped (dry runs)
        self.stats: dict[str, dict[str, float]] = {
            s.name: {"runs": 0, "failures": 0, "timeouts": 0, "unavailable": 0, "seconds": 0.0} for s in scanners}

    # -- scanning (reads only) ----------------------------------------------------------------
    async def scan(self, track: Track, *, only: set[str] | None = None) -> ScanResult:
        """Run every scanner (or those named in `only`); scanners marked `after_local` (AudD)
        run last and see `local_match`."""
        chosen = [s for s in self.scanners if only is None or s.name in only]
        result = ScanResult(versions={s.name: s.version for s in chosen})
        first = [s for s in chosen if not s.after_local]
        later = [s for s in chosen if s.after_local]
        ctx = replace(self.ctx, effects=result.effects)  # this scan's own list of described writes
        await self._run_all(first, track, ctx, result)
        if later:
            local = any(f.kind == "copyright-match" for f in result.findings)
            await self._run_all(later, track, replace(ctx, local_match=local), result)
        return result

    async def _run_all(self, scanners: list[Scanner], track: Track, ctx: ScanContext, result: ScanResult) -> None:
        async with anyio.create_task_group() as tg:
            for s in scanners:
                tg.start_soon(self._run_one, s, track, ctx, result)

    async def _run_one(self, scanner: Scanner, track: Track, ctx: ScanContext, result: ScanResult) -> None:
        stats = self.stats[scanner.name]
        stats["runs"] += 1
        started = time.monotonic()
        try:
            with anyio.fail_after(self.timeout):
                findings = await scanner.scan(track, ctx)
            result.findings.extend(findings)
        except MediaUnavailable as exc:  # gone for good: a finding, not a failure to retry
            stats["unavailable"] += 1
            result.unavailable[scanner.name] = str(exc)[:500]
            result.findings.append(Finding(scanner.name, MEDIA_UNAVAILABLE, 1.0, {
                "media": exc.kind, "status": exc.status, "url": exc.url[:500], "error": str(exc)[:300]}))
            log.info("scan.media_unavailable", scanner=scanner.name, uri=track.uri, error=str(exc)[:300])
        except TimeoutError:
            stats["timeouts"] += 1
            result.failures[scanner.name] = f"timed out after {self.timeout}s"
            log.warning("scan.scanner_timeout", scanner=scanner.name, uri=track.uri, seconds=self.timeout)
        except Exception as exc:  # one scanner's failure never takes the others down
            stats["failures"] += 1
            result.failures[scanner.name] = f"{type(exc).__name__}: {exc}"[:500]
            log.warning("scan.scanner_failed", scanner=scanner.name, uri=track.uri, error=str(exc)[:300])
        finally:
            elapsed = time.monotonic() - started
            stats["seconds"] += elapsed
            result.seconds[scanner.name] = round(elapsed, 3)

    async def plan(self, track: Track, result: ScanResult) -> Plan:
        """What the policy would change on `track` given `result` (reads only).

        Scanners that failed, found their media gone, or did not run (`result.versions` lacks
        them) keep the labels the policy could have written from their findings, and only
        those: "not looked at" is never "nothing there", nor a reason to keep the rest."""
        origins = await self.decisions.automatic_values(track.uri)
        in_force = {label.val for label in await self.label_log.in_force(track.uri)}
        auto = {v for v in in_force if origins.get(v) == "policy"}
        unseen = result.failures.keys() | result.unavailable.keys()
        protected: set[str] = set()
        for scanner in self.scanners:
            if scanner.name in unseen or scanner.name not in result.versions:
                protected |= self.policy.label_values(scanner)
        overruled = await self.decisions.overruled(track.uri, track.cid)
        return decide(self.policy, track, result.findings, auto, protected, overruled)

    # -- writing --------------------------------------------------------------------------------
    async def apply(self, track: Track, plan: Plan, result: ScanResult) -> Outcome:
        """Write the plan: labels, negations, the decisions behind them and review items, in one
        transaction (a label is never committed without the evidence that explains it)."""
        outcome = Outcome(plan, result)
        requests = [EmitRequest(track.uri, d.value, cid=track.cid) for d in plan.emit]
        in_force = {label.val: label for label in await self.label_log.in_force(track.uri)}
        requests += [EmitRequest(track.uri, v, cid=in_force[v].cid, neg=True) for v in plan.negate if v in in_force]
        reviews = [(track.uri, track.cid, d.value, f"policy rule {d.rule}", list(d.findings)) for d in plan.review]

        async def record(decisions: DecisionWriter, written_labels) -> None:
            written = {(s.label.val, s.label.neg): s for s in written_labels}
            outcome.reviews_opened = await decisions.write(self._rows(track, plan, result, written, outcome), reviews)

        await self.label_log.emit_many(requests, also=record)
        await self.perform_effects(result)
        log.info("scan.applied", uri=track.uri, cid=track.cid, emitted=outcome.emitted, negated=outcome.negated,
                 reviews=outcome.reviews_opened, findings=len(result.findings), failed=sorted(result.failures))
        return outcome

    async def perform_effects(self, result: ScanResult) -> None:
        """Perform the writes scanners described (index an upload's fingerprint so a later copy
        of it is found). An engine without a catalogue (a dry run) performs none."""
        if self.catalogue is not None:
            for effect in result.effects:
                await self.catalogue.index_upload(effect)

    def _rows(self, track: Track, plan: Plan, result: ScanResult, written: dict, outcome: Outcome) -> list[DecisionRow]:
        rows: list[DecisionRow] = []
        common = {"origin": "policy", "policy_version": self.policy.version, "scanners": result.versions}
        for d in plan.emit:
            stored = written.get((d.value, False))
            if stored is not None:
                outcome.emitted.append(d.value)
            rows.append(DecisionRow(track.uri, track.cid, "label", d.value, rule=d.rule, evidence=list(d.findings),
                                    label_seq=stored.seq if stored else None, **common))
        for v in plan.negate:
            stored = written.get((v, True))
            if stored is not None:
                outcome.negated.append(v)
            rows.append(DecisionRow(track.uri, track.cid, "negate", v, rule="no longer found",
                                    label_seq=stored.seq if stored else None, **common))
        for d in plan.review:
            rows.append(DecisionRow(track.uri, track.cid, "review", d.value, rule=d.rule, evidence=list(d.findings),
                                    **common))
        if not rows:  # a clean scan is a decision too: "why is this NOT labeled" is answerable
            why = {**result.unavailable, **result.failures}
            rows.append(DecisionRow(track.uri, track.cid, "none", None, evidence=result.findings,
                                    reason="; ".join(f"{k}: {v}" for k, v in why.items()) or None, **common))
        return rows

    async def process(self, track: Track) -> Outcome:
        """Scan, plan and apply; raises ScannersFailed (after applying) when a scanner failed."""
        result = await self.scan(track)
        outcome = await self.apply(track, await self.plan(track, result), result)
        if result.failures:
            raise ScannersFailed(", ".join(f"{k} ({v})" for k, v in sorted(result.failures.items())))
        return outcome

    async def deleted(self, uri: str, cid: str | None, *, negate: bool) -> list[str]:
        """The record is gone: close its review items and (if configured) negate its labels."""
        labels = await self.label_log.in_force(uri) if negate else []

        async def record(decisions: DecisionWriter, written) -> None:  # negations and closed items: one commit
            await decisions.write([DecisionRow(uri, cid, "negate", s.label.val, origin="delete",
                                               reason="content deleted", label_seq=s.seq) for s in written])
            await decisions.resolve_reviews(uri, "content-deleted", "firehose-mod")

        written = await self.label_log.emit_many([EmitRequest(uri, x.val, cid=x.cid, neg=True) for x in labels],
                                                 also=record)
        return [s.label.val for s in written]
