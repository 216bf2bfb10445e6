"""The fine stage of a lookup, per candidate reference (index.py runs it): the pitch-shift mode,
a grid of time scales around the hits' own scale with an offset histogram for each, the best
(scale, offset) and the seconds its consistent matches cover; and the name of the edit a
measured (time scale, pitch shift) suggests."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from firehose_mod.scan.fingerprint.extract import Fingerprint

if TYPE_CHECKING:  # index.py imports this module: the parameters' type only, for annotations
    from firehose_mod.scan.fingerprint.index import MatchParams

SCALE_BIN = 0.04  # ln time scale: the coarse vote's scale cells
WINDOW = 20.0  # seconds of query per coarse offset window


def align(tq: np.ndarray, tr: np.ndarray, df: np.ndarray, sq: np.ndarray, sr: np.ndarray, qi: np.ndarray,
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
    scales = _scale_grid(np.log(sq / np.maximum(sr, 1e-3)), p.scale_range(shift0), p)
    if scales.size == 0:
        return None
    tol = p.offset_tolerance
    centre = float(np.median(tr))  # offsets taken mid-reference: their range stays small at any scale
    # The offset bin of every (scale, match), floor((tq - scale * (tr - centre)) / tol), computed
    # in place: this grid is the fine stage's largest array.
    off = np.multiply(scales[:, None], (tr - centre)[None, :])
    np.subtract(tq[None, :], off, out=off)
    np.divide(off, tol, out=off)
    np.floor(off, out=off)
    base = off.min()  # = floor(min offset / tol): division and floor are monotonic
    off -= base
    bins = off.astype(np.int64)
    del off
    width = int(bins.max()) + 2
    bins += (np.arange(scales.size, dtype=np.int64) * width)[:, None]
    hist = np.bincount(bins.ravel(), minlength=scales.size * width).reshape(scales.size, width)
    pair = hist[:, :-1] + hist[:, 1:]  # two adjacent bins: an alignment on a bin edge is not split
    si, oi = np.unravel_index(int(np.argmax(pair)), pair.shape)
    s = float(scales[si])
    o = (base + oi + 1) * tol - s * centre
    sel = np.abs(tq - s * tr - o) <= tol
    if sel.sum() < p.min_matches:
        return None
    shift = float(np.median(df[sel]))
    sel &= np.abs(df - shift) <= p.pitch_tolerance
    if sel.sum() >= 8 and np.ptp(tr[sel]) > 2.0:  # refine the line on the consistent set
        s2, o2 = np.polyfit(tr[sel], tq[sel], 1)
        if any(a - 0.01 <= np.log(max(s2, 1e-3)) <= b + 0.01 for a, b in p.scale_range(shift)):
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
    n_bands = int((bands >= 3).sum())
    if n_bands < p.min_pitch_bands:
        return None
    # Density inside the matched segments: a copy agrees on many of its triplets there, two
    # pieces that merely share a groove or a chord change on a few.
    in_segments = sum(int(np.count_nonzero((fp.t >= a) & (fp.t <= b))) for a, b in segments)
    score = min(1.0, used / max(in_segments, 1))
    if score < p.min_score:
        return None
    shift = float(np.median(df[sel]))
    # How tightly the matches sit on the line: a copy keeps the recording's own timing (a few
    # ms, whatever the edit), a cover played from the same score keeps only the score's.
    jitter = float(np.median(np.abs(tq[sel] - s * tr[sel] - o))) * 1000
    return (round(score, 4), used, round(seconds, 2), round(q0, 2), round(q1, 2),
            round((q0 - o) / s, 2), round((q1 - o) / s, 2), round(s, 4), round(shift, 2), n_bands, round(jitter, 1))


def describe_edit(time_scale: float, pitch_shift: float) -> str:
    """The edit a match's alignment shows, in the words moderators use: "none", "nightcore x1.25"
    or "slowed x0.80" (a speed change: faster and higher, or slower and lower, together),
    "tempo x1.10" (pitch kept), "pitch -3.0 st" (tempo kept), or a tempo and a pitch change."""
    speed = 1 / time_scale  # playback speed relative to the reference
    semis = 12 * np.log2(speed)
    if abs(semis) < 0.25 and abs(pitch_shift) < 0.25:
        return "none"
    if abs(semis) >= 0.5 and abs(pitch_shift - semis) < 0.5:
        return f"{'nightcore' if speed > 1 else 'slowed'} x{speed:.2f}"
    if abs(pitch_shift) < 0.25:
        return f"tempo x{speed:.2f}"
    if abs(semis) < 0.25:
        return f"pitch {pitch_shift:+.1f} st"
    return f"tempo x{speed:.2f}, pitch {pitch_shift:+.1f} st"


def _scale_grid(ls: np.ndarray, allowed: list[tuple[float, float]], p: MatchParams) -> np.ndarray:
    """Time scales for the Hough grid: +/-8% around the mode of the hits' own scales, inside
    the region. The mode is cheap to find and keeps the grid (and its histogram) small."""
    step = 0.02
    inside = np.zeros(ls.size, dtype=bool)
    for a, b in allowed:
        inside |= (ls >= a - 0.06) & (ls <= b + 0.06)
    if not inside.any():
        return np.zeros(0)
    lo = min(a for a, _ in allowed) - 0.06
    h = np.bincount(np.floor((ls[inside] - lo) / step).astype(np.int64))
    smooth = np.convolve(h, np.ones(7), mode="same")  # +/-6%: a triplet span's own error
    mode = lo + (int(np.argmax(smooth)) + 0.5) * step
    grid = np.arange(mode - 0.08, mode + 0.08 + 1e-9, p.scale_step)
    keep = np.zeros(grid.size, dtype=bool)
    for a, b in allowed:
        keep |= (grid >= a) & (grid <= b)
    return np.exp(grid[keep])


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
