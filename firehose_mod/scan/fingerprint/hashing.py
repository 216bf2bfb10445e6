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


def probe_keys(fp: Fingerprint, margins: ProbeMargins = ProbeMargins()) -> tuple[np.ndarray, np.ndarray]:
    """(keys, triplet index) to look up: each triplet's own key plus its near-edge neighbours."""
    comps = _components(fp)
    ms = (margins.interval, margins.interval, margins.ratio, margins.span, margins.band)
    base, alt = [], []
    for c, m, bits in zip(comps, ms, _BITS):
        q = np.floor(c).astype(np.int64)
        frac = c - q
        a = np.where(frac < m, q - 1, np.where(frac > 1 - m, q + 1, -1))
        a[a >= 1 << bits] = -1  # past the last bucket: clipping would probe the same key twice
        base.append(q)
        alt.append(a)
    # Each field's share of the packed key, for its own bucket and its neighbour: a probe
    # key is the OR of one share per field (the same keys `_pack` gives, without re-packing).
    shifts = np.cumsum((0,) + _BITS[:0:-1])[::-1]
    base_c = [np.clip(q, 0, (1 << bits) - 1).astype(np.uint32) << np.uint32(sh)
              for q, bits, sh in zip(base, _BITS, shifts)]
    alt_c = [np.clip(a, 0, (1 << bits) - 1).astype(np.uint32) << np.uint32(sh)
             for a, bits, sh in zip(alt, _BITS, shifts)]
    has_alt = [a >= 0 for a in alt]
    n = len(comps)
    keys, idx = [], []
    for combo in range(1 << n):
        fields = [i for i in range(n) if combo >> i & 1]
        if fields:
            sel = has_alt[fields[0]]
            for i in fields[1:]:
                sel = sel & has_alt[i]
            rows = np.nonzero(sel)[0]
            if not rows.size:
                continue
            key = (alt_c if 0 in fields else base_c)[0][rows]
            for i in range(1, n):
                key |= (alt_c if i in fields else base_c)[i][rows]
        else:
            rows = np.arange(fp.t.size)
            if not rows.size:
                continue
            key = base_c[0].copy()
            for i in range(1, n):
                key |= base_c[i]
        keys.append(key)
        idx.append(rows)
    if not keys:
        return np.zeros(0, np.uint32), np.zeros(0, np.int64)
    return np.concatenate(keys), np.concatenate(idx)
