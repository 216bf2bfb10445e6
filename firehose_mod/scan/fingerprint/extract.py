"""Audio -> landmark triplets: decode, log-frequency spectrogram, peaks, triplet hashes.

A Panako-style fingerprint (J. Six, "Panako: a scalable acoustic fingerprinting system
handling time-scale and pitch modification", ISMIR 2014): peaks of a log-frequency
spectrogram are grouped in triplets, and each triplet is described by what survives pitch
and tempo changes: frequency *differences* in semitones (a pitch shift adds a constant to
every log-frequency) and the *ratio* of its two time gaps (a tempo change scales both).
The anchor's absolute time, pitch and the triplet's span are kept beside the hash, so a
lookup can vote for one consistent (time scale, pitch shift, offset) per reference.

Everything here is pure and synchronous: `fingerprint_file` is a top-level function, safe to
send to a process pool.
"""

from __future__ import annotations

import functools
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FINGERPRINT_VERSION = "tri-1"


class DecodeError(Exception):
    """ffmpeg could not decode the file; the message carries ffmpeg's own explanation."""


@dataclass(frozen=True)
class FingerprintParams:
    """Extraction settings; changing any of them changes `FINGERPRINT_VERSION`'s meaning."""

    sample_rate: int = 8000
    n_fft: int = 1024  # 128 ms: enough frequency resolution for 1/3-semitone bins above ~250 Hz
    hop: int = 128  # 16 ms
    fmin: float = 110.0  # A2
    octaves: int = 5  # up to 3520 Hz
    bins_per_semitone: int = 3
    # A frame quieter than this (RMS, dBFS) yields no peaks: silence and near-silence never match.
    silence_floor_db: float = -55.0
    # Peaks further than this below the loudest bin of their frame are noise-floor debris.
    frame_range_db: float = 35.0
    # Local maximum neighbourhood: +/- frames and +/- log-frequency bins.
    peak_time_radius: int = 6
    peak_freq_radius: int = 4
    # A peak must stand this far above the mean of its frequency neighbourhood.
    min_prominence_db: float = 6.0
    prominence_radius: int = 18
    peaks_per_second: int = 14
    # Triplets: each anchor pairs with its first `partners` later peaks inside these limits.
    partners: int = 4
    partner_lookahead: int = 24
    min_gap_s: float = 0.04
    max_span_s: float = 1.2
    max_interval_semitones: float = 12.0
    max_seconds: float = 900.0  # decode at most this much of a file

    @property
    def frame_rate(self) -> float:
        return self.sample_rate / self.hop


DEFAULT_PARAMS = FingerprintParams()


@dataclass(frozen=True)
class Fingerprint:
    """Triplets of one recording; all arrays are parallel, one entry per triplet.

    `t` anchor time (s), `f` anchor pitch (semitones above fmin), `d1`/`d2` the other two
    peaks' pitch minus the anchor's (semitones), `r` = (t2 - t1) / (t3 - t1), `span` = t3 - t1 (s).
    """

    duration: float
    t: np.ndarray
    f: np.ndarray
    d1: np.ndarray
    d2: np.ndarray
    r: np.ndarray
    span: np.ndarray
    peaks: int = 0
    version: str = FINGERPRINT_VERSION

    def __len__(self) -> int:
        return int(self.t.size)


def decode_audio(path: str | Path, params: FingerprintParams = DEFAULT_PARAMS) -> np.ndarray:
    """Mono float32 samples at `params.sample_rate`, decoded by ffmpeg."""
    cmd = [
        "ffmpeg", "-nostdin", "-hide_banner", "-v", "error", "-i", str(path), "-map", "0:a:0", "-vn",
        "-ac", "1", "-ar", str(params.sample_rate), "-t", str(params.max_seconds), "-f", "f32le", "pipe:1",
    ]
    proc = subprocess.run(cmd, capture_output=True, check=False)
    if proc.returncode != 0:
        msg = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        raise DecodeError(f"ffmpeg could not decode {path}: {msg[-1] if msg else 'exit ' + str(proc.returncode)}")
    return np.frombuffer(proc.stdout, dtype="<f4").astype(np.float32, copy=False)


def fingerprint_file(path: str | Path, params: FingerprintParams = DEFAULT_PARAMS) -> Fingerprint:
    """Decode `path` and fingerprint it (top-level: usable with a process pool)."""
    return fingerprint_samples(decode_audio(path, params), params)


