"""The fingerprint catalogue as the daemon holds it: its store and the index over it.

The catalogue is the copyright scanner's one dependency and the one place that writes
fingerprints while the daemon runs: the engine hands it the `IndexUpload` effects scanners
describe, and a watcher reloads the index when an operator imports or removes references
from another process.

The SQLite catalogue stays the source of truth. The index over it lives in memory-mapped
segments in a directory next to the database (`<db>.fpindex/`, segment.py): start-up maps
them (milliseconds) and checks each reference against the catalogue's live rows, then reads
from SQLite only the references no segment holds yet (new imports, uploads since the last
flush) into memory. Once those reach `SEGMENT_ENTRIES`, they are written out as a new
segment. A catalogue change never rebuilds the whole index.

Segments are merged in the background (`Catalogue.keep_merged`, `plan_merge`), keeping their
sizes geometric: every probe of a lookup reads an offset and a run of postings in each segment,
so the pages a lookup touches grow with the number of segments (at 100,000 tracks, the same
lookups touched 2.75 GB of page cache over 12 segments and 0.57 GB over one: bench/FINGERPRINT.md).
A merge streams, lookups go on meanwhile, a shutdown stops it without a trace, and it waits when
the disk cannot hold the merged copy.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import numpy as np
import structlog

from firehose_mod.scan.base import IndexUpload
from firehose_mod.scan.copyright import CopyrightScanner
from firehose_mod.scan.fingerprint import FINGERPRINT_VERSION, Entries, FingerprintIndex
from firehose_mod.scan.fingerprint.segment import (
    MAX_REFS,
    MergeStopped,
    RefInfo,
    Segment,
    list_segments,
    remove_segments,
    write_segment,
)
from firehose_mod.store.catalogue import CatalogueStore
from firehose_mod.store.db import close_shielded

log = structlog.get_logger(__name__)

SEGMENT_ENTRIES = 4_000_000  # entries held in memory before they go to a segment: ~500 three-minute tracks
MAX_SEGMENTS = 16  # more than this, and the smallest are merged whatever their sizes
MERGE_RATIO = 4  # smaller segments join a larger one once they hold a quarter of its entries
MERGE_INTERVAL = 60.0  # seconds between the background merger's looks at the segments
MERGE_DISK_MARGIN = 1 << 30  # free disk left over once a merged copy is written
LOAD_CHUNK = 1000  # references read from SQLite at a time
BULK_ENTRIES = 64_000_000  # at a first start, what no segment holds goes to segments this large (~2.5 GB to build)


def index_dir(db_path: Path) -> Path:
    """Where the on-disk index of the catalogue at `db_path` lives."""
    return db_path.with_name(db_path.name + ".fpindex")


class IndexFiles:
    """The segment directory of one catalogue, and the right to write it (one process at a time)."""

    def __init__(self, root: Path | None, writable: bool):
        self.root = root
        self._fd: int | None = None
        if root is not None and writable:
            try:
                root.mkdir(parents=True, exist_ok=True)
                fd = os.open(root / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    self._fd = fd
                except OSError:
                    os.close(fd)  # another process writes it: read and map only
            except OSError as exc:
                log.warning("catalogue.index_dir_unwritable", path=str(root), error=str(exc))

    @property
    def writable(self) -> bool:
        return self._fd is not None

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _open_segment(path: Path) -> Segment | None:
    """Map one segment; None if it went away meanwhile (the writer deletes what it merged: a
    process that only maps the directory may list a segment a moment before it goes, and the
    merged one that replaces it holds its references)."""
    try:
        return Segment(path)
    except (FileNotFoundError, NotADirectoryError) as exc:
        log.info("catalogue.segment_gone", path=str(path), error=str(exc))
        return None


def _listed(root: Path | None) -> list[Path]:
    """Finished segments under `root`, oldest first, for a process that only maps them: it
    sweeps nothing, and a segment deleted while it looks is left out."""
    found = []
    if root is not None and root.is_dir():
        for p in root.iterdir():
            if p.name.startswith("seg-"):
                try:
                    found.append(((p / "refs.json").stat().st_mtime_ns, p))
                except (FileNotFoundError, NotADirectoryError):
                    continue
    return [p for _, p in sorted(found)]


async def load_segmented(store: CatalogueStore, index: FingerprintIndex, files: IndexFiles) -> dict[str, int]:
    """Fill `index` from the segments in `files` and, for what they do not hold, from SQLite."""
    live, stale = await store.live_refs(FINGERPRINT_VERSION)
    paths = list_segments(files.root) if files.root is not None and files.writable else _listed(files.root)
    segs = await anyio.to_thread.run_sync(lambda: [seg for p in paths if (seg := _open_segment(p)) is not None])
    covered: set[str] = set()
    useless = []
    for seg in reversed(segs):  # newest first: a reference in two segments is served from the newer
        if seg.version != FINGERPRINT_VERSION:
            useless.append(seg)
            continue
        mask = np.zeros(len(seg.refs), bool)
        for i, r in enumerate(seg.refs):
            if r.name not in covered and live.get(r.name) == (r.row_id, r.added):
                mask[i] = True
                covered.add(r.name)
        if mask.any():
            index.attach(seg, mask)
        else:
            useless.append(seg)
    if files.writable and useless:
        remove_segments(s.path for s in useless)
    missing = [row_id for ref, (row_id, _) in live.items() if ref not in covered]
    bulk: list = []  # references no segment holds: to a new segment once there are many (a first start)
    bulk_entries = 0

    async def write(items: list) -> None:
        seg = await anyio.to_thread.run_sync(lambda: Segment(write_segment(files.root, items, FINGERPRINT_VERSION)))
        index.attach(seg)

    for i in range(0, len(missing), LOAD_CHUNK):
        rows = await store.load_entries(missing[i:i + LOAD_CHUNK])
        for ref, row_id, added, data in rows:
            e = Entries.from_bytes(data)
            bulk.append((RefInfo(ref, row_id, added), e.keys, e.t, e.f, e.span))
            bulk_entries += len(e)
        if files.writable and bulk_entries >= BULK_ENTRIES:
            items, bulk, bulk_entries = bulk, [], 0
            await write(items)
            del items
    if files.writable and bulk and bulk_entries >= SEGMENT_ENTRIES:
        await write(bulk)
    elif bulk:  # a few: kept in memory until uploads add up to a segment
        await anyio.to_thread.run_sync(
            lambda: index.add_many(((r.name, Entries(k, t, f, sp)) for r, k, t, f, sp in bulk),
                                   info=[(r.row_id, r.added) for r, *_ in bulk]))

    if files.writable:  # merging is left to the background (`Catalogue.keep_merged`): start-up stays short
        await anyio.to_thread.run_sync(lambda: maintain(index, files, merge=False))
    await anyio.to_thread.run_sync(index.compact)
    if stale:
        log.warning("catalogue.stale_refs", refs=len(stale), version=FINGERPRINT_VERSION,
                    fix="re-import these references: they were fingerprinted by another version")
    return {"loaded": len(live), "from_segments": len(covered), "from_sqlite": len(missing), "stale": len(stale),
            **index.stats()}


def index_summary(root: Path) -> dict:
    """The on-disk index as `catalogue stats` shows it: finished segments (newest last), their
    entries, bytes on disk, and whether the background merger has work to do (references
    removed since a segment was written are not known here: counted as live)."""
    segs = []
    for p in _listed(root):
        meta = json.loads((p / "refs.json").read_text())
        segs.append((int(meta.get("entries", 0)), len(meta["refs"]), sum(f.stat().st_size for f in p.iterdir())))
    return {"segments": len(segs), "segment_entries": [e for e, _, _ in segs],
            "index_bytes": sum(b for _, _, b in segs),
            "merge_pending": bool(plan_merge([(e, r, 1.0) for e, r, _ in segs]))}


def plan_merge(segs: list[tuple[int, int, float]], *, ratio: float = MERGE_RATIO,
               max_segments: int = MAX_SEGMENTS, max_refs: int = MAX_REFS) -> list[int]:
    """The segments to merge next, as indexes into `segs` ((entries, references, live fraction)
    of each); [] when the segments are as they should be.

    A group starts at a segment and takes the next larger one while it holds at most `ratio`
    times the live entries the group already holds; the first group (from the smallest) with two
    segments or more is merged, with every segment smaller than where it starts. So the bulk
    segments of a first start (equal sizes and a remainder) become one; an upload's small segment
    is merged with the other small ones, and into a large one only once they add up to a
    `ratio`-th of it. Sizes stay geometric: about
    log_(ratio+1)(catalogue / segment) segments (4-5 at 100,000 tracks), each entry rewritten
    about 10 times over a catalogue's life at `ratio` 4 (simulated: 1,600 flushes, 5 segments at most).
    Past `max_segments` the smallest are merged whatever their sizes; a segment mostly of
    removed or replaced references is rewritten alone. A group never holds more than `max_refs`
    references (what a segment can number)."""
    live = [(e * f, int(round(r * f))) for e, r, f in segs]
    order = sorted(range(len(segs)), key=lambda i: live[i][0])
    for first in range(len(order)):
        # a group from here up; the smaller ones below it come along (they cost little)
        end, entries = first + 1, live[order[first]][0]
        while end < len(order) and live[order[end]][0] <= ratio * entries:
            entries += live[order[end]][0]
            end += 1
        if end - first >= 2 and len(group := _within(order[:end], live, max_refs)) >= 2:
            return group
    if len(segs) > max_segments and len(group := _within(order[:len(segs) - max_segments // 2 + 1],
                                                         live, max_refs)) >= 2:
        return group
    return [i for i in order if segs[i][2] < 0.5 and segs[i][1]][:1]


def _within(candidates: list[int], live: list[tuple[float, int]], max_refs: int) -> list[int]:
    """The first of `candidates` (smallest first) whose references fit in one segment."""
    group, refs = [], 0
    for i in candidates:
        if refs + live[i][1] > max_refs:
            break
        group.append(i)
        refs += live[i][1]
    return group


def maintain(index: FingerprintIndex, files: IndexFiles, *, max_segments: int = MAX_SEGMENTS,
             ratio: float = MERGE_RATIO, merge: bool = True, stop: threading.Event | None = None) -> int:
    """Flush what is in memory once it is large, then (with `merge`) merge segments as
    `plan_merge` says until it has nothing left to do; returns how many merges ran.

    Blocking: run it in a thread. `stop` (set by a shutdown) ends a merge between two chunks
    and leaves the segments as they were. A merge the disk cannot hold is skipped with a
    warning and tried again at the next call."""
    if not files.writable:
        return 0
    if index.memory_entries() >= SEGMENT_ENTRIES:
        index.flush(files.root, FINGERPRINT_VERSION)
    merged = 0
    while merge and not (stop is not None and stop.is_set()):
        segs = index.segments()
        live = [float(m.mean()) if m.size else 1.0 for _, m in segs]
        pick = plan_merge([(s.size, len(s.refs), f) for (s, _), f in zip(segs, live)],
                          ratio=ratio, max_segments=max_segments)
        if not pick:
            break
        chosen = [segs[i][0] for i in pick]
        need = int(sum(segs[i][0].disk_bytes() * live[i] for i in pick))
        free = shutil.disk_usage(files.root).free
        if free < need + MERGE_DISK_MARGIN:
            log.warning("catalogue.merge_waits_for_disk", segments=len(pick), need_bytes=need, free_bytes=free,
                        index_dir=str(files.root),
                        fix=f"free {(need + MERGE_DISK_MARGIN - free) / 2**30:.1f} GiB on the disk of {files.root}: "
                            "lookups go on over more segments (slower, more memory) until then")
            break
        entries = sum(s.size for s in chosen)
        log.info("catalogue.merge_started", segments=len(pick), entries=entries, bytes=need)
        t0, c0, shown = time.monotonic(), time.thread_time(), [0.0]

        def progress(fraction: float, t0: float = t0, shown: list = shown) -> None:
            if fraction >= 1.0 or (fraction - shown[0] >= 0.1 and time.monotonic() - t0 > 5):
                shown[0] = fraction
                log.info("catalogue.merge_progress", percent=round(100 * fraction), seconds=round(time.monotonic() - t0, 1))

        try:
            index.merge_segments(files.root, FINGERPRINT_VERSION, chosen,
                                 stop=stop.is_set if stop is not None else None, progress=progress)
        except MergeStopped:
            log.info("catalogue.merge_stopped", segments=len(pick), seconds=round(time.monotonic() - t0, 1))
            break
        remove_segments(s.path for s in chosen)
        merged += 1
        log.info("catalogue.merged", segments=len(pick), entries=entries, wall_s=round(time.monotonic() - t0, 1),
                 cpu_s=round(time.thread_time() - c0, 1), now=len(index.segments()))
    return merged


class Catalogue:
    """The catalogue store, the index built from it, and the copyright scanner over both."""

    def __init__(self, store: CatalogueStore, index: FingerprintIndex, files: IndexFiles | None = None):
        self.store = store
        self.index = index
        self.files = files or IndexFiles(None, False)
        self.scanner = CopyrightScanner(store, index)
        self._maintaining = anyio.Lock()

    async def index_upload(self, upload: IndexUpload) -> None:
        """Keep a scanned upload's fingerprint (a new version replaces the old one)."""
        await self.store.add_upload(
            upload.uri, upload.entries, fp_version=upload.fp_version, entry_count=upload.entry_count,
            title=upload.title, artist=upload.artist, source=upload.uri, duration=upload.duration,
            sha256=upload.sha256, chromaprint=upload.chromaprint,
        )
        row = await self.store.get(upload.uri)
        ident = (row.id, row.added) if row is not None else (0, "")
        index = self.index
        await anyio.to_thread.run_sync(lambda: index.add(upload.uri, Entries.from_bytes(upload.entries),
                                                         row_id=ident[0], added=ident[1]))
        if self.files.writable and index.memory_entries() >= SEGMENT_ENTRIES and not self._maintaining.locked():
            async with self._maintaining:  # the flush only: `keep_merged` merges (it holds the lock meanwhile)
                await anyio.to_thread.run_sync(lambda: maintain(index, self.files, merge=False))

    async def keep_merged(self, interval: float = MERGE_INTERVAL) -> None:
        """Merge the index's segments as `plan_merge` says, at once and then every `interval`
        seconds, in a thread while lookups go on. Runs until cancelled; a cancel stops a merge in
        flight between two chunks (about a second) and leaves the segments as they were. Only the
        process that holds the index directory merges; the others map what it writes."""
        if not self.files.writable:
            return
        while True:
            async with self._maintaining:
                await self._merge_now()
            await anyio.sleep(interval)

    async def _merge_now(self) -> int:
        index, stop, finished = self.index, threading.Event(), threading.Event()

        def work() -> int:
            try:
                return maintain(index, self.files, stop=stop)
            finally:
                finished.set()

        try:
            return await anyio.to_thread.run_sync(work, abandon_on_cancel=True)
        finally:
            stop.set()
            if not finished.is_set():  # cancelled: wait (shielded) for the merge to notice and clean up
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(finished.wait, 30.0)

    async def follow_imports(self, interval: float = 30.0) -> None:
        """Reload the index when an operator imports or removes references from another process
        (`firehose-mod catalogue add/remove` while the daemon runs). Runs until cancelled. The
        reload maps the segments again and reads from SQLite only what they do not hold. A process
        that only maps the index directory also reloads when the writer merged its segments (the
        old maps would keep the deleted files' disk space and pages)."""
        seen = await self._signature()
        while True:
            await anyio.sleep(interval)
            now = await self._signature()
            if now != seen:
                async with self._maintaining:
                    fresh = FingerprintIndex()
                    loaded = await load_segmented(self.store, fresh, self.files)
                    self.index = self.scanner.index = fresh  # swapped whole: a scan in flight ends on the old one
                seen = now
                log.info("catalogue.reloaded", **loaded)

    async def _signature(self) -> tuple:
        refs = await self.store.reference_signature()
        if self.files.writable:
            return (refs,)
        return (refs, tuple(p.name for p in _listed(self.files.root)))


@asynccontextmanager
async def open_catalogue(db_path: Path, *, synchronous: str = "FULL", read_only: bool = False,
                         database_url: str | None = None) -> AsyncIterator[Catalogue]:
    """Open the catalogue and its index: the on-disk segments are mapped, not read, so start-up
    takes about a second at any size; only references no segment holds yet are read into memory.
    With `database_url` the rows are PostgreSQL's, shared by every scan machine; the segments
    stay beside `db_path`, this machine's own."""
    if database_url:
        from firehose_mod.store.pg.catalogue import PgCatalogueStore

        store = await PgCatalogueStore.open(database_url)
    else:
        store = await CatalogueStore.open(db_path, synchronous=synchronous, readonly=read_only)
    files = IndexFiles(index_dir(db_path), writable=not read_only)
    try:
        index = FingerprintIndex()
        loaded = await load_segmented(store, index, files)
        log.info("catalogue.loaded", read_only=read_only, index_dir=str(files.root), **loaded)
        yield Catalogue(store, index, files)
    finally:
        files.close()
        await close_shielded(store)
