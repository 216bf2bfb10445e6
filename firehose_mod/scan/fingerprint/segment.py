"""On-disk index segments: an inverted index over hash keys, memory-mapped, next to the catalogue.

A segment is a directory of numpy arrays (`np.load(mmap_mode="r")`: opening one costs
milliseconds, whatever its size, and pages load as lookups touch them):

- `offsets.npy`: uint32/uint64, 2**KEY_BITS + 1. The postings of key k are
  `postings[offsets[k]:offsets[k + 1]]`: a key needs no search, only two reads.
- `postings.npy`: uint64, one per stored triplet, in key order. Each packs what the coarse
  vote needs: segment-local reference (22 bits), anchor time (8 ms ticks, 22 bits: 9.3 hours),
  anchor pitch (1/16 semitone, 10 bits) and log span (10 bits, 0.43% steps).
- `fkeys.npy`, `ft.npy`, `ff.npy`, `fspan.npy`, `fstart.npy`: the forward copy, each
  reference's own entries at full precision, sorted by key (`fstart[i]:fstart[i + 1]` is
  reference i). The fine alignment of a candidate reads only these few kilobytes.
- `refs.json`: the references (name, catalogue row id, `added` stamp), in local order, and
  the fingerprint version.

Segments are immutable. New references go to a fresh segment; `merge` joins segments (and
drops removed references) by streaming one range of keys at a time, so neither building nor
merging ever holds a whole catalogue in memory.
"""

from __future__ import annotations

import json
import mmap
import os
import shutil
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from firehose_mod.scan.fingerprint.hashing import KEY_BITS

KEY_SPACE = 1 << KEY_BITS
_T_TICK = 0.008
_F_STEP = 1 / 16
_S_REF, _S_STEP = 0.02, 1 / 160  # log2(span / 20 ms) in 1/160 steps
_REF_BITS, _T_BITS, _F_BITS, _S_BITS = 22, 22, 10, 10
MAX_REFS = 1 << _REF_BITS


@dataclass(frozen=True)
class RefInfo:
    name: str
    row_id: int  # catalogue_refs.id (0 when not from a catalogue)
    added: str  # catalogue_refs.added: a replaced fingerprint gets a new stamp


def pack_postings(ref: np.ndarray, t: np.ndarray, f: np.ndarray, span: np.ndarray) -> np.ndarray:
    tt = np.clip(np.round(np.asarray(t, np.float64) / _T_TICK), 0, (1 << _T_BITS) - 1).astype(np.uint64)
    ff = np.clip(np.round(np.asarray(f, np.float32) / _F_STEP), 0, (1 << _F_BITS) - 1).astype(np.uint64)
    sl = np.log2(np.maximum(np.asarray(span, np.float32), 1e-3) / _S_REF) / _S_STEP
    ss = np.clip(np.round(sl), 0, (1 << _S_BITS) - 1).astype(np.uint64)
    return ((ref.astype(np.uint64) << np.uint64(_T_BITS + _F_BITS + _S_BITS)) | (tt << np.uint64(_F_BITS + _S_BITS))
            | (ff << np.uint64(_S_BITS)) | ss)


