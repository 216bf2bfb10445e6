"""`scan TARGET...`: what the daemon would decide about a file, a URL or a track, without writing.

A target is a local audio or image file, a directory (every audio and image file in it,
recursively), an http(s) URL, or the at-uri of a track (its record read with getRecord from
the author's PDS, its media fetched like the daemon fetches it). Each becomes a `Track` and
goes through the daemon's own scanners, `ScanEngine.scan` and `ScanEngine.plan`; `apply` is
never called. The label log, decision store and catalogue are opened read-only (SQLite
refuses any write), the effects scanners describe (indexing an upload) are not performed, the
signing key is not read, and media are cached in a scratch directory that is deleted afterwards.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import anyio
import httpx
import structlog

from firehose_mod.config import Settings
from firehose_mod.ingest.records import FetchError
from firehose_mod.ingest.resolve import ResolveError
from firehose_mod.ops.explain import summarise
from firehose_mod.ops.rescan import effective_change
from firehose_mod.ops.targets import (
    DRY_RUN_DID,
    LocalFilesMedia,
    _Job,
    _synthetic_record,
    expand_targets,
    fetch_track,
)
from firehose_mod.scan.base import Finding, MediaError, Track
from firehose_mod.scan.engine import ScanEngine
from firehose_mod.scan.fingerprint import DecodeError
from firehose_mod.scan.policy import Plan
from firehose_mod.scan.registry import open_engine, run_cpu
from firehose_mod.store.db import open_db

log = structlog.get_logger(__name__)

Progress = Callable[[int, int, str, str], Any]  # (done, total, target, status)


@dataclass
class TargetResult:
    """What the daemon would make of one target. `plan` leaves out what is already true."""

    target: str
    source: str  # file | url | at-uri
    kind: str  # audio | image | record | unknown
    uri: str | None = None
    findings: list[Finding] = field(default_factory=list)
    plan: Plan = field(default_factory=Plan)
    match: dict | None = None  # the best copyright match: ref, scanner, score, seconds and offsets
    errors: list[dict[str, str]] = field(default_factory=list)  # {where, error}: fetch or scanner failures
    seconds: float = 0.0

    @property
    def status(self) -> str:
        """error | label | review | negate | clean: the most serious outcome, for progress and exit codes."""
        if self.errors:
            return "error"
        return next((s for s, x in (("label", self.plan.emit), ("review", self.plan.review),
                                     ("negate", self.plan.negate)) if x), "clean")

    def to_json(self) -> dict:
        def decision(d) -> dict:
            return {"value": d.value, "rule": d.rule, "evidence": [_finding_json(f) for f in d.findings]}

        return {
            "target": self.target, "source": self.source, "kind": self.kind, "uri": self.uri,
            "status": self.status,
            "match": self.match["ref"] if self.match else None, "match_detail": self.match,
            "decisions": {"emit": [decision(d) for d in self.plan.emit],
                          "negate": [{"value": v, "rule": "no longer found"} for v in self.plan.negate],
                          "review": [decision(d) for d in self.plan.review],
                          "ignored": [{"rule": r, "finding": _finding_json(f)} for r, f in self.plan.ignored]},
            "findings": [_finding_json(f) for f in self.findings],
            "errors": self.errors, "seconds": self.seconds,
        }


@dataclass
class DryRunReport:
    results: list[TargetResult]  # in target order, a directory's files sorted by path
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, why): files in directories
    scanners: list[str] = field(default_factory=list)
    policy_version: str = ""
    seconds: float = 0.0


# -- entry point ---------------------------------------------------------------------------------
async def dry_run(settings: Settings, targets: list[str], *, progress: Progress | None = None,
                  concurrency: int | None = None,
                  on_result: Callable[[TargetResult], Any] | None = None) -> DryRunReport:
    """Scan and plan every target as the daemon would; returns every result, in target order.

    `concurrency` targets are scanned at once (default: one per core; the CPU work runs in
    anyio's process pool). `progress(done, total, target, status)` and `on_result(result)` are
    called as each target finishes, in finishing order, so a CLI can stream output.
    """
    started = time.monotonic()
    jobs, skipped = expand_targets(targets)
    results: list[TargetResult | None] = [None] * len(jobs)
    with tempfile.TemporaryDirectory(prefix="firehose-mod-dry-run-") as scratch:
        async with open_read_only_engine(settings, Path(scratch)) as (engine, media, client):
            limiter = anyio.CapacityLimiter(concurrency or os.cpu_count() or 1)
            done = 0

            async def one(i: int, job: _Job) -> None:
                nonlocal done
                async with limiter:
                    result = await _scan_one(engine, media, client, job)
                results[i] = result
                done += 1
                if progress is not None:
                    progress(done, len(jobs), job.target, result.status)
                if on_result is not None:
                    on_result(result)

            async with anyio.create_task_group() as tg:
                for i, job in enumerate(jobs):
                    tg.start_soon(one, i, job)
            names = [s.name for s in engine.scanners]
            policy_version = engine.policy.version
    return DryRunReport([r for r in results if r is not None], skipped, names, policy_version,
                        round(time.monotonic() - started, 2))


# -- the engine, read-only -------------------------------------------------------------------------
@asynccontextmanager
async def open_read_only_engine(settings: Settings, scratch: Path) -> AsyncIterator[tuple[ScanEngine, Any, Any]]:
    """The daemon's scanners and policy over read-only stores: (engine, media, http client).

    The same builder as the daemon's (`scan.registry.open_engine`), asked for its read-only
    variant: media cached under `scratch`, never in the daemon's cache (whose LRU we would
    evict); no effects performed. Without a database yet, an empty one in `scratch` stands in.
    """
    if not settings.db_path.exists():
        log.warning("dryrun.no_database", db=str(settings.db_path), using="an empty scratch database")
        settings = replace(settings, db_file=scratch / "empty.sqlite3")
        await (await open_db(settings.db_path)).close()  # created and migrated, then read like the real one
    async with open_engine(settings, read_only=True, cache_dir=scratch / "media", wrap_media=LocalFilesMedia,
                           cpu=_noting_decode_errors(run_cpu)) as scanning:
        yield scanning.engine, scanning.media, scanning.client


# -- one target ----------------------------------------------------------------------------------
_decode_errors: ContextVar[list[str] | None] = ContextVar("dryrun_decode_errors", default=None)


def _noting_decode_errors(run_cpu):
    """`run_cpu`, noting media ffmpeg cannot decode: a scanner sees no match there, a dry run an error."""

    async def run(fn, *args):
        try:
            return await run_cpu(fn, *args)
        except DecodeError as exc:
            if (noted := _decode_errors.get()) is not None:
                noted.append(str(exc))
            raise

    return run


async def _scan_one(engine: ScanEngine, media: LocalFilesMedia, client: httpx.AsyncClient, job: _Job) -> TargetResult:
    started = time.monotonic()
    result = TargetResult(job.target, job.source, job.kind or "unknown")
    _decode_errors.set(undecodable := [])
    if job.error is not None:
        result.errors.append({"where": "target", "error": job.error})
        return result
    try:
        track = await _track_for(job, media, client, result)
    except (ResolveError, FetchError, MediaError, OSError) as exc:
        result.errors.append({"where": "fetch", "error": str(exc)[:500]})
        result.seconds = round(time.monotonic() - started, 3)
        return result
    result.uri = track.uri
    scanned = await engine.scan(track)
    result.plan, _change = await effective_change(engine, track, await engine.plan(track, scanned))
    result.findings = scanned.findings
    result.match = best_match(scanned.findings)
    result.errors += [{"where": name, "error": err} for name, err in sorted(scanned.failures.items())]
    result.errors += [{"where": "decode", "error": err[:500]} for err in undecodable]
    result.seconds = round(time.monotonic() - started, 3)
    log.info("dryrun.scanned", target=job.target, status=result.status, findings=len(scanned.findings))
    return result


async def _track_for(job: _Job, media: LocalFilesMedia, client: httpx.AsyncClient, result: TargetResult) -> Track:
    if job.source == "at-uri":
        return await fetch_track(job.target, media.fetcher.resolver, client)
    if job.source == "url":
        name = unquote(urlsplit(job.target).path.rsplit("/", 1)[-1]) or job.target
        kinds = [job.kind] if job.kind else []
        kinds += [k for k in ("audio", "image") if k not in kinds]
        for kind in kinds:  # by extension first, then by what the server says it is
            try:
                await media.fetcher.fetch_url(job.target, kind)  # cached: the scanners reuse the file
            except MediaError as exc:
                if "content type" not in str(exc) or kind == kinds[-1]:
                    raise
                continue
            result.kind = kind
            key = "audioUrl" if kind == "audio" else "imageUrl"
            return Track(job.target, DRY_RUN_DID, name, "", _synthetic_record(name, **{key: job.target}))
        raise AssertionError("unreachable")
    path = Path(job.target).resolve()
    uri = path.as_uri()
    media.local[uri] = (job.kind, path)
    return Track(uri, DRY_RUN_DID, path.name, "", _synthetic_record(path.name))


# -- evidence and output -------------------------------------------------------------------------
def best_match(findings: list[Finding]) -> dict | None:
    """The strongest copyright match (local catalogue before AudD, then seconds matched, then score)."""
    hits = [f for f in findings if f.kind == "copyright-match"]
    if not hits:
        return None
    f = max(hits, key=lambda h: (h.evidence.get("source") != "audd", h.evidence.get("seconds_matched") or 0, h.score))
    e = f.evidence
    if e.get("source") == "audd":
        d = e.get("dominant") or {}
        return {"ref": f"audd:{d.get('artist')} - {d.get('title')}", "scanner": f.scanner, "ref_kind": "audd",
                "title": d.get("title"), "artist": d.get("artist"), "score": f.score, "seconds_matched": None}
    keys = ("ref", "ref_kind", "title", "artist", "seconds_matched", "query_start", "query_end", "ref_start",
            "ref_end", "time_scale", "pitch_shift", "same_did")
    return _plain({"scanner": f.scanner, "score": f.score, **{k: e.get(k) for k in keys}})


def render_text(result: TargetResult) -> str:
    """The operator's report on one target: match, would-be decisions, findings, errors."""
    lines = [f"{result.target}  ({result.kind}, {result.source}; scanned in {result.seconds:g} s)"]
    m = result.match
    if m:
        lines.append(f"  match    {m['ref']}" + (f" {m['title']!r}" if m.get("title") else "")
                     + (f" by {m['artist']!r}" if m.get("artist") else ""))
    for d in result.plan.emit:
        lines.append(f"  LABEL    {d.value}  (rule {d.rule})")
    for v in result.plan.negate:
        lines.append(f"  NEGATE   {v}  (no longer found)")
    for d in result.plan.review:
        lines.append(f"  REVIEW   {d.value}  (rule {d.rule})")
    ignored = {id(f): rule for rule, f in result.plan.ignored}
    for f in result.findings:
        why = f"  [ignored: {ignored[id(f)]}]" if id(f) in ignored else ""
        lines.append(f"  found    {f.scanner}: {summarise(f.kind, f.score, _plain(f.evidence))}{why}")
    for e in result.errors:
        lines.append(f"  ERROR    {e['where']}: {e['error']}")
    if result.status == "clean":
        lines.append("  nothing would change")
    return "\n".join(lines)


