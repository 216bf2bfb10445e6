"""The in-memory landmark index: sorted hash keys with parallel (ref, time, pitch, span) arrays.

Lookup is `searchsorted` over sorted keys; new references go to small sorted blocks that are
merged into the main block once they grow, and a removed reference is masked at once and
dropped at the next merge. A query searches the edits re-uploaders make (`MatchParams`: speed
changes such as nightcore and "slowed", tempo-only and pitch-only changes) in one pass: its
keys probe every span and pitch-band bucket those edits can move a triplet to. It votes in
two stages:
1. coarse: (reference, pitch shift, coarse time scale, offset) cells, to find candidates;
2. fine, per candidate (align.py): the pitch-shift mode, then a grid of time scales around the hits' own
   scale, for each an offset histogram; the best (scale, offset) picks the consistent
   matches, whose query times, merged into segments, give the seconds matched. A lone
   coincidence never forms a segment, and silence has no landmarks, so it never counts.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass, replace

import numpy as np

from firehose_mod.scan.fingerprint.align import SCALE_BIN, WINDOW, align
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
            blocks = [self._main, *self._pending]
            alive = self._alive.copy()
            names = self._names
            for ref_id in exclude:
                num = self._ids.get(ref_id)
                if num is not None:
                    alive[num] = False
        if len(fp) == 0 or not alive.any():
            return []
        keys, qidx = probe_keys(fp, p.probes, scales=(p.min_time_scale, p.max_time_scale),
                                shifts=(-p.max_pitch_shift, p.max_pitch_shift))
        # Sorted needles: searchsorted walks memory in order. One sort of (key, triplet) packed
        # in 64 bits is several times cheaper than a stable argsort of the keys.
        packed = np.sort((keys.astype(np.uint64) << np.uint64(32)) | qidx.astype(np.uint64))
        keys, qidx = (packed >> np.uint64(32)).astype(np.uint32), (packed & np.uint64(0xFFFFFFFF)).astype(np.int64)
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
        rows = np.flatnonzero(np.abs(df) <= p.max_pitch_shift)
        # Each hit's own time scale, from its triplet's span: noisy (a few %), so a loose first cut.
        # Cuts run on the survivors of the previous one only: most hits are chance, and many.
        ls = np.log(fp.span[qi[rows]] / np.maximum(sr[rows], np.float32(1e-3)))
        keep = (ls < np.log(p.max_time_scale) + 0.1) & (ls > np.log(p.min_time_scale) - 0.1)
        rows, ls = rows[keep], ls[keep]
        keep = p.allowed(ls, df[rows], slack=1.2)
        rows, ls = rows[keep], ls[keep]
        if rows.size < p.min_matches:
            return []
        ref, df = ref[rows], df[rows]
        qi_ok = qi[rows]
        tq, tr = fp.t[qi_ok], tr[rows]
        chosen = self._candidates(ref, tq, tr, df, ls, alive.size, p)
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
            got = align(tq[m], tr[m], df[m], sq[m], sr[m], qi[m], qkey[m], fp, p)
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
    def _candidates(ref: np.ndarray, tq: np.ndarray, tr: np.ndarray, df: np.ndarray, ls: np.ndarray, n_refs: int,
                    p: MatchParams) -> list[int]:
        """References whose best coarse (pitch, time scale, offset) cell is among the strongest.

        The offset is taken where each 20 s window of the query starts (the reference time the
        window's start maps to under the hit's coarse time scale), so a 4% scale bin drifts at
        most ~1 s inside a cell however long the query is.
        """
        pitch = np.round(df).astype(np.int64)
        kbin = np.round(ls / np.float32(SCALE_BIN)).astype(np.int64)
        win = np.floor(tq / np.float32(WINDOW)).astype(np.int64)
        local = tr - (tq - win * np.float32(WINDOW)) * np.exp(-kbin * np.float32(SCALE_BIN)).astype(np.float32)
        off = np.floor(local / np.float32(2.0)).astype(np.int64)
        cell = np.zeros(ref.size, np.int64)
        radix = 1  # of every digit after the reference's
        for v in (pitch, kbin, win, off):  # a mixed-radix cell number over the values present
            v = v - v.min()
            width = int(v.max()) + 1
            cell = cell * width + v
            radix *= width
        r0 = int(ref.min())
        cell += (ref.astype(np.int64) - r0) * radix
        floor = max(3, p.min_matches // 4)
        if int(cell.max()) < max(4 * ref.size, 1 << 22):  # dense: count without sorting the hits
            counts = np.bincount(cell)
            cells = np.flatnonzero(counts >= floor)
            counts = counts[cells]
        else:
            cells, counts = np.unique(cell, return_counts=True)
            strong = counts >= floor
            cells, counts = cells[strong], counts[strong]
        cref = cells // radix + r0
        order = np.argsort(-counts, kind="stable")
        ranked = cref[order]
        _, first = np.unique(ranked, return_index=True)
        return [int(r) for r in ranked[np.sort(first)[:p.candidates]]]


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
