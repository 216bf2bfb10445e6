"""Triplet descriptors -> 32-bit hash keys, and the neighbouring keys a query probes.

A key packs five coarse, edit-invariant values: the two pitch intervals (semitones), the
time-gap ratio, the log of the triplet's span and a pitch band of the anchor. Quantising
coarsely makes a copy land on the same key; a value near a bucket edge may land on either
side after an edit, so a query also probes the neighbouring bucket of every value that
sits within a margin of its edge (multi-probe), which keeps the stored index single-copy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from firehose_mod.scan.fingerprint.extract import Fingerprint

# (name, step, offset, bits): bucket = floor(value / step) + offset, clipped to the bit width.
_D_STEP, _D_OFF = 0.5, 24  # pitch intervals within +/-12 semitones
_R_STEP = 1 / 8  # time-gap ratio in (0, 1)
_S_STEP, _S_REF = 0.4, 0.04  # log2(span / 40 ms)
_F_STEP = 6.0  # anchor pitch band: half an octave
_BITS = (6, 6, 3, 4, 4)
KEY_BITS = sum(_BITS)  # keys are < 2**KEY_BITS


@dataclass(frozen=True)
class ProbeMargins:
    """How close (fraction of a bucket) to an edge a query value must be for the neighbour to be probed.

    Pitch intervals and the time ratio move only by peak-position jitter; the span moves by
    the tempo change (5% is 0.18 of a bucket); the anchor band moves by the pitch shift
    (2 semitones is 0.33 of a band).
    """

    interval: float = 0.25
    ratio: float = 0.2
    span: float = 0.3
    band: float = 0.4


def _components(fp: Fingerprint) -> list[np.ndarray]:
    """Continuous bucket coordinates, one array per key field."""
    return [
        fp.d1 / _D_STEP + _D_OFF,
        fp.d2 / _D_STEP + _D_OFF,
        fp.r / _R_STEP,
        np.log2(np.maximum(fp.span, 1e-3) / _S_REF) / _S_STEP,
        fp.f / _F_STEP,
    ]


def _pack(buckets: list[np.ndarray]) -> np.ndarray:
    key = np.zeros(buckets[0].shape, dtype=np.uint32)
    for b, bits in zip(buckets, _BITS):
        key = (key << np.uint32(bits)) | np.clip(b, 0, (1 << bits) - 1).astype(np.uint32)
    return key


def hash_keys(fp: Fingerprint) -> np.ndarray:
    """One key per triplet (what the index stores)."""
    return _pack([np.floor(c).astype(np.int64) for c in _components(fp)])


def probe_keys(fp: Fingerprint, margins: ProbeMargins = ProbeMargins(), *,
               scales: tuple[float, float] = (1.0, 1.0),
               shifts: tuple[float, float] = (0.0, 0.0)) -> tuple[np.ndarray, np.ndarray]:
    """(keys, triplet index) to look up: each triplet's own key plus its near-edge neighbours.

    `scales` (query seconds per reference second) and `shifts` (query minus reference pitch,
    semitones) are the edits searched: the span and anchor-band fields then probe every
    bucket a reference triplet could sit in under any edit in that range (a speed-up of 1.3x
    moves the span 0.95 of a bucket and the band 0.8 of one), so one pass finds all of them.
    """
    comps = _components(fp)
    ms = (margins.interval, margins.interval, margins.ratio, margins.span, margins.band)
    # How far each field's reference value may sit from the query's, in buckets: (below, above).
    reach = [(0.0, 0.0)] * 3 + [
        (np.log2(scales[1]) / _S_STEP, -np.log2(scales[0]) / _S_STEP),  # ref span = query span / scale
        (shifts[1] / _F_STEP, -shifts[0] / _F_STEP),  # ref pitch = query pitch - shift
    ]
    shifts_bits = np.cumsum((0,) + _BITS[:0:-1])[::-1]
    options = []  # per field: [(share of the packed key, rows for which that bucket is probed)]
    for c, m, bits, sh, (below, above) in zip(comps, ms, _BITS, shifts_bits, reach):
        lo = np.floor(c - below - m).astype(np.int64)
        hi = np.floor(c + above + m).astype(np.int64)
        q = np.floor(c).astype(np.int64)
        top = (1 << bits) - 1
        lo, hi = np.clip(lo, 0, top), np.clip(hi, 0, top)
        q_c = np.clip(q, 0, top)
        lo, hi = np.minimum(lo, q_c), np.maximum(hi, q_c)  # out-of-range values clip onto the edge bucket
        field = []
        for d in range(int((lo - q_c).min(initial=0)), int((hi - q_c).max(initial=0)) + 1):
            b = q_c + d
            ok = (b >= lo) & (b <= hi)
            if ok.any():
                field.append((np.clip(b, 0, top).astype(np.uint32) << np.uint32(sh), None if ok.all() else ok))
        options.append(field)
    n = fp.t.size
    keys, idx = [], []
    for combo in np.ndindex(*(len(o) for o in options)):
        sel = None
        for i, k in enumerate(combo):
            ok = options[i][k][1]
            if ok is not None:
                sel = ok if sel is None else sel & ok
        rows = np.arange(n) if sel is None else np.nonzero(sel)[0]
        if not rows.size:
            continue
        key = options[0][combo[0]][0][rows]
        for i in range(1, len(options)):
            key |= options[i][combo[i]][0][rows]
        keys.append(key)
        idx.append(rows)
    if not keys:
        return np.zeros(0, np.uint32), np.zeros(0, np.int64)
    return np.concatenate(keys), np.concatenate(idx)


SEARCH_MARGINS = ProbeMargins(0.0, 0.0, 0.0, 0.0)  # the candidate search: edits only, no edge neighbours
_PARTIAL_SHIFT = _BITS[3] + _BITS[4]  # key >> this: the three edit-invariant fields (intervals, ratio)


def probe_ranges(fp: Fingerprint, margins: ProbeMargins = ProbeMargins(), *,
                 scales: tuple[float, float] = (1.0, 1.0),
                 shifts: tuple[float, float] = (0.0, 0.0)) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi), int64 arrays of shape (5, triplets): the bucket range of each key field that
    `probe_keys` probes for each triplet (its probe set is their cartesian product)."""
    comps = _components(fp)
    ms = (margins.interval, margins.interval, margins.ratio, margins.span, margins.band)
    reach = [(0.0, 0.0)] * 3 + [
        (np.log2(scales[1]) / _S_STEP, -np.log2(scales[0]) / _S_STEP),
        (shifts[1] / _F_STEP, -shifts[0] / _F_STEP),
    ]
    los, his = [], []
    for c, m, bits, (below, above) in zip(comps, ms, _BITS, reach):
        top = (1 << bits) - 1
        q_c = np.clip(np.floor(c).astype(np.int64), 0, top)
        lo = np.clip(np.floor(c - below - m).astype(np.int64), 0, top)
        hi = np.clip(np.floor(c + above + m).astype(np.int64), 0, top)
        los.append(np.minimum(lo, q_c))
        his.append(np.maximum(hi, q_c))
    return np.stack(los), np.stack(his)


