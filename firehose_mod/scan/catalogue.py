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
segment; when there are more than `MAX_SEGMENTS`, the smallest are merged. A catalogue change
never rebuilds the whole index.
"""

from __future__ import annotations

import fcntl
import os
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
MAX_SEGMENTS = 16  # more than this, and the smallest are merged
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


async def load_segmented(store: CatalogueStore, index: FingerprintIndex, files: IndexFiles) -> dict[str, int]:
    """Fill `index` from the segments in `files` and, for what they do not hold, from SQLite."""
    live, stale = await store.live_refs(FINGERPRINT_VERSION)
    paths = list_segments(files.root) if files.root is not None and files.writable else (
        sorted([p for p in files.root.iterdir() if p.is_dir() and p.name.startswith("seg-")
                and (p / "refs.json").exists()], key=lambda p: (p / "refs.json").stat().st_mtime_ns)
        if files.root is not None and files.root.is_dir() else [])
    segs = await anyio.to_thread.run_sync(lambda: [Segment(p) for p in paths])
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

    if files.writable:
        await anyio.to_thread.run_sync(maintain, index, files)
    await anyio.to_thread.run_sync(index.compact)
    if stale:
        log.warning("catalogue.stale_refs", refs=len(stale), version=FINGERPRINT_VERSION,
                    fix="re-import these references: they were fingerprinted by another version")
    return {"loaded": len(live), "from_segments": len(covered), "from_sqlite": len(missing), "stale": len(stale),
            **index.stats()}


def maintain(index: FingerprintIndex, files: IndexFiles, *, max_segments: int = MAX_SEGMENTS) -> None:
    """Flush what is in memory once it is large, and merge the smallest segments when there are
    too many (or one is mostly removed references). Blocking: run it in a thread."""
    if not files.writable:
        return
    if index.memory_entries() >= SEGMENT_ENTRIES:
        index.flush(files.root, FINGERPRINT_VERSION)
    segs = index.segments()
    sizes = [(s.size, s, m) for s, m in segs]
    sizes.sort(key=lambda x: x[0])
    pick = []
    if len(sizes) > max_segments:
        pick = [s for _, s, _ in sizes[:len(sizes) - max_segments // 2 + 1]]
    else:
        # a segment whose references are mostly removed or replaced is rewritten alone
        pick = [s for _, s, m in sizes if m.size and m.mean() < 0.5][:1]
    if pick:
        index.merge_segments(files.root, FINGERPRINT_VERSION, pick)
        remove_segments(s.path for s in pick)


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
            async with self._maintaining:
                await anyio.to_thread.run_sync(maintain, index, self.files)

    async def follow_imports(self, interval: float = 30.0) -> None:
        """Reload the index when an operator imports or removes references from another process
        (`firehose-mod catalogue add/remove` while the daemon runs). Runs until cancelled. The
        reload maps the segments again and reads from SQLite only what they do not hold."""
        seen = await self.store.reference_signature()
        while True:
            await anyio.sleep(interval)
            now = await self.store.reference_signature()
            if now != seen:
                async with self._maintaining:
                    fresh = FingerprintIndex()
                    loaded = await load_segmented(self.store, fresh, self.files)
                    self.index = self.scanner.index = fresh  # swapped whole: a scan in flight ends on the old one
                seen = now
                log.info("catalogue.reloaded", **loaded)


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
