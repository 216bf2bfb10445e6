"""Copyright (audio): find a reference recording, or an earlier upload, inside a new upload.

`CopyrightScanner` fingerprints the upload in the CPU pool, queries the in-memory landmark
index (references and every earlier upload), and reports each match as a claim for the
policy to weigh: a fingerprint match is not a verdict (a cover, or the artist's own
re-upload, matches too). It then indexes the upload under its at-uri so a later copy of it
is found. `import_paths` fills the catalogue from a rights holder's files.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import structlog

from firehose_mod.scan.base import MEDIA_UNAVAILABLE, Finding, IndexUpload, ScanContext, Track
from firehose_mod.scan.fingerprint import (
    FINGERPRINT_VERSION, LONG_PARAMS, AudioAnalysis, DecodeError, Entries, FingerprintIndex, Match,
    analyse_file, describe_edit, index_entries, is_duplicate, sha256_file,
)
from firehose_mod.store.catalogue import CatalogueStore

log = structlog.get_logger(__name__)

AUDIO_EXTENSIONS = frozenset({
    ".mp3", ".wav", ".flac", ".ogg", ".oga", ".opus", ".m4a", ".aac", ".aif", ".aiff", ".wma", ".alac",
    ".mp4", ".webm", ".mka",
})

RunCpu = Callable[..., Awaitable[Any]]


async def load_index(store: CatalogueStore, index: FingerprintIndex) -> dict[str, int]:
    """Fill `index` from the catalogue at start; returns counts (stale refs need a re-import)."""
    loaded, stale = await store.load_all(FINGERPRINT_VERSION)

    def build() -> None:
        index.add_many((ref, Entries.from_bytes(data)) for ref, data in loaded)
        index.compact()

    await anyio.to_thread.run_sync(build)
    if stale:
        log.warning("catalogue.stale_refs", refs=len(stale), version=FINGERPRINT_VERSION,
                    fix="re-import these references: they were fingerprinted by another version")
    return {"loaded": len(loaded), "stale": len(stale), **index.stats()}


class CopyrightScanner:
    """Scanner `copyright`: landmark matches against the catalogue. It reads only: indexing the
    upload (so a later copy of it is found) is an `IndexUpload` effect the engine performs."""

    name = "copyright"
    version = f"2+{FINGERPRINT_VERSION}"  # 2: nightcore, slowed, tempo and pitch edits searched
    kinds = frozenset({"copyright-match", MEDIA_UNAVAILABLE})
    values = frozenset({"copyright-violation"})
    after_local = False

    def __init__(self, store: CatalogueStore, index: FingerprintIndex, *, max_matches: int = 5):
        self.store = store
        self.index = index  # replaced whole by the catalogue when references change
        self.max_matches = max_matches

    async def scan(self, track: Track, ctx: ScanContext) -> list[Finding]:
        path = await ctx.media.audio(track)
        if path is None:
            return []
        try:
            analysis: AudioAnalysis = await ctx.run_cpu(analyse_file, str(path), LONG_PARAMS)
        except DecodeError as exc:  # user input: a finding-free scan, never a crash
            log.info("copyright.undecodable", uri=track.uri, error=str(exc)[:300])
            return []
        fp = analysis.fingerprint
        matches: list[Match] = await anyio.to_thread.run_sync(
            partial(self.index.query, fp, exclude=(track.uri,), limit=self.max_matches)
        )
        findings = [await self._finding(m, analysis, track) for m in matches]
        if len(fp):
            entries = index_entries(fp)
            ctx.effects.append(IndexUpload(
                track.uri, entries.to_bytes(), len(entries), fp.version, track.title or None, track.artist or None,
                analysis.duration, analysis.sha256, analysis.chromaprint))
        return findings

    async def _finding(self, m: Match, analysis: AudioAnalysis, track: Track) -> Finding:
        ref = await self.store.get(m.ref_id)
        # An upload's ref is its at-uri: a match on the same account is a re-upload or a new
        # version by the artist themselves, which the policy treats differently.
        ref_did = m.ref_id.removeprefix("at://").split("/")[0] if m.ref_id.startswith("at://") else None
        duplicate = bool(
            ref is not None and ref.chromaprint is not None and analysis.chromaprint is not None
            and is_duplicate(analysis.chromaprint, ref.chromaprint)
        )
        return Finding(
            scanner=self.name, kind="copyright-match", score=float(m.score), value="copyright-violation",
            evidence={
                "ref": m.ref_id, "ref_kind": ref.kind if ref else None,
                "ref_did": ref_did, "same_did": ref_did == track.did,
                "title": ref.title if ref else None, "artist": ref.artist if ref else None,
                "seconds_matched": m.seconds_matched, "matches": m.matches,
                "query_start": m.query_start, "query_end": m.query_end,
                "ref_start": m.ref_start, "ref_end": m.ref_end,
                "time_scale": m.time_scale, "pitch_shift": m.pitch_shift_semitones,
                "edit": describe_edit(m.time_scale, m.pitch_shift_semitones), "pitch_bands": m.pitch_bands,
                "jitter_ms": m.jitter_ms,
                "chromaprint_duplicate": duplicate, "fingerprint": FINGERPRINT_VERSION,
            },
        )


# -- the catalogue import ------------------------------------------------------------------------
@dataclass
class ImportReport:
    """What one import did: refs added, files skipped with the reason, files that failed."""

    added: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (path, error)
    seconds_of_audio: float = 0.0


Progress = Callable[[int, int, str, str], Any]  # (done, total, path, status)


def _walk(paths: Iterable[str | Path], report: ImportReport) -> list[Path]:
    files: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            candidates = sorted(q for q in p.rglob("*") if q.is_file())
        elif p.is_file():
            candidates = [p]
        else:
            report.skipped.append((str(p), "no such file or directory"))
            continue
        for q in candidates:
            if q.suffix.lower() in AUDIO_EXTENSIONS:
                files.append(q)
            else:
                report.skipped.append((str(q), f"not an audio file ({q.suffix or 'no extension'})"))
    return files


def reference_name(path: Path) -> str:
    """The ref a file is imported under: its resolved path."""
    return f"file:{path.resolve()}"


async def import_paths(paths: Iterable[str | Path], store: CatalogueStore, index: FingerprintIndex,
                       progress: Progress | None = None, run_cpu: RunCpu | None = None, *,
                       concurrency: int | None = None) -> ImportReport:
    """Fingerprint reference audio (files, directories recursively) into the catalogue and index.

    Resumable: a file whose sha256 is already in the catalogue is skipped. `run_cpu` is the
    daemon's process pool (`await run_cpu(fn, *args)`); without one, a pool is made here.
    """
    report = ImportReport()
    files = _walk(paths, report)
    workers = concurrency or os.cpu_count() or 1
    pool = None
    if run_cpu is None:
        pool = ProcessPoolExecutor(max_workers=workers)

        async def run_cpu(fn, *args):  # noqa: F811 - the local pool stands in for the daemon's
            future = pool.submit(fn, *args)
            return await anyio.to_thread.run_sync(future.result)

    done = 0
    limiter = anyio.CapacityLimiter(workers)

    async def one(path: Path) -> None:
        nonlocal done
        async with limiter:
            status = await _import_one(path, store, index, run_cpu, report)
        done += 1
        if progress is not None:
            progress(done, len(files), str(path), status)

    try:
        async with anyio.create_task_group() as tg:
            for path in files:
                tg.start_soon(one, path)
    finally:
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
    await anyio.to_thread.run_sync(index.compact)
    return report


async def _import_one(path: Path, store: CatalogueStore, index: FingerprintIndex, run_cpu: RunCpu,
                      report: ImportReport) -> str:
    try:
        sha = await anyio.to_thread.run_sync(sha256_file, path)
        known = await store.find_sha256(sha)
        if known is not None:
            report.skipped.append((str(path), f"already imported as {known.ref}"))
            return "skipped"
        analysis: AudioAnalysis = await run_cpu(partial(analyse_file, str(path), LONG_PARAMS, tags=True))
    except (DecodeError, OSError) as exc:
        report.failed.append((str(path), str(exc)[:300]))
        return "failed"
    fp = analysis.fingerprint
    if len(fp) == 0:
        report.skipped.append((str(path), "no fingerprintable audio (silent or too short)"))
        return "skipped"
    ref = reference_name(path)
    entries = index_entries(fp)
    await store.add_reference(
        ref, entries.to_bytes(), fp_version=fp.version, entry_count=len(entries),
        title=analysis.title or path.stem, artist=analysis.artist, source=str(path.resolve()),
        duration=analysis.duration, sha256=analysis.sha256, chromaprint=analysis.chromaprint,
    )
    # Many small adds: let the index merge on its own schedule; `compact` runs at the end.
    await anyio.to_thread.run_sync(index.add, ref, entries)
    report.added.append(ref)
    report.seconds_of_audio += analysis.duration
    return "added"


async def remove_reference(ref: str, store: CatalogueStore, index: FingerprintIndex) -> bool:
    """Take `ref` out of the catalogue and the live index; False if it was not there."""
    removed = await store.remove(ref)
    index.remove(ref)
    return removed