def fingerprint_samples(x: np.ndarray, params: FingerprintParams = DEFAULT_PARAMS) -> Fingerprint:
    duration = x.size / params.sample_rate
    spec, loud = log_spectrogram(x, params)
    pt, pf = find_peaks(spec, loud, params)
    return _triplets(pt / params.frame_rate, pf / params.bins_per_semitone, duration, params)


@functools.lru_cache(maxsize=8)
def _log_filterbank(params: FingerprintParams) -> np.ndarray:
    """(n_fft/2+1, n_log) weights: triangles on a log-frequency axis, interpolation where too narrow."""
    n_lin = params.n_fft // 2 + 1
    lin = np.arange(n_lin) * params.sample_rate / params.n_fft
    n_log = params.octaves * 12 * params.bins_per_semitone
    step = 1.0 / (12 * params.bins_per_semitone)
    centres = params.fmin * 2.0 ** (np.arange(-1, n_log + 1) * step)
    w = np.zeros((n_lin, n_log), dtype=np.float32)
    df = lin[1]
    for k in range(n_log):
        lo, c, hi = centres[k], centres[k + 1], centres[k + 2]
        if hi - lo < 2 * df:  # narrower than the FFT's resolution: interpolate at the centre
            i = int(c // df)
            frac = c / df - i
            w[i, k], w[i + 1, k] = 1 - frac, frac
            continue
        up = (lin - lo) / (c - lo)
        down = (hi - lin) / (hi - c)
        tri = np.clip(np.minimum(up, down), 0, None)
        w[:, k] = tri / tri.sum()
    return w


def log_spectrogram(x: np.ndarray, params: FingerprintParams) -> tuple[np.ndarray, np.ndarray]:
    """(frames, log bins) power in dB, and each frame's RMS level in dBFS."""
    n, hop = params.n_fft, params.hop
    if x.size < n:
        x = np.pad(x, (0, n - x.size))
    n_frames = 1 + (x.size - n) // hop
    frames = np.lib.stride_tricks.sliding_window_view(x, n)[::hop][:n_frames]
    window = np.hanning(n).astype(np.float32)
    fb = _log_filterbank(params)
    spec = np.empty((n_frames, fb.shape[1]), dtype=np.float32)
    loud = np.empty(n_frames, dtype=np.float32)
    chunk = 2048
    for s in range(0, n_frames, chunk):  # chunks bound the memory of long files
        fr = frames[s:s + chunk]
        loud[s:s + chunk] = 10 * np.log10(np.mean(fr * fr, axis=1) + 1e-12)
        mag = np.fft.rfft(fr * window, axis=1)
        power = (mag.real ** 2 + mag.imag ** 2).astype(np.float32)
        spec[s:s + chunk] = 10 * np.log10(power @ fb + 1e-10)
    return spec, loud


def _max_filter(a: np.ndarray, radius: int, axis: int, *, before: bool = True, after: bool = True) -> np.ndarray:
    """Running maximum over +/- radius along `axis` (edges padded with -inf)."""
    out = a.copy()
    pad = [(0, 0)] * a.ndim
    pad[axis] = (radius, radius)
    p = np.pad(a, pad, constant_values=-np.inf)
    length = a.shape[axis]
    for k in range(1, radius + 1):
        if after:
            np.maximum(out, np.take(p, np.arange(radius + k, radius + k + length), axis=axis), out=out)
        if before:
            np.maximum(out, np.take(p, np.arange(radius - k, radius - k + length), axis=axis), out=out)
    return out


def _box_mean(a: np.ndarray, radius: int, axis: int) -> np.ndarray:
    pad = [(0, 0)] * a.ndim
    pad[axis] = (radius + 1, radius)
    c = np.cumsum(np.pad(a, pad, mode="edge"), axis=axis, dtype=np.float64)
    length = a.shape[axis]
    hi = np.take(c, np.arange(2 * radius + 1, 2 * radius + 1 + length), axis=axis)
    lo = np.take(c, np.arange(0, length), axis=axis)
    return ((hi - lo) / (2 * radius + 1)).astype(np.float32)


def find_peaks(spec: np.ndarray, loud: np.ndarray, params: FingerprintParams) -> tuple[np.ndarray, np.ndarray]:
    """Spectral peaks as (frame, log-bin) with sub-bin precision, strongest first per second."""
    if spec.shape[0] < 3:
        return np.zeros(0, np.float32), np.zeros(0, np.float32)
    fmax = _max_filter(spec, params.peak_freq_radius, axis=1)
    # Strictly above the earlier frames, at least the later ones: a steady tone gives one peak, not a run.
    past = _max_filter(fmax, params.peak_time_radius, axis=0, after=False)
    earlier = np.full_like(spec, -np.inf)
    earlier[1:] = past[:-1]
    later = _max_filter(fmax, params.peak_time_radius, axis=0, before=False)
    frame_max = spec.max(axis=1, keepdims=True)
    prominence = spec - _box_mean(spec, params.prominence_radius, axis=1)
    ok = (
        (spec >= later) & (spec > earlier)
        & (prominence >= params.min_prominence_db)
        & (spec >= frame_max - params.frame_range_db)
        & (loud >= params.silence_floor_db)[:, None]
    )
    ok[0, :] = ok[-1, :] = False
    ok[:, 0] = ok[:, -1] = False
    ti, fi = np.nonzero(ok)
    if ti.size == 0:
        return np.zeros(0, np.float32), np.zeros(0, np.float32)
    # Density control: the most prominent `peaks_per_second` in each one-second block.
    block = (ti / params.frame_rate).astype(np.int64)
    prom = prominence[ti, fi]
    order = np.lexsort((-prom, block))
    b = block[order]
    first = np.searchsorted(b, b, side="left")
    keep = order[(np.arange(b.size) - first) < params.peaks_per_second]
    ti, fi = ti[keep], fi[keep]
    # Parabolic interpolation: sub-bin pitch and sub-frame time make the hash quantisation stable.
    fi_f = fi + _parabola(spec[ti, fi - 1], spec[ti, fi], spec[ti, fi + 1])
    ti_f = ti + _parabola(spec[ti - 1, fi], spec[ti, fi], spec[ti + 1, fi])
    order = np.argsort(ti_f, kind="stable")
    return ti_f[order].astype(np.float32), fi_f[order].astype(np.float32)


def _parabola(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    denom = a - 2 * b + c
    with np.errstate(divide="ignore", invalid="ignore"):
        d = np.where(denom < 0, 0.5 * (a - c) / denom, 0.0)
    return np.clip(d, -0.5, 0.5)


def _triplets(t: np.ndarray, f: np.ndarray, duration: float, params: FingerprintParams) -> Fingerprint:
    n = t.size
    empty = np.zeros(0, np.float32)
    if n < 3:
        return Fingerprint(duration, empty, empty, empty, empty, empty, empty, peaks=int(n))
    look = params.partner_lookahead
    idx = np.arange(n)[:, None] + np.arange(1, look + 1)[None, :]
    valid = idx < n
    idx = np.minimum(idx, n - 1)
    dt = t[idx] - t[:, None]
    dfreq = f[idx] - f[:, None]
    valid &= (dt >= params.min_gap_s) & (dt <= params.max_span_s) & (np.abs(dfreq) <= params.max_interval_semitones)
    # The first `partners` valid later peaks of each anchor.
    rank = np.cumsum(valid, axis=1) - 1
    valid &= rank < params.partners
    k = params.partners
    part = np.full((n, k), -1, dtype=np.int64)
    rows, cols = np.nonzero(valid)
    part[rows, rank[rows, cols]] = idx[rows, cols]
    a_list, b_list, c_list = [], [], []
    for i in range(k):
        for j in range(i + 1, k):
            m = (part[:, i] >= 0) & (part[:, j] >= 0)
            a = np.nonzero(m)[0]
            a_list.append(a)
            b_list.append(part[a, i])
            c_list.append(part[a, j])
    a, b, c = np.concatenate(a_list), np.concatenate(b_list), np.concatenate(c_list)
    t1, t2, t3 = t[a], t[b], t[c]
    d1, d2 = f[b] - f[a], f[c] - f[a]
    span = t3 - t1
    keep = ((t2 - t1) >= params.min_gap_s) & ((t3 - t2) >= params.min_gap_s)
    # Three peaks at one pitch (a held note, a hum) say nothing about which recording this is.
    keep &= (np.abs(d1) >= 0.5) | (np.abs(d2) >= 0.5)
    order = np.argsort(t1[keep], kind="stable")

    def pick(v: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(v[keep][order], dtype=np.float32)

    return Fingerprint(
        duration=float(duration), t=pick(t1), f=pick(f[a]), d1=pick(d1), d2=pick(d2),
        r=pick((t2 - t1) / np.maximum(span, 1e-6)), span=pick(span), peaks=int(n),
    )