def partial_probes(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(partial keys sorted, triplet index): every combination of the three edit-invariant
    fields in range, as `key >> _PARTIAL_SHIFT` of a stored key would read."""
    n = lo.shape[1]
    sh = (_BITS[1] + _BITS[2], _BITS[2], 0)
    keys, idx = [], []
    w = hi[:3] - lo[:3]
    for d0 in range(int(w[0].max(initial=0)) + 1):
        for d1 in range(int(w[1].max(initial=0)) + 1):
            for d2 in range(int(w[2].max(initial=0)) + 1):
                rows = np.flatnonzero((w[0] >= d0) & (w[1] >= d1) & (w[2] >= d2))
                if rows.size:
                    keys.append(((lo[0, rows] + d0) << sh[0]) | ((lo[1, rows] + d1) << sh[1]) | (lo[2, rows] + d2))
                    idx.append(rows)
    if not keys:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    packed = np.sort((np.concatenate(keys).astype(np.uint64) << np.uint64(32))
                     | np.concatenate(idx).astype(np.uint64))
    del n
    return (packed >> np.uint64(32)).astype(np.int64), (packed & np.uint64(0xFFFFFFFF)).astype(np.int64)


def key_fields_tail(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(partial key, span bucket, band bucket) of stored keys."""
    k = keys.astype(np.int64)
    return k >> _PARTIAL_SHIFT, (k >> _BITS[4]) & ((1 << _BITS[3]) - 1), k & ((1 << _BITS[4]) - 1)
