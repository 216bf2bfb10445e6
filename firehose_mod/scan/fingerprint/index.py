"""The in-memory landmark index: sorted hash keys with parallel (ref, time, pitch, span) arrays.

Lookup is `searchsorted` over sorted keys; new references go to small sorted blocks that are
merged into the main block once they grow, and a removed reference is masked at once and
dropped at the next merge. A query votes in two stages:
1. coarse: (reference, pitch shift in semitones, 2-second offset) cells, to find candidates;
2. fine, per candidate: a grid of time scales, for each an offset histogram; the best
   (scale, offset) picks the consistent matches, whose query times, merged into segments,
   give the seconds matched. A lone coincidence never forms a segment.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from firehose_mod.scan.fingerprint.extract import Fingerprint
from firehose_mod.scan.fingerprint.hashing import ProbeMargins, hash_keys, probe_keys


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


@dataclass(frozen=True)
class MatchParams:
    """Query thresholds. The defaults reject unrelated music and silence with a wide margin."""

    min_matches: int = 20  # consistent triplets (and as many distinct hash keys among them)
    min_seconds: float = 5.0  # seconds of query covered by consistent segments
    min_score: float = 0.0
    min_pitch_bands: int = 8  # bands of `band_semitones` holding >= 3 consistent matches each
    band_semitones: float = 3.0
    max_pitch_shift: float = 3.0  # semitones searched either way
    max_time_scale_change: float = 0.07  # +/- 7% tempo searched
    scale_step: float = 0.002
    offset_tolerance: float = 0.05  # seconds: how far a match may sit from the alignment line
    pitch_tolerance: float = 0.35  # semitones from the alignment's pitch shift
    span_tolerance: float = 0.06  # a triplet's span ratio vs the alignment's time scale
    segment_gap: float = 1.0  # seconds between consistent matches that still join one segment
    min_segment_matches: int = 6
    candidates: int = 10  # references examined in the fine stage
    max_bucket: int = 4000  # keys more common than this are stop words, not evidence
    probes: ProbeMargins = ProbeMargins()


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
    """Thread-safe in-memory index. `ref_id`s are strings (a catalogue ref name or an at-uri)."""

    def __init__(self, params: MatchParams | None = None, *, merge_ratio: float = 0.25):
        self.params = params or MatchParams()
        self._lock = threading.Lock()
        self._ids: dict[str, int] = {}
        self._names: list[str] = []
        self._alive = np.zeros(0, dtype=bool)
        self._main = _block([])
        self._pending: list[_Block] = []
        self._merge_ratio = merge_ratio

    # -- building ------------------------------------------------------------------------------
    def add(self, ref_id: str, fp: Fingerprint | Entries) -> None:
        """Index `fp` under `ref_id`, replacing what that ref held before."""
        self.add_many([(ref_id, fp)])

    def add_many(self, items: Iterable[tuple[str, Fingerprint | Entries]]) -> None:
        """Bulk add (one sort for all of them): the way to load a catalogue at start."""
        with self._lock:
            parts = []
            for ref_id, fp in items:
                old = self._ids.get(ref_id)
                if old is not None:
                    self._alive[old] = False
                num = len(self._names)
                self._names.append(ref_id)
                self._ids[ref_id] = num
                parts.append((num, fp if isinstance(fp, Entries) else index_entries(fp)))
            self._alive = np.concatenate([self._alive, np.ones(len(parts), dtype=bool)])
            if not parts:
                return
            self._pending.append(_block(parts))
            pending = sum(b.size for b in self._pending)
            if pending > self._merge_ratio * max(self._main.size, 1):
                self._compact()
            elif len(self._pending) > 16:  # many small adds: merge them with each other, not the main block
                self._pending = [_merge(self._pending, self._alive)]

    def remove(self, ref_id: str) -> bool:
        """Forget `ref_id`; True if it was indexed."""
        with self._lock:
            num = self._ids.pop(ref_id, None)
            if num is None:
                return False
            self._alive[num] = False
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

    def stats(self) -> dict[str, int]:
        with self._lock:
            blocks = [self._main, *self._pending]
            refs = len(self._ids)
        entries = sum(b.size for b in blocks)
        return {
            "refs": refs,
            "entries": entries,
            "pending_blocks": len(self._pending),
            "bytes": sum(b.keys.nbytes + b.ref.nbytes + b.t.nbytes + b.f.nbytes + b.span.nbytes + b.ukeys.nbytes
                         + b.ustart.nbytes for b in blocks),
        }

    # -- lookup --------------------------------------------------------------------------------
    def query(self, fp: Fingerprint, *, exclude: Iterable[str] = (), limit: int = 5,
              params: MatchParams | None = None) -> list[Match]:
        """References found in `fp`, best first (at most `limit`)."""
        p = params or self.params
        with self._lock:
            blocks = [self._main, *self._pending]
            alive = self._alive.copy()
            names = self._names
            for ref_id in exclude:
                num = self._ids.get(ref_id)
                if num is not None:
                    alive[num] = False
        if len(fp) == 0 or not alive.any():
            return []
        keys, qidx = probe_keys(fp, p.probes)
        order = np.argsort(keys, kind="stable")  # sorted needles: searchsorted walks memory in order
        keys, qidx = keys[order], qidx[order]
        all_alive = bool(alive.all())
        cands = [self._lookup(b, keys, qidx, alive, all_alive, p) for b in blocks if b.size]
        cands = [c for c in cands if c[0].size]
        if not cands:
            return []
        if len(cands) == 1:
            qi, ref, tr, fr, sr = cands[0]
        else:
            qi, ref, tr, fr, sr = (np.concatenate(x) for x in zip(*cands))
        df = fp.f[qi] - fr
        scale = fp.span[qi] / np.maximum(sr, np.float32(1e-3))
        lim = 1 + p.max_time_scale_change + 0.1  # per-triplet spans are noisy: a loose first cut
        ok = np.abs(df) <= p.max_pitch_shift
        ok &= scale < lim
        ok &= scale > 1 / lim
        rows = np.flatnonzero(ok)
        if rows.size < p.min_matches:
            return []
        ref, df = ref[rows], df[rows]
        qi_ok = qi[rows]
        tq, tr = fp.t[qi_ok], tr[rows]
        chosen = self._candidates(ref, tq, tr, df, alive.size, p)
        if not chosen:
            return []
        pick = np.zeros(alive.size, dtype=bool)
        pick[chosen] = True
        keep = np.flatnonzero(pick[ref])  # one pass over all hits, then per-reference work on few
        ref, tq, tr, df = ref[keep], tq[keep], tr[keep], df[keep]
        rows = rows[keep]
        qi, sr = qi[rows], sr[rows]
        sq = fp.span[qi]
        qkey = hash_keys(fp)[qi]
        found = []
        for num in chosen:
            m = ref == num
            got = _align(tq[m], tr[m], df[m], sq[m], sr[m], qi[m], qkey[m], fp, p)
            if got is not None:
                found.append(Match(names[num], *got))
        found.sort(key=lambda x: (-x.seconds_matched, -x.matches))
        return found[:limit]

    @staticmethod
    def _lookup(b: _Block, keys: np.ndarray, qidx: np.ndarray, alive: np.ndarray, all_alive: bool, p: MatchParams):
        pos = np.searchsorted(b.ukeys, keys, side="left")
        pos_c = np.minimum(pos, b.ukeys.size - 1)
        found = b.ukeys[pos_c] == keys
        lo = b.ustart[pos_c]
        counts = np.where(found, b.ustart[pos_c + 1] - lo, 0)
        counts[counts > p.max_bucket] = 0
        total = int(counts.sum())
        starts = np.repeat(lo - np.cumsum(counts) + counts, counts)
        ci = starts + np.arange(total)
        qi = np.repeat(qidx, counts)
        ref = b.ref[ci]
        if not all_alive:
            live = np.flatnonzero(alive[ref])
            ci, qi, ref = ci[live], qi[live], ref[live]
        return qi, ref, b.t[ci], b.f[ci].astype(np.float32), b.span[ci].astype(np.float32)

    @staticmethod
    def _candidates(ref: np.ndarray, tq: np.ndarray, tr: np.ndarray, df: np.ndarray, n_refs: int,
                    p: MatchParams) -> list[int]:
        """References whose best coarse (pitch, offset) cell is among the strongest."""
        pitch = np.round(df).astype(np.int64)
        off = np.floor((tq - tr) / np.float32(2.0)).astype(np.int64)
        # Cells (reference, pitch shift, 2 s offset) counted in a dense table over the references
        # present (renumbered in order), so cell order is (reference, pitch, offset) as a sort gives.
        present = np.bincount(ref, minlength=n_refs) > 0
        refs = np.flatnonzero(present)
        compact = np.cumsum(present) - 1
        p0, o0 = int(pitch.min()), int(off.min())
        n_p, n_o = int(pitch.max()) - p0 + 1, int(off.max()) - o0 + 1
        size = refs.size * n_p * n_o
        if size <= max(4 * ref.size, 1 << 20):
            cell = (compact[ref] * n_p + (pitch - p0)) * n_o + (off - o0)
            counts = np.bincount(cell, minlength=size)
            cells = np.flatnonzero(counts >= max(3, p.min_matches // 3))
            counts = counts[cells]
            cref = refs[cells // (n_p * n_o)]
        else:
            cell = (ref.astype(np.int64) << 32) | ((pitch + 8) << 24) | (off + (1 << 20))
            cells, counts = np.unique(cell, return_counts=True)
            strong = counts >= max(3, p.min_matches // 3)
            cells, counts = cells[strong], counts[strong]
            cref = cells >> 32
        order = np.argsort(-counts, kind="stable")
        ranked = cref[order]
        _, first = np.unique(ranked, return_index=True)
        return [int(r) for r in ranked[np.sort(first)[:p.candidates]]]


def _align(tq: np.ndarray, tr: np.ndarray, df: np.ndarray, sq: np.ndarray, sr: np.ndarray, qi: np.ndarray,
           qkey: np.ndarray, fp: Fingerprint, p: MatchParams):
    """The best (time scale, offset) for one reference's matches, and what it covers."""
    if tq.size < p.min_matches:
        return None
    # Pitch first: a copy's matches share one pitch shift, chance hits spread over all of them.
    pbins = np.round(df / p.pitch_tolerance).astype(np.int64)
    pbins -= pbins.min()
    ph = np.bincount(pbins)
    ph = ph + np.concatenate([ph[1:], [0]]) + np.concatenate([[0], ph[:-1]])
    shift0 = (int(np.argmax(ph)) + np.round(df / p.pitch_tolerance).min()) * p.pitch_tolerance
    near = np.abs(df - shift0) <= 1.5 * p.pitch_tolerance
    tq, tr, df, sq, sr, qi, qkey = tq[near], tr[near], df[near], sq[near], sr[near], qi[near], qkey[near]
    if tq.size < p.min_matches:
        return None
    scales = np.arange(1 - p.max_time_scale_change, 1 + p.max_time_scale_change + 1e-9, p.scale_step)
    tol = p.offset_tolerance
    off = tq[None, :] - scales[:, None] * tr[None, :]
    base = np.floor(off.min() / tol)
    bins = (np.floor(off / tol) - base).astype(np.int64)
    width = int(bins.max()) + 2
    flat = (np.arange(scales.size)[:, None] * width + bins).ravel()
    hist = np.bincount(flat, minlength=scales.size * width).reshape(scales.size, width)
    pair = hist[:, :-1] + hist[:, 1:]  # two adjacent bins: an alignment on a bin edge is not split
    si, oi = np.unravel_index(int(np.argmax(pair)), pair.shape)
    s = float(scales[si])
    o = (base + oi + 1) * tol
    sel = np.abs(tq - s * tr - o) <= tol
    if sel.sum() < p.min_matches:
        return None
    shift = float(np.median(df[sel]))
    sel &= np.abs(df - shift) <= p.pitch_tolerance
    if sel.sum() >= 8 and np.ptp(tr[sel]) > 2.0:  # refine the line on the consistent set
        s2, o2 = np.polyfit(tr[sel], tq[sel], 1)
        if abs(s2 - 1) <= p.max_time_scale_change + 0.01:
            s, o = float(s2), float(o2)
            sel = (np.abs(tq - s * tr - o) <= tol) & (np.abs(df - shift) <= p.pitch_tolerance)
    # Each triplet's own span ratio must agree with the alignment's time scale too.
    sel &= np.abs(sq / np.maximum(sr, 1e-3) / s - 1) <= p.span_tolerance
    # One query triplet may agree with two stored ones (a probed neighbour key): count it once.
    rows = np.nonzero(sel)[0]
    rows = rows[np.unique(qi[rows], return_index=True)[1]]
    sel = np.zeros_like(sel)
    sel[rows] = True
    if rows.size < p.min_matches:
        return None
    segments, used = _coverage(tq[sel], sq[sel], p)
    seconds = float(sum(b - a for a, b in segments))
    # A loop (one drum sample, a repeated bar) hits the same few keys again and again: count
    # distinct keys as evidence, so a shared groove alone cannot add up to a match.
    distinct = int(np.unique(qkey[sel]).size)
    if used < p.min_matches or distinct < p.min_matches or seconds < p.min_seconds:
        return None
    q0, q1 = segments[0][0], segments[-1][1]
    # Spread across the spectrum: a copy agrees in melody, harmony, bass and drums alike; two
    # pieces sharing a drum pattern or a groove (the same kit, another tempo or tuning) agree
    # in a few pitch bands only.
    bands = np.bincount((fp.f[qi[sel]] // p.band_semitones).astype(np.int64))
    if int((bands >= 3).sum()) < p.min_pitch_bands:
        return None
    # Density inside the matched segments: a copy agrees on many of its triplets there, two
    # pieces that merely share a groove or a chord change on a few.
    in_segments = sum(int(np.count_nonzero((fp.t >= a) & (fp.t <= b))) for a, b in segments)
    score = min(1.0, used / max(in_segments, 1))
    if score < p.min_score:
        return None
    shift = float(np.median(df[sel]))
    return (round(score, 4), used, round(seconds, 2), round(q0, 2), round(q1, 2),
            round((q0 - o) / s, 2), round((q1 - o) / s, 2), round(s, 4), round(shift, 2))


def _coverage(tq: np.ndarray, sq: np.ndarray, p: MatchParams) -> tuple[list[tuple[float, float]], int]:
    """Seconds of query covered by segments of consistent matches (lone matches do not count)."""
    order = np.argsort(tq)
    start, end = tq[order], tq[order] + sq[order]
    run_end = np.maximum.accumulate(end)
    new = np.ones(start.size, dtype=bool)
    new[1:] = start[1:] > run_end[:-1] + p.segment_gap
    seg = np.cumsum(new) - 1
    n_seg = int(seg[-1]) + 1
    counts = np.bincount(seg, minlength=n_seg)
    s0 = np.full(n_seg, np.inf)
    np.minimum.at(s0, seg, start)
    s1 = np.full(n_seg, -np.inf)
    np.maximum.at(s1, seg, end)
    keep = counts >= p.min_segment_matches
    segments = [(float(a), float(b)) for a, b in zip(s0[keep], s1[keep])]
    return segments, int(counts[keep].sum())
