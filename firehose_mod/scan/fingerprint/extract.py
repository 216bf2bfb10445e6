"""Audio -> landmark triplets: decode, log-frequency spectrogram, peaks, triplet hashes.

A Panako-style fingerprint (J. Six, "Panako: a scalable acoustic fingerprinting system
handling time-scale and pitch modification", ISMIR 2014): peaks of a log-frequency
spectrogram are grouped in triplets, and each triplet is described by what survives pitch
and tempo changes: frequency *differences* in semitones (a pitch shift adds a constant to
every log-frequency) and the *ratio* of its two time gaps (a tempo change scales both).
The anchor's absolute time, pitch and the triplet's span are kept beside the hash, so a
lookup can vote for one consistent (time scale, pitch shift, offset) per reference.

Everything here is pure and synchronous: `fingerprint_file` is a top-level function, safe to
send to a process pool. A file is decoded and analysed in blocks of about a minute, so memory
does not grow with its length (the triplets of 15 minutes are a few MB; the spectrogram would
be hundreds).

An upload is a stranger's file: ffmpeg opens it with `ffmpeg_input`, which allows the file
protocol and the demuxers of single-file audio containers only. An HLS playlist, an ffconcat
script, a DASH or IMF manifest saved as `.mp3` is then undecodable, instead of a pointer that
ffmpeg would follow to another file on the labeler's disk.
"""

from __future__ import annotations

import functools
import subprocess
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
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
    max_seconds: float = 900.0  # decode at most this much of a file (the scanner uses LONG_PARAMS)

    @property
    def frame_rate(self) -> float:
        return self.sample_rate / self.hop


DEFAULT_PARAMS = FingerprintParams()
# What the copyright scanner and the catalogue import read: a whole DJ set or a long stream, up to
# 4 hours. The fingerprint is the same as DEFAULT_PARAMS' (the cap is not part of the format), and a
# long file is analysed in blocks and looked up in windows, so memory does not grow with its length.
LONG_PARAMS = FingerprintParams(max_seconds=4 * 3600.0)


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

    def window(self, start: float, end: float) -> Fingerprint:
        """The triplets anchored in [start, end) s, times unchanged (a long upload is queried piecewise)."""
        lo, hi = np.searchsorted(self.t, [start, end])  # triplets are sorted by anchor time
        return Fingerprint(self.duration, self.t[lo:hi], self.f[lo:hi], self.d1[lo:hi], self.d2[lo:hi],
                           self.r[lo:hi], self.span[lo:hi], self.peaks, self.version)


# Demuxers of audio containers that read one file. Not hls, concat, dash, imf, image2...:
# those open further files named inside the upload. mov opens none while `enable_drefs` is off
# (its default).
AUDIO_DEMUXERS = ("mp3,wav,w64,flac,ogg,mov,aac,aiff,asf,matroska,caf,wv,ape,tta,amr,au,ac3,eac3,dts,"
                  "mpc,mpc8")
BLOCK_SECONDS = 64.0  # analysed at a time: bounds memory, whatever the file's length


def ffmpeg_input(path: str | Path) -> list[str]:
    """ffmpeg/ffprobe arguments that open `path` as one local audio file, and nothing else."""
    return ["-protocol_whitelist", "file", "-format_whitelist", AUDIO_DEMUXERS, "-i", f"file:{path}"]


def decode_command(path: str | Path, sample_rate: int, seconds: float, fmt: str = "f32le") -> list[str]:
    """ffmpeg decoding the first `seconds` of `path` to mono raw `fmt` at `sample_rate` on stdout."""
    return ["ffmpeg", "-nostdin", "-hide_banner", "-v", "error", *ffmpeg_input(path), "-map", "0:a:0", "-vn",
            "-ac", "1", "-ar", str(sample_rate), "-t", str(seconds), "-f", fmt, "pipe:1"]


def _ffmpeg_failed(path: str | Path, stderr: bytes, code: int) -> DecodeError:
    lines = stderr.decode("utf-8", "replace").strip().splitlines()
    return DecodeError(f"ffmpeg could not decode {path}: {lines[-1][:300] if lines else f'exit {code}'}")


