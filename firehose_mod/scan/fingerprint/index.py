"""The landmark index: references in memory (sorted blocks) or in memory-mapped on-disk
segments (segment.py), looked up the same way.

In memory, new references go to small sorted blocks that are merged into the main block once
they grow; a removed reference is masked at once and dropped at the next merge. On disk, a
segment is an inverted index (an offset table over every hash key, then packed postings) plus
each reference's own entries (its forward copy); `flush` writes the references held in memory
to a new segment, `merge_segments` joins segments.

A query searches the edits re-uploaders make (`MatchParams`: speed changes such as nightcore
and "slowed", tempo-only and pitch-only changes) in one pass, in two stages:
1. candidate search: the query's triplets probe every span and pitch-band bucket those edits
   can move a triplet to (no edge neighbours). Each probe's number of postings is known before
   any posting is read, so only the rarest probes are read, up to `hit_budget` postings per
   query-minute: the cost stays flat as the catalogue grows, and common keys (the least
   informative) are the ones left out. Those hits vote in coarse (reference, pitch shift,
   coarse time scale, offset) cells; the strongest references are the candidates.
2. fine, per candidate: every hit of the reference, from its forward copy, with the full probe
   set (edge neighbours included): the same hits as reading the whole index. align.py then finds
   the pitch-shift mode, a grid of time scales around the hits' own scale, for each an offset
   histogram; the best (scale, offset) picks the consistent matches, whose query times, merged
   into segments, give the seconds matched. A lone coincidence never forms a segment, and
   silence has no landmarks, so it never counts. Acceptance sees complete evidence, never a sample.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from firehose_mod.scan.fingerprint.align import SCALE_BIN, WINDOW, align
from firehose_mod.scan.fingerprint.extract import Fingerprint
from firehose_mod.scan.fingerprint.hashing import (
    KEY_BITS,
    SEARCH_MARGINS,
    ProbeMargins,
    hash_keys,
    key_fields_tail,
    partial_probes,
    probe_keys,
    probe_ranges,
)
from firehose_mod.scan.fingerprint.segment import (
    RefInfo,
    Segment,
    merge,
    unpack_pitch_span,
    unpack_ref_time,
    write_segment,
)


@dataclass(frozen=True, slots=True)
class Match:
    """One reference found in a query.

    `time_scale` is query seconds per reference second (a copy sped up 5% gives ~0.952);
    `pitch_shift_semitones` is query pitch minus reference pitch; `score` in 0..1 is the share
    of the query's triplets inside the matched span that agree with the alignment.
    """

    ref_id: str
    score: float
    matches: int
    seconds_matched: float
    query_start: float
    query_end: float
    ref_start: float
    ref_end: float
    time_scale: float
    pitch_shift_semitones: float
    pitch_bands: int = 0  # bands of the spectrum holding consistent matches (a copy spans many)
    jitter_ms: float = 0.0  # median distance of the matches from the alignment line


@dataclass(frozen=True)
class MatchParams:
    """Query thresholds. The defaults reject unrelated music and silence with a wide margin.

    The edits searched are the ones re-uploaders make, as a region of (time scale, pitch shift):
    - a speed change (nightcore x1.2-1.35, "slowed" x0.75-0.9, a turntable): time and pitch move
      together, pitch = -12 log2(time scale), within `speed_tolerance` semitones of that line;
    - a tempo-only change: any time scale in range with at most `free_pitch` semitones of shift;
    - a pitch-only change: any pitch shift in range with the time scale within `free_scale` of 1.
    Searching the whole rectangle instead would let more chance alignments compete.
    """

    min_matches: int = 20  # consistent triplets (and as many distinct hash keys among them)
    min_seconds: float = 5.0  # seconds of query covered by consistent segments
    min_score: float = 0.0
    min_pitch_bands: int = 8  # bands of `band_semitones` holding >= 3 consistent matches each
    band_semitones: float = 3.0
    max_pitch_shift: float = 5.5  # semitones searched either way (x1.35 speed is +5.2)
    min_time_scale: float = 0.72  # query seconds per reference second: x1.39 faster
    max_time_scale: float = 1.39  # x0.72 slower
    free_pitch: float = 1.0  # semitones: tempo-only edits
    free_scale: float = 0.08  # relative: pitch-only edits (and the small tempo drifts of a re-encode)
    speed_tolerance: float = 1.2  # semitones off the speed line
    scale_step: float = 0.002  # log time-scale step of the Hough grid
    offset_tolerance: float = 0.05  # seconds: how far a match may sit from the alignment line
    pitch_tolerance: float = 0.35  # semitones from the alignment's pitch shift
    span_tolerance: float = 0.06  # a triplet's span ratio vs the alignment's time scale
    segment_gap: float = 1.0  # seconds between consistent matches that still join one segment
    min_segment_matches: int = 6
    candidates: int = 10  # references examined in the fine stage
    max_bucket: int = 4000  # keys more common than this are stop words, not evidence
    # Candidate search: postings read per query-minute, rarest probe keys first (0: all). The
    # fine alignment of each candidate then reads all of its hits, whatever this is.
    hit_budget: int = 250_000
    min_votes: int = 3  # hits in a reference's best coarse cell to be a candidate (0: min_matches // 4, >= 3)
    probes: ProbeMargins = ProbeMargins()

    def allowed(self, log_scale: np.ndarray, shift: np.ndarray, slack: float = 0.0) -> np.ndarray:
        """Which (ln time scale, pitch shift) pairs lie in the edit region; `slack` widens it
        (in semitones, a time-scale error counted as the pitch error of the same ratio)."""
        semis = 12 / np.log(2) * log_scale  # the time scale as semitones of a speed change
        free = 12 * np.log2(1 + self.free_scale)
        return ((np.abs(shift) <= self.free_pitch + slack) | (np.abs(semis) <= free + slack)
                | (np.abs(semis + shift) <= self.speed_tolerance + slack))

    def scale_range(self, shift: float) -> list[tuple[float, float]]:
        """The ln time-scale intervals the region allows at pitch shift `shift`."""
        lo, hi = np.log(self.min_time_scale), np.log(self.max_time_scale)
        if abs(shift) <= self.free_pitch + self.pitch_tolerance:
            return [(lo, hi)]
        free = np.log1p(self.free_scale)
        line = -shift * np.log(2) / 12
        tol = (self.speed_tolerance + self.pitch_tolerance) * np.log(2) / 12
        spans = [(-free, free), (max(lo, line - tol), min(hi, line + tol))]
        spans = [s for s in spans if s[0] < s[1]]
        spans.sort()
        out = [spans[0]]
        for a, b in spans[1:]:
            if a <= out[-1][1]:
                out[-1] = (out[-1][0], max(out[-1][1], b))
            else:
                out.append((a, b))
        return out


@dataclass(frozen=True)
class Entries:
    """What the index keeps of one recording: keys and the anchor data votes need (12 bytes each)."""

    keys: np.ndarray  # uint32
    t: np.ndarray  # float32
    f: np.ndarray  # float16
    span: np.ndarray  # float16

    def __len__(self) -> int:
        return int(self.keys.size)

    def to_bytes(self) -> bytes:
        return b"".join(a.tobytes() for a in (self.keys.astype("<u4"), self.t.astype("<f4"),
                                              self.f.astype("<f2"), self.span.astype("<f2")))

    @classmethod
    def from_bytes(cls, data: bytes) -> Entries:
        n = len(data) // 12
        if n * 12 != len(data):
            raise ValueError(f"fingerprint blob of {len(data)} bytes is not a whole number of entries")
        buf = memoryview(data)
        return cls(np.frombuffer(buf[:4 * n], "<u4"), np.frombuffer(buf[4 * n:8 * n], "<f4"),
                   np.frombuffer(buf[8 * n:10 * n], "<f2"), np.frombuffer(buf[10 * n:], "<f2"))


def index_entries(fp: Fingerprint) -> Entries:
    return Entries(hash_keys(fp), fp.t.astype(np.float32), fp.f.astype(np.float16), fp.span.astype(np.float16))


@dataclass(frozen=True)
class _Block:
    keys: np.ndarray  # uint32, sorted
    ref: np.ndarray  # int32 internal reference number
    t: np.ndarray  # float32 anchor time, s
    f: np.ndarray  # float16 anchor pitch, semitones
    span: np.ndarray  # float16 triplet span, s
    ukeys: np.ndarray = None  # uint32: the distinct keys, sorted
    ustart: np.ndarray = None  # int64: where each distinct key starts in `keys` (plus the end)

    def __post_init__(self) -> None:
        if self.ukeys is None:  # one searchsorted over distinct keys instead of two over all
            first = np.flatnonzero(np.diff(self.keys) != 0) + 1 if self.keys.size else np.zeros(0, np.int64)
            starts = np.concatenate([[0], first, [self.keys.size]]) if self.keys.size else np.zeros(1, np.int64)
            object.__setattr__(self, "ukeys", self.keys[starts[:-1]])
            object.__setattr__(self, "ustart", starts.astype(np.int64))

    @property
    def size(self) -> int:
        return int(self.keys.size)


def _block(parts: list[tuple[int, Entries]]) -> _Block:
    if not parts:
        return _Block(np.zeros(0, np.uint32), np.zeros(0, np.int32), np.zeros(0, np.float32),
                      np.zeros(0, np.float16), np.zeros(0, np.float16))
    keys = np.concatenate([e.keys for _, e in parts]).astype(np.uint32, copy=False)
    ref = np.concatenate([np.full(len(e), r, np.int32) for r, e in parts])
    t = np.concatenate([e.t for _, e in parts]).astype(np.float32, copy=False)
    f = np.concatenate([e.f for _, e in parts]).astype(np.float16, copy=False)
    sp = np.concatenate([e.span for _, e in parts]).astype(np.float16, copy=False)
    order = np.argsort(keys, kind="stable")
    return _Block(keys[order], ref[order], t[order], f[order], sp[order])


def _merge(blocks: list[_Block], alive: np.ndarray) -> _Block:
    cat = [np.concatenate([getattr(b, n) for b in blocks]) for n in ("keys", "ref", "t", "f", "span")]
    keep = alive[cat[1]]
    cat = [c[keep] for c in cat]
    order = np.argsort(cat[0], kind="stable")
    return _Block(*(c[order] for c in cat))


class FingerprintIndex:
    """Thread-safe index. `ref_id`s are strings (a catalogue ref name or an at-uri).

    References live in memory (sorted blocks, as added) or in memory-mapped on-disk segments
    (`attach`, `flush`, segment.py). A lookup runs in two stages over both:
    1. candidate search: the query's probe keys, each with its number of postings known before
       anything is read; the rarest probes first, up to `MatchParams.hit_budget` postings per
       query-minute, vote for (reference, pitch, coarse scale, offset) cells;
    2. per candidate, the reference's own entries (its forward copy, a few kilobytes) are
       intersected with *all* the query's probe keys, and the fine alignment runs on every hit,
       exactly as when the whole index was read. Acceptance never sees a sample.
    """

    def __init__(self, params: MatchParams | None = None, *, merge_ratio: float = 0.25):
        self.params = params or MatchParams()
        self._lock = threading.Lock()
        self._ids: dict[str, int] = {}
        self._names: list[str] = []
        self._alive = np.zeros(0, dtype=bool)
        self._main = _block([])
        self._pending: list[_Block] = []
        self._merge_ratio = merge_ratio
        # forward copies of in-memory references: num -> (keys sorted, t, f float32, span float32)
        self._fwd: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = {}
        self._info: dict[int, tuple[int, str]] = {}  # num -> (catalogue row id, added) of in-memory refs
        self._segments: list[tuple[Segment, np.ndarray]] = []  # (segment, global num of each local ref)
        self._seg_of = np.zeros(0, np.int32)  # num -> index in _segments, -1 in memory
        self._local = np.zeros(0, np.int64)  # num -> local ref in its segment

    # -- building ------------------------------------------------------------------------------
    def add(self, ref_id: str, fp: Fingerprint | Entries, *, row_id: int = 0, added: str = "") -> None:
        """Index `fp` under `ref_id`, replacing what that ref held before."""
        self.add_many([(ref_id, fp)], info=[(row_id, added)])

    def add_many(self, items: Iterable[tuple[str, Fingerprint | Entries]],
                 info: Iterable[tuple[int, str]] | None = None) -> None:
        """Bulk add (one sort for all of them): the way to load a catalogue at start."""
        info_it = iter(info) if info is not None else None
        with self._lock:
            parts = []
            for ref_id, fp in items:
                num = self._new_num(ref_id, -1, 0)
                e = fp if isinstance(fp, Entries) else index_entries(fp)
                parts.append((num, e))
                o = np.argsort(e.keys, kind="stable")
                self._fwd[num] = (np.ascontiguousarray(e.keys[o], np.uint32), np.ascontiguousarray(e.t[o], np.float32),
                                  e.f[o].astype(np.float32), e.span[o].astype(np.float32))
                self._info[num] = next(info_it) if info_it is not None else (0, "")
            if not parts:
                return
            self._pending.append(_block(parts))
            pending = sum(b.size for b in self._pending)
            if pending > self._merge_ratio * max(self._main.size, 1):
                self._compact()
            elif len(self._pending) > 16:  # many small adds: merge them with each other, not the main block
                self._pending = [_merge(self._pending, self._alive)]

    def _new_num(self, ref_id: str, seg: int, local: int) -> int:
        old = self._ids.get(ref_id)
        if old is not None:
            self._kill(old)
        num = len(self._names)
        self._names.append(ref_id)
        self._ids[ref_id] = num
        if num >= self._alive.size:  # grow by doubling: adding one at a time stays cheap
            grow = max(1024, self._alive.size)
            self._alive = np.concatenate([self._alive, np.zeros(grow, bool)])
            self._seg_of = np.concatenate([self._seg_of, np.full(grow, -1, np.int32)])
            self._local = np.concatenate([self._local, np.zeros(grow, np.int64)])
        self._alive[num] = True
        self._seg_of[num] = seg
        self._local[num] = local
        return num

    def _kill(self, num: int) -> None:
        self._alive[num] = False
        self._fwd.pop(num, None)
        self._info.pop(num, None)

    def attach(self, segment: Segment, live: np.ndarray | None = None) -> None:
        """Serve `segment`'s references (those with `live[i]` true; a newer copy of a name replaces an older one)."""
        live = np.ones(len(segment.refs), bool) if live is None else np.asarray(live, bool)
        with self._lock:
            gnum = np.full(len(segment.refs), -1, np.int64)
            si = len(self._segments)
            for i in np.flatnonzero(live):
                gnum[i] = self._new_num(segment.refs[i].name, si, int(i))
            # postings of dead local refs map to a number that is never alive
            dead = len(self._names)
            self._names.append("")
            self._new_slot(dead)
            gnum[gnum < 0] = dead
            self._segments.append((segment, gnum))

    def _new_slot(self, num: int) -> None:
        if num >= self._alive.size:
            grow = max(1024, self._alive.size)
            self._alive = np.concatenate([self._alive, np.zeros(grow, bool)])
            self._seg_of = np.concatenate([self._seg_of, np.full(grow, -1, np.int32)])
            self._local = np.concatenate([self._local, np.zeros(grow, np.int64)])
        self._alive[num] = False

    def flush(self, root: Path, version: str) -> Path | None:
        """Write the live in-memory references to a new on-disk segment under `root`, serve them
        from it and free their memory. The segment's path (None when there was nothing to write)."""
        with self._lock:
            nums = [n for n in self._fwd if self._alive[n]]
            items = [(RefInfo(self._names[n], *self._info.get(n, (0, ""))), *self._fwd[n]) for n in nums]
        if not items:
            return None
        path = write_segment(root, items, version)
        seg = Segment(path)
        with self._lock:
            si = len(self._segments)
            gnum = np.full(len(seg.refs), -1, np.int64)
            for i, n in enumerate(nums):
                if self._alive[n] and self._ids.get(self._names[n]) == n:  # not replaced or removed meanwhile
                    gnum[i] = n
                    self._seg_of[n] = si
                    self._local[n] = i
                    self._fwd.pop(n, None)
                    self._info.pop(n, None)
            dead = len(self._names)
            self._names.append("")
            self._new_slot(dead)
            gnum[gnum < 0] = dead
            self._segments.append((seg, gnum))
            # in-memory blocks now hold only what is still in memory
            self._main = _merge([self._main, *self._pending], self._in_memory_alive())
            self._pending = []
        return path

    def _in_memory_alive(self) -> np.ndarray:
        keep = np.zeros(self._alive.size, bool)
        if self._fwd:
            keep[np.fromiter(self._fwd, np.int64)] = True
        return keep & self._alive

    def segments(self) -> list[tuple[Segment, np.ndarray]]:
        """(segment, live mask of its local refs) for each attached segment."""
        with self._lock:
            return [(s, self._alive[g] & (self._seg_of[g] == i)) for i, (s, g) in enumerate(self._segments)]

    def merge_segments(self, root: Path, version: str, which: list[Segment] | None = None, *,
                       stop: Callable[[], bool] | None = None,
                       progress: Callable[[float], None] | None = None) -> Path | None:
        """Merge `which` (default: every attached segment) into one new segment under `root`,
        dropping removed and replaced references, and serve it instead. Lookups go on meanwhile;
        the caller deletes the old segments' directories afterwards (open maps stay valid).
        `stop` and `progress` as in `segment.merge` (a stopped merge changes nothing)."""
        with self._lock:
            picked = [(i, s, g) for i, (s, g) in enumerate(self._segments) if which is None or s in which]
            masks = [self._alive[g] & (self._seg_of[g] == i) for i, s, g in picked]
        if len(picked) < 1:
            return None
        path = merge(root, [s for _, s, _ in picked], masks, version, stop=stop, progress=progress)
        new = Segment(path)
        with self._lock:
            olds = {i for i, _, _ in picked}
            kept = [i for i in range(len(self._segments)) if i not in olds]
            remap = np.full(len(self._segments) + 1, -1, np.int32)
            remap[kept] = np.arange(len(kept), dtype=np.int32)
            si_new = len(kept)
            gnum = np.full(len(new.refs), -1, np.int64)
            pos = 0
            for (i, s, g), live in zip(picked, masks):
                nums = g[live]
                ok = self._alive[nums] & (self._seg_of[nums] == i)  # not removed or replaced meanwhile
                gnum[pos:pos + nums.size][ok] = nums[ok]
                self._local[nums[ok]] = pos + np.flatnonzero(ok)
                self._seg_of[nums[ok]] = si_new
                pos += nums.size
            mine = self._seg_of >= 0
            moved = mine & (self._seg_of != si_new)
            self._seg_of[moved] = remap[self._seg_of[moved]]
            dead = len(self._names)
            self._names.append("")
            self._new_slot(dead)
            gnum[gnum < 0] = dead
            self._segments = [self._segments[i] for i in kept] + [(new, gnum)]
        return path

    def remove(self, ref_id: str) -> bool:
        """Forget `ref_id`; True if it was indexed."""
        with self._lock:
            num = self._ids.pop(ref_id, None)
            if num is None:
                return False
            self._kill(num)
            return True

    def compact(self) -> None:
        """Merge pending blocks and drop removed references now."""
        with self._lock:
            self._compact()

    def _compact(self) -> None:
        self._main = _merge([self._main, *self._pending], self._alive)
        self._pending = []

    def __contains__(self, ref_id: str) -> bool:
        return ref_id in self._ids

    def memory_entries(self) -> int:
        """Entries held in memory (not yet in a segment)."""
        with self._lock:
            return sum(v[0].size for v in self._fwd.values())

    def stats(self) -> dict[str, int]:
        with self._lock:
            blocks = [self._main, *self._pending]
            refs = len(self._ids)
            segs = list(self._segments)
            fwd_bytes = sum(sum(a.nbytes for a in v) for v in self._fwd.values())
        entries = sum(b.size for b in blocks) + sum(s.size for s, _ in segs)
        return {
            "refs": refs,
            "entries": entries,
            "pending_blocks": len(self._pending),
            "segments": len(segs),
            "bytes": sum(b.keys.nbytes + b.ref.nbytes + b.t.nbytes + b.f.nbytes + b.span.nbytes
                         + b.ukeys.nbytes + b.ustart.nbytes for b in blocks) + fwd_bytes,
            "disk_bytes": sum(s.disk_bytes() for s, _ in segs),
        }

    # -- lookup --------------------------------------------------------------------------------
    def query(self, fp: Fingerprint, *, exclude: Iterable[str] = (), limit: int = 5,
              params: MatchParams | None = None) -> list[Match]:
        """References found in `fp`, best first (at most `limit`).

        A long upload (a 3-hour DJ set) is looked up in windows of `_QUERY_WINDOW` seconds that
        overlap by `_QUERY_OVERLAP`, so the memory of one lookup does not grow with its length;
        the pieces of one alignment found in neighbouring windows are joined again.
        """
        p = params or self.params
        exclude = tuple(exclude)
        if not fp.t.size or fp.t[-1] - fp.t[0] <= _QUERY_WINDOW + _QUERY_OVERLAP:
            return self._query(fp, exclude, limit, p)
        found: list[Match] = []
        start = float(fp.t[0])
        while start <= fp.t[-1]:
            found += self._query(fp.window(start, start + _QUERY_WINDOW + _QUERY_OVERLAP), exclude, limit, p)
            start += _QUERY_WINDOW
        return _join(found)[:limit]

    def _query(self, fp: Fingerprint, exclude: tuple[str, ...], limit: int, p: MatchParams) -> list[Match]:
        with self._lock:
            blocks = [b for b in (self._main, *self._pending) if b.size]
            segs = list(self._segments)
            alive = self._alive.copy()
            names = self._names
            fwd = dict(self._fwd)
            seg_of, local = self._seg_of, self._local
            for ref_id in exclude:
                num = self._ids.get(ref_id)
                if num is not None:
                    alive[num] = False
        if len(fp) == 0 or not alive.any():
            return []
        edits = {"scales": (p.min_time_scale, p.max_time_scale), "shifts": (-p.max_pitch_shift, p.max_pitch_shift)}
        # The candidate search probes the buckets the edits can move a triplet to, without the
        # edge neighbours of each field: it samples anyway, and probes 3-6x fewer keys.
        keys, qidx = probe_keys(fp, SEARCH_MARGINS, **edits)
        # Sorted needles: memory is walked in order. One sort of (key, triplet) packed
        # in 64 bits is several times cheaper than a stable argsort of the keys.
        packed = np.sort((keys.astype(np.uint64) << np.uint64(32)) | qidx.astype(np.uint64))
        keys, qidx = (packed >> np.uint64(32)).astype(np.uint32), (packed & np.uint64(0xFFFFFFFF)).astype(np.int64)
        del packed
        # Stage 1: postings counts of every probe in every source, then the rarest probes within the budget.
        ranges = [_block_ranges(b, keys) for b in blocks] + [s.ranges(keys) for s, _ in segs]
        for _, cnt in ranges:
            cnt[cnt > p.max_bucket] = 0  # stop words, as ever
        total = ranges[0][1].copy() if ranges else np.zeros(keys.size, np.int64)
        for _, cnt in ranges[1:]:
            total += cnt
        minutes = max(float(fp.t[-1] - fp.t[0]) / 60.0, 0.25)
        budget = int(p.hit_budget * minutes)
        if p.hit_budget and int(total.sum()) > budget:
            order = np.argsort(total, kind="stable")
            take = order[np.cumsum(total[order]) <= budget]
            sel = np.zeros(keys.size, bool)
            sel[take] = True
            ranges = [(lo, np.where(sel, cnt, 0)) for lo, cnt in ranges]
        # The cuts run per source, on pitch and span only; reference and time are decoded for
        # the hits that pass them (the same hits, in the same order, as cutting them all at once).
        cands = []
        for b, (lo, cnt) in zip(blocks, ranges):
            ci, qi = _expand(lo, cnt, qidx)
            rows, df, ls = _cuts(fp, qi, b.f[ci].astype(np.float32), b.span[ci].astype(np.float32), p)
            ci = ci[rows]
            cands.append((qi[rows], b.ref[ci], b.t[ci], df, ls))
        for (s, gnum), (lo, cnt) in zip(segs, ranges[len(blocks):]):
            ci, qi = _expand(lo, cnt, qidx)
            post = s.postings[ci]
            rows, df, ls = _cuts(fp, qi, *unpack_pitch_span(post), p)
            lref, tr = unpack_ref_time(post[rows])
            cands.append((qi[rows], gnum[lref], tr, df, ls))
        cands = [c for c in cands if c[0].size]
        if not cands:
            return []
        qi, ref, tr, df, ls = cands[0] if len(cands) == 1 else (np.concatenate(x) for x in zip(*cands))
        live = alive[ref]
        if not live.all():
            qi, ref, tr, df, ls = qi[live], ref[live], tr[live], df[live], ls[live]
        if qi.size < (p.min_votes or max(3, p.min_matches // 4)):
            return []
        chosen = self._candidates(ref, fp.t[qi], tr, df, ls, alive.size, p)
        if not chosen:
            return []
        # Stage 2: every hit of each candidate, from its own entries. A stored entry is a hit of a
        # query triplet when each of its key fields lies in the range the triplet probes (the
        # same hits as looking up every probe key): the three edit-invariant fields are joined
        # on, the span and pitch-band fields checked against the triplet's ranges.
        rlo, rhi = probe_ranges(fp, p.probes, **edits)
        pkeys, pq = partial_probes(rlo, rhi)
        # the distinct partial keys and where each one's run starts in pkeys: one search per entry
        pfirst = np.flatnonzero(np.diff(pkeys)) + 1 if pkeys.size else np.zeros(0, np.int64)
        pstart = np.concatenate([[0], pfirst, [pkeys.size]]).astype(np.int64)
        pu = pkeys[pstart[:-1]] if pkeys.size else pkeys
        qkey_all = hash_keys(fp)
        qbits = max(int(fp.t.size).bit_length(), 1)
        found = []
        for num in chosen:
            if num in fwd:
                fk, ft, ff, fs = fwd[num]
            else:
                si = int(seg_of[num])
                if si < 0 or si >= len(segs):
                    continue
                fk, ft, ff, fs = segs[si][0].forward(int(local[num]))
            if not pu.size:
                continue
            part, span_b, band_b = key_fields_tail(fk)
            pos = np.minimum(np.searchsorted(pu, part), pu.size - 1)
            lo = pstart[pos]
            cnt = np.where(pu[pos] == part, pstart[pos + 1] - lo, 0)
            pi, ej = _expand(lo, cnt, np.arange(fk.size))
            qi2 = pq[pi]
            ok = ((span_b[ej] >= rlo[3, qi2]) & (span_b[ej] <= rhi[3, qi2])
                  & (band_b[ej] >= rlo[4, qi2]) & (band_b[ej] <= rhi[4, qi2]))
            qi2, ej = qi2[ok], ej[ok]
            rows2, df2, _ = _cuts(fp, qi2, ff[ej], fs[ej], p)
            if rows2.size < p.min_matches:
                continue
            qi2, ej = qi2[rows2], ej[rows2]
            # in the order a lookup of every probe key gives (key, query triplet, entry): where one
            # triplet agrees with two entries, align keeps the first
            ebits = max(int(fk.size).bit_length(), 1)
            if KEY_BITS + qbits + ebits <= 63:  # (key, triplet, entry) is unique: one packed sort
                order = np.argsort((fk[ej].astype(np.int64) << (qbits + ebits)) | (qi2 << ebits) | ej)
            else:
                order = np.lexsort((ej, qi2, fk[ej]))
            qi2, ej, df2 = qi2[order], ej[order], df2[order]
            got = align(fp.t[qi2], ft[ej], df2, fp.span[qi2], fs[ej], qi2, qkey_all[qi2], fp, p)
            if got is not None:
                found.append(Match(names[num], *got))
        found.sort(key=lambda x: (-x.seconds_matched, -x.matches))
        return found[:limit]

    @staticmethod
    def _candidates(ref: np.ndarray, tq: np.ndarray, tr: np.ndarray, df: np.ndarray, ls: np.ndarray, n_refs: int,
                    p: MatchParams) -> list[int]:
        """References whose best coarse (pitch, time scale, offset) cell is among the strongest.

        The offset is taken where each 20 s window of the query starts (the reference time the
        window's start maps to under the hit's coarse time scale), so a 4% scale bin drifts at
        most ~1 s inside a cell however long the query is.
        """
        floor = p.min_votes or max(3, p.min_matches // 4)
        # A cell's votes are hits of one reference, at one rounded pitch shift, in one 20 s window
        # of the query, one vote per hit: only groups of at least `floor` such hits can hold a
        # candidate cell. Most hits are chance, spread thinly over every reference, so the vote
        # below runs on the hits of those groups only: the same cells with the same counts, in
        # the same order, as a vote of every hit, at a fraction of the cost.
        pitch = np.round(df).astype(np.int64)
        win = np.floor(tq / np.float32(WINDOW)).astype(np.int64)
        pitch -= pitch.min()
        group = (ref.astype(np.int64) - int(ref.min())) * (int(pitch.max()) + 1) + pitch
        for by_window in (False, True):
            if by_window:  # the surviving groups split by window (their numbers made dense first)
                seen = np.zeros(int(group.max()) + 1, np.int64)
                seen[group] = 1
                group = (np.cumsum(seen) - 1)[group] * (int(win.max()) - int(win.min()) + 1) + (win - win.min())
            keep = np.flatnonzero(_group_sizes(group) >= floor)
            if not keep.size:
                return []
            if keep.size < ref.size:
                ref, tq, tr, ls, pitch, win, group = (v[keep] for v in (ref, tq, tr, ls, pitch, win, group))
        # Each hit votes in the two scale bins nearest its own (noisy) scale, so an edit whose scale
        # sits on a bin edge (x0.8 slowed is ln 1.25 = 5.58 bins) is not split between two cells.
        x = ls / np.float32(SCALE_BIN)
        lo_bin = np.floor(x).astype(np.int64)
        # The groups left, numbered densely in (reference, pitch, window) order, and each one's reference.
        seen = np.zeros(int(group.max()) + 1, np.int64)
        seen[group] = 1
        rank = np.cumsum(seen) - 1
        group = rank[group]
        # A hit votes in scale bins lo and lo + 1, which also get the votes of the group's hits
        # whose own lo is lo - 1 and lo + 1: the hits whose two cells cannot reach `floor` go too.
        width = int(lo_bin.max()) - int(lo_bin.min()) + 3
        gk = group * width + (lo_bin - lo_bin.min() + 1)
        if int(gk.max()) < max(4 * gk.size, 1 << 22):
            c = np.bincount(gk, minlength=int(gk.max()) + 2)
            keep = np.flatnonzero(np.maximum(c[gk - 1], c[gk + 1]) + c[gk] >= floor)
            if not keep.size:
                return []
            if keep.size < ref.size:
                ref, tq, tr, win, group, lo_bin = (v[keep] for v in (ref, tq, tr, win, group, lo_bin))
        gref = np.zeros(int(group.max()) + 1, ref.dtype)
        gref[group] = ref
        group, tq, tr, win = (np.concatenate([v, v]) for v in (group, tq, tr, win))
        kbin = np.concatenate([lo_bin, lo_bin + 1])
        local = tr - (tq - win * np.float32(WINDOW)) * np.exp(-kbin * np.float32(SCALE_BIN)).astype(np.float32)
        off = np.floor(local / np.float32(2.0)).astype(np.int64)
        # A cell number over (group, scale bin, offset), with the reference its most significant
        # part: among cells of equal count, a lower reference comes first, as it always did.
        cell = group
        radix = 1  # of every digit after the group's
        for v in (kbin, off):
            v = v - v.min()
            width = int(v.max()) + 1
            cell = cell * width + v
            radix *= width
        if int(cell.max()) < max(4 * cell.size, 1 << 22):  # dense: count without sorting the hits
            counts = np.bincount(cell)
            cells = np.flatnonzero(counts >= floor)
            counts = counts[cells]
        else:
            cells, counts = np.unique(cell, return_counts=True)
            strong = counts >= floor
            cells, counts = cells[strong], counts[strong]
        cref = gref[cells // radix].astype(np.int64)
        order = np.argsort(-counts, kind="stable")
        ranked = cref[order]
        _, first = np.unique(ranked, return_index=True)
        return [int(r) for r in ranked[np.sort(first)[:p.candidates]]]


def _group_sizes(group: np.ndarray) -> np.ndarray:
    """The number of elements of `group` (int64, >= 0) equal to each element."""
    if int(group.max()) < max(4 * group.size, 1 << 22):
        return np.bincount(group)[group]
    _, inv, n = np.unique(group, return_inverse=True, return_counts=True)
    return n[inv]


def _block_ranges(b: _Block, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pos = np.searchsorted(b.ukeys, keys, side="left")
    pos_c = np.minimum(pos, b.ukeys.size - 1)
    found = b.ukeys[pos_c] == keys
    lo = b.ustart[pos_c]
    return lo, np.where(found, b.ustart[pos_c + 1] - lo, 0)


def _expand(lo: np.ndarray, cnt: np.ndarray, qidx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(positions lo[i] .. lo[i] + cnt[i] - 1 for every i, qidx[i] repeated alongside)."""
    total = int(cnt.sum())
    starts = np.repeat(lo - np.cumsum(cnt) + cnt, cnt)
    return starts + np.arange(total), np.repeat(qidx, cnt)


def _cuts(fp: Fingerprint, qi: np.ndarray, fr: np.ndarray, sr: np.ndarray,
          p: MatchParams) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hits inside the searched edits: (rows, pitch shift, ln time scale of each)."""
    df = fp.f[qi] - fr
    rows = np.flatnonzero(np.abs(df) <= p.max_pitch_shift)
    # Each hit's own time scale, from its triplet's span: noisy (a few %), so a loose first cut.
    # Cuts run on the survivors of the previous one only: most hits are chance, and many.
    ls = np.log(fp.span[qi[rows]] / np.maximum(sr[rows], np.float32(1e-3)))
    keep = (ls < np.log(p.max_time_scale) + 0.1) & (ls > np.log(p.min_time_scale) - 0.1)
    rows, ls = rows[keep], ls[keep]
    df = df[rows]
    keep = p.allowed(ls, df, slack=1.2)
    return rows[keep], df[keep], ls[keep]

_QUERY_WINDOW = 600.0  # seconds of a long upload looked up at once
_QUERY_OVERLAP = 60.0  # neighbouring windows share this much, so a match is not cut in two


def _join(found: list[Match]) -> list[Match]:
    """Matches of one reference along one alignment (scale within 1%, offset within 0.5 s),
    found in neighbouring windows, as one; best first."""
    out: list[Match] = []
    for m in sorted(found, key=lambda x: (x.ref_id, x.query_start)):
        last = out[-1] if out else None
        if (last is not None and last.ref_id == m.ref_id and abs(m.time_scale / last.time_scale - 1) <= 0.01
                and abs((m.query_start - m.time_scale * m.ref_start)
                        - (last.query_start - last.time_scale * last.ref_start)) <= 0.5):
            end = max(last.query_end, m.query_end)
            # Windows overlap: seconds in both pieces count once (assumed covered by both, so this
            # errs low), and never more than the span.
            both = max(0.0, min(last.query_end, m.query_end) - max(last.query_start, m.query_start))
            seconds = max(last.seconds_matched, m.seconds_matched, last.seconds_matched + m.seconds_matched - both)
            seconds = min(seconds, end - last.query_start)
            out[-1] = replace(last, score=max(last.score, m.score), matches=last.matches + m.matches,
                              seconds_matched=round(seconds, 2), query_end=end,
                              ref_end=max(last.ref_end, m.ref_end), pitch_bands=max(last.pitch_bands, m.pitch_bands))
        else:
            out.append(m)
    out.sort(key=lambda x: (-x.seconds_matched, -x.matches))
    return out