def summary(report: DryRunReport) -> dict[str, int | float]:
    """Counts over the report: targets, would-label, would-review, would-negate, matched, errors."""
    results = report.results
    return {"targets": len(results), "would_label": sum(bool(r.plan.emit) for r in results),
            "would_review": sum(bool(r.plan.review) for r in results),
            "would_negate": sum(bool(r.plan.negate) for r in results),
            "matched": sum(r.match is not None for r in results),
            "errors": sum(bool(r.errors) for r in results), "skipped": len(report.skipped),
            "seconds": report.seconds}


def render_summary(report: DryRunReport) -> str:
    s = summary(report)
    return (f"scanned {s['targets']} target(s) in {s['seconds']:g} s: {s['would_label']} would be labelled,"
            f" {s['would_review']} would go to review, {s['would_negate']} would have labels negated,"
            f" {s['matched']} matched the catalogue, {s['errors']} with errors"
            + (f", {s['skipped']} file(s) skipped" if s["skipped"] else "") + "; nothing was written")


def exit_code(report: DryRunReport) -> int:
    """0: nothing would change; 1: something would be labelled, negated or reviewed; 2: errors."""
    if any(r.errors for r in report.results):
        return 2
    return 1 if any(r.status != "clean" for r in report.results) else 0


def _finding_json(f: Finding) -> dict:
    return _plain(asdict(f))


def _plain(x: Any) -> Any:
    """JSON-ready: numpy scalars and arrays become numbers and lists, tuples lists."""
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if hasattr(x, "tolist") and not isinstance(x, (str, bytes)):
        return x.tolist()  # numpy scalar or array
    if isinstance(x, bytes):
        return x.hex()
    return x