def decode_chunks(path: str | Path, params: FingerprintParams = DEFAULT_PARAMS, *,
                  chunk_seconds: float = 16.0) -> Iterator[np.ndarray]:
    """Mono float32 samples at `params.sample_rate` (at most `max_seconds`), read from ffmpeg as
    it decodes, `chunk_seconds` at a time. Raises DecodeError after the last chunk if ffmpeg
    failed; closing the iterator early stops ffmpeg."""
    size = max(1, int(chunk_seconds * params.sample_rate)) * 4
    # stderr to a file, not a pipe: a file full of broken frames must not block ffmpeg on a full pipe.
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(decode_command(path, params.sample_rate, params.max_seconds), stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=err)
        try:
            while data := proc.stdout.read(size):
                yield np.frombuffer(data[:len(data) - len(data) % 4], dtype="<f4")
            code = proc.wait()
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.stdout.close()
            proc.wait()
        if code != 0:
            err.seek(0)
            raise _ffmpeg_failed(path, err.read()[-4096:], code)


def decode_audio(path: str | Path, params: FingerprintParams = DEFAULT_PARAMS) -> np.ndarray:
    """Mono float32 samples at `params.sample_rate`, decoded by ffmpeg (all in memory)."""
    chunks = list(decode_chunks(path, params))
    return np.concatenate(chunks) if chunks else np.zeros(0, np.float32)


def fingerprint_file(path: str | Path, params: FingerprintParams = DEFAULT_PARAMS) -> Fingerprint:
    """Decode `path` and fingerprint it (top-level: usable with a process pool); memory is bounded
    by the block size, not by the file's length."""
    return fingerprint_stream(decode_chunks(path, params), params)


def fingerprint_samples(x: np.ndarray, params: FingerprintParams = DEFAULT_PARAMS) -> Fingerprint:
    return fingerprint_stream([x], params)


def fingerprint_stream(chunks: Iterable[np.ndarray], params: FingerprintParams = DEFAULT_PARAMS, *,
                       block_seconds: float = BLOCK_SECONDS) -> Fingerprint:
    """The fingerprint of samples arriving in chunks of any size; the same as of the whole array.

    Peaks are found block by block, each block's spectrogram with `peak_time_radius + 1` frames
    of context on either side (what the peak test and its interpolation look at), and blocks
    start on whole seconds, so the per-second density control sees the same peaks.
    """
    times, pitches, total = [], [], 0
    for pt, pf, total in _block_peaks(chunks, params, _block_frames(params, block_seconds)):
        times.append(pt)
        pitches.append(pf)
    pt = np.concatenate(times) if times else np.zeros(0, np.float32)
    pf = np.concatenate(pitches) if pitches else np.zeros(0, np.float32)
    return _triplets(pt / params.frame_rate, pf / params.bins_per_semitone, total / params.sample_rate, params)


def _block_frames(params: FingerprintParams, seconds: float) -> int:
    """Frames in a block of about `seconds` that starts and ends on whole seconds."""
    rate = Fraction(params.sample_rate, params.hop)  # frames per second, e.g. 125/2
    unit = rate.numerator  # frames in `rate.denominator` whole seconds
    return unit * max(1, round(seconds * rate / unit))