def unpack_postings(p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(local ref int64, t float32, f float32, span float32)."""
    ref = (p >> np.uint64(_T_BITS + _F_BITS + _S_BITS)).astype(np.int64)
    t = ((p >> np.uint64(_F_BITS + _S_BITS)) & np.uint64((1 << _T_BITS) - 1)).astype(np.float32) * np.float32(_T_TICK)
    f = ((p >> np.uint64(_S_BITS)) & np.uint64((1 << _F_BITS) - 1)).astype(np.float32) * np.float32(_F_STEP)
    s = np.exp2((p & np.uint64((1 << _S_BITS) - 1)).astype(np.float32) * np.float32(_S_STEP)) * np.float32(_S_REF)
    return ref, t, f, s


_SPANS = np.exp2(np.arange(1 << _S_BITS).astype(np.float32) * np.float32(_S_STEP)) * np.float32(_S_REF)


def unpack_pitch_span(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(f float32, span float32) of postings, as `unpack_postings` gives them (the span from a table)."""
    f = ((p >> np.uint64(_S_BITS)) & np.uint64((1 << _F_BITS) - 1)).astype(np.float32) * np.float32(_F_STEP)
    return f, _SPANS[(p & np.uint64((1 << _S_BITS) - 1)).astype(np.intp)]


def unpack_ref_time(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(local ref int64, t float32) of postings, as `unpack_postings` gives them."""
    ref = (p >> np.uint64(_T_BITS + _F_BITS + _S_BITS)).astype(np.int64)
    t = ((p >> np.uint64(_F_BITS + _S_BITS)) & np.uint64((1 << _T_BITS) - 1)).astype(np.float32) * np.float32(_T_TICK)
    return ref, t


def posting_refs(p: np.ndarray) -> np.ndarray:
    return (p >> np.uint64(_T_BITS + _F_BITS + _S_BITS)).astype(np.int64)


class Segment:
    """One immutable, memory-mapped segment."""

    def __init__(self, path: Path):
        self.path = Path(path)
        meta = json.loads((self.path / "refs.json").read_text())
        self.version: str = meta["version"]
        self.refs = [RefInfo(n, int(i), a) for n, i, a in meta["refs"]]

        def load(name: str) -> np.ndarray:
            return np.load(self.path / f"{name}.npy", mmap_mode="r")

        self.offsets = load("offsets")
        self.postings = load("postings")
        self.fkeys, self.ft, self.ff, self.fspan = load("fkeys"), load("ft"), load("ff"), load("fspan")
        self.fstart = np.asarray(load("fstart"), np.int64)
        self._disk_bytes = sum(p.stat().st_size for p in self.path.iterdir())
        # Lookups read a few bytes here and there: without this, every page fault reads ahead
        # (read_ahead_kb: 128 KB to 8 MB), which under a memory limit evicts the pages in use.
        for a in (self.offsets, self.postings, self.fkeys, self.ft, self.ff, self.fspan):
            _advise(a, mmap.MADV_RANDOM)

    @property
    def size(self) -> int:
        return int(self.postings.shape[0])

    def disk_bytes(self) -> int:
        """Bytes of its files, as mapped (still right once a merge has deleted the directory)."""
        return self._disk_bytes

    def ranges(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(first posting, count) of each key."""
        lo = self.offsets[keys].astype(np.int64)
        return lo, self.offsets[keys + 1].astype(np.int64) - lo

    def forward(self, local: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        a, b = int(self.fstart[local]), int(self.fstart[local + 1])
        for arr in (self.fkeys, self.ft, self.ff, self.fspan):  # one read of each run, not a fault per page
            _advise(arr, mmap.MADV_WILLNEED, a, b)
        return (np.asarray(self.fkeys[a:b]), np.asarray(self.ft[a:b]), np.asarray(self.ff[a:b], np.float32),
                np.asarray(self.fspan[a:b], np.float32))


def _advise(arr: np.ndarray, advice: int | None, a: int = 0, b: int | None = None) -> None:
    """madvise(2) the pages of `arr[a:b]` (a memory-mapped array; anything else is left alone)."""
    mm = getattr(arr, "_mmap", None)
    if mm is None or advice is None or not hasattr(mm, "madvise") or not arr.size:
        return
    b = arr.shape[0] if b is None else b
    if b <= a:
        return
    item = arr.itemsize * (int(np.prod(arr.shape[1:])) if arr.ndim > 1 else 1)
    start = arr.offset % mmap.ALLOCATIONGRANULARITY + a * item  # the array's first byte within the map
    first = start - start % mmap.PAGESIZE
    try:
        mm.madvise(advice, first, start + (b - a) * item - first)
    except (OSError, ValueError):  # advice only
        pass


def _new_dir(root: Path) -> tuple[Path, Path]:
    name = f"seg-{uuid.uuid4().hex[:12]}"
    return root / f".{name}.tmp", root / name


def _finish(tmp: Path, final: Path, refs: Sequence[RefInfo], version: str, entries: int) -> Path:
    meta = {"version": version, "entries": entries, "refs": [[r.name, r.row_id, r.added] for r in refs]}
    (tmp / "refs.json").write_text(json.dumps(meta))
    for p in tmp.iterdir():  # durable before it is visible
        with open(p, "rb") as fh:
            os.fsync(fh.fileno())
    os.rename(tmp, final)
    return final


def write_segment(root: Path, items: Sequence[tuple[RefInfo, np.ndarray, np.ndarray, np.ndarray, np.ndarray]],
                  version: str) -> Path:
    """Write one segment of (ref, keys, t, f, span) in memory (for a chunk of references); its path."""
    root.mkdir(parents=True, exist_ok=True)
    if len(items) > MAX_REFS:
        raise ValueError("too many references for one segment")
    tmp, final = _new_dir(root)
    tmp.mkdir()
    lens = np.array([k.size for _, k, _, _, _ in items], np.int64)
    n = int(lens.sum())
    keys = np.concatenate([k for _, k, _, _, _ in items]).astype(np.uint32) if n else np.zeros(0, np.uint32)
    t = np.concatenate([x for _, _, x, _, _ in items]).astype(np.float32) if n else np.zeros(0, np.float32)
    f = np.concatenate([x for _, _, _, x, _ in items]).astype(np.float32) if n else np.zeros(0, np.float32)
    sp = np.concatenate([x for _, _, _, _, x in items]).astype(np.float32) if n else np.zeros(0, np.float32)
    ref = np.repeat(np.arange(len(items), dtype=np.int64), lens)
    # forward: by (ref, key)
    fo = np.argsort((ref.astype(np.uint64) << np.uint64(KEY_BITS)) | keys.astype(np.uint64), kind="stable")
    np.save(tmp / "fkeys.npy", keys[fo])
    np.save(tmp / "ft.npy", t[fo])
    np.save(tmp / "ff.npy", f[fo].astype(np.float16))
    np.save(tmp / "fspan.npy", sp[fo].astype(np.float16))
    np.save(tmp / "fstart.npy", np.concatenate([[0], np.cumsum(lens)]).astype(np.int64))
    del fo
    order = np.argsort(keys, kind="stable")
    counts = np.bincount(keys, minlength=KEY_SPACE)
    odt = np.uint32 if n < (1 << 32) else np.uint64
    np.save(tmp / "offsets.npy", np.concatenate([[0], np.cumsum(counts)]).astype(odt))
    np.save(tmp / "postings.npy", pack_postings(ref[order], t[order], f[order], sp[order]))
    return _finish(tmp, final, [r for r, *_ in items], version, n)


class MergeStopped(Exception):
    """A merge was asked to stop (the daemon is shutting down); nothing was written."""


def merge(root: Path, segments: Sequence[Segment], alive: Sequence[np.ndarray], version: str,
          key_chunk: int = 1 << 16, *, stop: Callable[[], bool] | None = None,
          progress: Callable[[float], None] | None = None) -> Path:
    """One segment holding the live references of `segments` (`alive[i]`: bool per local ref of
    segment i), streamed one range of keys at a time: memory stays a few MB whatever the size.

    `stop()` is polled between chunks: when it answers true the partial segment is deleted and
    `MergeStopped` raised (a merge of 100,000 tracks takes minutes; a shutdown must not wait for it).
    `progress(fraction)` is called as the work advances. Any error leaves no partial segment."""
    tmp, final = _new_dir(root)
    tmp.mkdir()
    try:
        return _merge_into(tmp, final, segments, alive, version, key_chunk, stop or (lambda: False),
                           progress or (lambda _f: None))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _merge_into(tmp: Path, final: Path, segments: Sequence[Segment], alive: Sequence[np.ndarray], version: str,
                key_chunk: int, stop: Callable[[], bool], progress: Callable[[float], None]) -> Path:
    # Read through maps of its own, front to back: read-ahead on (the served maps are advised random).
    segments = [Segment(s.path) for s in segments]
    for seg in segments:
        for a in (seg.offsets, seg.postings, seg.fkeys, seg.ft, seg.ff, seg.fspan):
            _advise(a, mmap.MADV_SEQUENTIAL)
    remaps, refs, flen = [], [], []
    base = 0
    for seg, live in zip(segments, alive):
        live = np.asarray(live, bool)
        remap = np.full(len(seg.refs), -1, np.int64)
        remap[live] = base + np.arange(int(live.sum()))
        base += int(live.sum())
        remaps.append(remap)
        refs += [r for r, ok in zip(seg.refs, live) if ok]
        flen.append(np.diff(seg.fstart)[live])
    if base > MAX_REFS:
        raise ValueError("too many references for one segment")
    lens = np.concatenate(flen) if flen else np.zeros(0, np.int64)
    n = int(lens.sum())
    fstart = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
    np.save(tmp / "fstart.npy", fstart)
    outs = {name: np.lib.format.open_memmap(tmp / f"{name}.npy", mode="w+", dtype=dt, shape=(n,))
            for name, dt in (("fkeys", np.uint32), ("ft", np.float32), ("ff", np.float16), ("fspan", np.float16))}
    pos = 0
    done = 0
    for seg, live in zip(segments, alive):  # forward: live references' runs, in order
        for local in np.flatnonzero(np.asarray(live, bool)):
            done += 1
            if done % 1000 == 0:
                if stop():
                    raise MergeStopped
                progress(0.4 * pos / max(n, 1))  # the forward copy is ~40% of the bytes written
            a, b = int(seg.fstart[local]), int(seg.fstart[local + 1])
            for name, src in (("fkeys", seg.fkeys), ("ft", seg.ft), ("ff", seg.ff), ("fspan", seg.fspan)):
                outs[name][pos:pos + b - a] = src[a:b]
            pos += b - a
    for a in outs.values():
        a.flush()
    del outs
    odt = np.uint32 if n < (1 << 32) else np.uint64
    offsets = np.lib.format.open_memmap(tmp / "offsets.npy", mode="w+", dtype=odt, shape=(KEY_SPACE + 1,))
    post = np.lib.format.open_memmap(tmp / "postings.npy", mode="w+", dtype=np.uint64, shape=(n,))
    offsets[0] = 0
    pos = 0
    shift = np.uint64(_T_BITS + _F_BITS + _S_BITS)
    low = np.uint64((1 << int(shift)) - 1)
    for k0 in range(0, KEY_SPACE, key_chunk):
        if stop():
            raise MergeStopped
        progress(0.4 + 0.6 * k0 / KEY_SPACE)
        k1 = min(k0 + key_chunk, KEY_SPACE)
        parts, kparts = [], []
        for seg, remap in zip(segments, remaps):
            off = np.asarray(seg.offsets[k0:k1 + 1], np.int64)
            p = np.asarray(seg.postings[off[0]:off[-1]])
            if not p.size:
                continue
            k = np.repeat(np.arange(k0, k1, dtype=np.int64), np.diff(off))
            new = remap[posting_refs(p)]
            ok = new >= 0
            parts.append((new[ok].astype(np.uint64) << shift) | (p[ok] & low))
            kparts.append(k[ok])
        if parts:
            p = np.concatenate(parts)
            k = np.concatenate(kparts)
            order = np.argsort(k, kind="stable")  # per key: segments in order, each in its own order
            post[pos:pos + p.size] = p[order]
            counts = np.bincount(k - k0, minlength=k1 - k0)
        else:
            counts = np.zeros(k1 - k0, np.int64)
        offsets[k0 + 1:k1 + 1] = pos + np.cumsum(counts)
        pos += int(counts.sum())
    assert pos == n, (pos, n)
    offsets.flush()
    post.flush()
    del offsets, post
    progress(1.0)
    return _finish(tmp, final, refs, version, n)


def list_segments(root: Path) -> list[Path]:
    """Finished segments under `root`, oldest first (a crashed write leaves only a `.tmp` to sweep)."""
    if not root.is_dir():
        return []
    for p in root.glob(".seg-*.tmp"):
        shutil.rmtree(p, ignore_errors=True)
    segs = [p for p in root.iterdir() if p.is_dir() and p.name.startswith("seg-") and (p / "refs.json").exists()]
    return sorted(segs, key=lambda p: (p / "refs.json").stat().st_mtime_ns)


def remove_segments(paths: Iterable[Path]) -> None:
    for p in paths:
        shutil.rmtree(p, ignore_errors=True)