def _block_peaks(chunks: Iterable[np.ndarray], params: FingerprintParams,
                 block: int) -> Iterator[tuple[np.ndarray, np.ndarray, int]]:
    """(peak frames, peak bins, samples read so far) per block of `block` frames."""
    n, hop, ctx = params.n_fft, params.hop, params.peak_time_radius + 1
    buf, buf_start, total, start = np.zeros(0, np.float32), 0, 0, 0  # buf holds samples from buf_start on
    source, done = iter(chunks), False
    while True:
        need = (start + block + ctx - 1) * hop + n  # samples up to the last context frame after the block
        parts = [buf]
        have = buf_start + buf.size
        while not done and have < need:
            x = next(source, None)
            if x is None:
                done = True
            else:
                parts.append(np.asarray(x, np.float32).ravel())
                total += parts[-1].size
                have += parts[-1].size
        buf = np.concatenate(parts) if len(parts) > 1 else buf
        if done:
            length = max(total, n)  # shorter than one frame: zero-padded to one, as log_spectrogram does
            if buf_start + buf.size < length:
                buf = np.pad(buf, (0, length - buf_start - buf.size))
            frames = 1 + (length - n) // hop
            end, last = min(start + block, frames), frames
        else:
            end = start + block
            last = end + ctx
        first = max(start - ctx, 0)
        seg = buf[first * hop - buf_start:(last - 1) * hop + n - buf_start]
        spec, loud = log_spectrogram(seg, params)
        pt, pf = find_peaks(spec, loud, params, offset=first, rows=(start - first, end - first))
        yield pt, pf, total
        if done and end >= frames:
            return
        start = end
        keep = max(start - ctx, 0) * hop
        buf, buf_start = buf[keep - buf_start:], keep


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
    chunk = 512
    for s in range(0, n_frames, chunk):  # chunks bound the memory of long files
        fr = frames[s:s + chunk]
        loud[s:s + chunk] = 10 * np.log10(np.mean(fr * fr, axis=1) + 1e-12)
        mag = np.fft.rfft(fr * window, axis=1)
        power = (mag.real ** 2 + mag.imag ** 2).astype(np.float32)
        spec[s:s + chunk] = 10 * np.log10(power @ fb + 1e-10)
    return spec, loud


def _max_filter(a: np.ndarray, radius: int, axis: int, *, before: bool = True, after: bool = True) -> np.ndarray:
    """Running maximum over +/- radius along `axis` (what lies past the edges does not count)."""
    out = a.copy()
    length = a.shape[axis]

    def part(lo: int, hi: int) -> tuple:  # index of [lo, hi) along `axis`: views, no padding or copies
        index = [slice(None)] * a.ndim
        index[axis] = slice(lo, hi)
        return tuple(index)

    for k in range(1, min(radius, length - 1) + 1):
        if after:  # out[i] takes a[i + k]
            np.maximum(out[part(0, length - k)], a[part(k, length)], out=out[part(0, length - k)])
        if before:  # out[i] takes a[i - k]
            np.maximum(out[part(k, length)], a[part(0, length - k)], out=out[part(k, length)])
    return out


def _box_mean(a: np.ndarray, radius: int, axis: int) -> np.ndarray:
    pad = [(0, 0)] * a.ndim
    pad[axis] = (radius + 1, radius)
    c = np.cumsum(np.pad(a, pad, mode="edge"), axis=axis, dtype=np.float64)
    length = a.shape[axis]
    hi = np.take(c, np.arange(2 * radius + 1, 2 * radius + 1 + length), axis=axis)
    lo = np.take(c, np.arange(0, length), axis=axis)
    return ((hi - lo) / (2 * radius + 1)).astype(np.float32)


def find_peaks(spec: np.ndarray, loud: np.ndarray, params: FingerprintParams, *, offset: int = 0,
               rows: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Spectral peaks as (frame, log-bin) with sub-bin precision, the strongest per second.

    For one block of a longer recording: row 0 of `spec` is frame `offset`, and only rows in
    `rows` (lo, hi) may hold peaks (the others are context)."""
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
    if rows is not None:
        ok[:rows[0]] = ok[rows[1]:] = False
    ti, fi = np.nonzero(ok)
    if ti.size == 0:
        return np.zeros(0, np.float32), np.zeros(0, np.float32)
    # Density control: the most prominent `peaks_per_second` in each one-second block.
    block = ((ti + offset) / params.frame_rate).astype(np.int64)
    prom = prominence[ti, fi]
    order = np.lexsort((-prom, block))
    b = block[order]
    first = np.searchsorted(b, b, side="left")
    keep = order[(np.arange(b.size) - first) < params.peaks_per_second]
    ti, fi = ti[keep], fi[keep]
    # Parabolic interpolation: sub-bin pitch and sub-frame time make the hash quantisation stable.
    fi_f = fi + _parabola(spec[ti, fi - 1], spec[ti, fi], spec[ti, fi + 1])
    ti_f = ti + offset + _parabola(spec[ti - 1, fi], spec[ti, fi], spec[ti + 1, fi])
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
