"""Music-like test audio made with numpy, and the edits a copier makes, made with ffmpeg.

Each seed is a different "song": its own tempo, key, chord progression, bass line, melody
and drum pattern, with harmonics and envelopes so the spectrogram looks like music, not
like test tones. Variants are the edits the copyright matcher must survive.
"""

from __future__ import annotations

import subprocess
import wave
from pathlib import Path

import numpy as np

SR = 22050
MAJOR = [0, 2, 4, 5, 7, 9, 11]
MINOR = [0, 2, 3, 5, 7, 8, 10]


def _timbre(rng: np.random.Generator, harmonics: int) -> np.ndarray:
    """An instrument: its own harmonic amplitudes (some partials strong, some missing)."""
    return rng.uniform(0, 1, harmonics) ** 2 / np.arange(1, harmonics + 1) ** rng.uniform(0.5, 1.5)


def _tone(freq: float, n: int, rng: np.random.Generator, timbre: np.ndarray, detune: float = 0.0,
          sr: int = SR) -> np.ndarray:
    t = np.arange(n) / sr
    out = np.zeros(n, dtype=np.float64)
    # Draw every random value first: the same seed gives the same song at any sample rate.
    jitter = rng.standard_normal(timbre.size)
    phases = rng.uniform(0, 2 * np.pi, timbre.size)
    for k, amp in enumerate(timbre, start=1):
        if freq * k > sr / 2 - 200:
            break
        f = freq * k * (1 + detune * jitter[k - 1] * 1e-3)
        out += amp * np.sin(2 * np.pi * f * t + phases[k - 1])
    return out


def _env(n: int, attack: float, decay: float, sr: int = SR) -> np.ndarray:
    t = np.arange(n) / sr
    a = np.minimum(1.0, t / max(attack, 1e-4))
    return a * np.exp(-t / decay)


def _midi(note: float) -> float:
    return 440.0 * 2 ** ((note - 69) / 12)


def song(seed: int, seconds: float = 40.0, sr: int = SR) -> np.ndarray:
    """A seeded piece of music-like audio, float32 in [-1, 1] at `sr` (the same music at any rate)."""
    rng = np.random.default_rng(seed)
    nrng = np.random.default_rng(seed + 1_000_003)  # noise: its draw sizes depend on `sr`
    n = int(seconds * sr)
    out = np.zeros(n + sr * 2)
    bpm = rng.uniform(80, 140)
    beat = 60.0 / bpm
    root = 48 + int(rng.integers(0, 12))
    scale = MAJOR if rng.random() < 0.5 else MINOR
    progression = rng.choice(7, size=4, replace=True)
    pad_t, bass_t, lead_t = _timbre(rng, 8), _timbre(rng, 6), _timbre(rng, 10)
    voicing = [(0, 2, 4), (0, 2, 4, 6), (0, 3, 4), (0, 4, 7), (0, 2, 4, 8)][int(rng.integers(0, 5))]
    lead_steps = [2, 4, 4, 1][int(rng.integers(0, 4))]  # notes per beat
    kick_f, kick_sweep, snare_tone = rng.uniform(40, 70), rng.uniform(40, 140), rng.uniform(150, 300)

    def add(start_s: float, sig: np.ndarray) -> None:
        i = int(start_s * sr)
        if i >= n:
            return
        m = min(sig.size, out.size - i)
        out[i:i + m] += sig[:m]

    n_beats = int(seconds / beat) + 1
    for b in range(n_beats):
        bar, pos = divmod(b, 4)
        degree = int(progression[bar % 4])
        chord = [scale[(degree + k) % 7] + 12 * ((degree + k) // 7) for k in voicing]
        start = b * beat
        if pos == 0:  # pad chord, one per bar
            length = int(4 * beat * sr)
            pad = sum(_tone(_midi(root + 12 + c), length, rng, pad_t, detune=2.0, sr=sr) for c in chord)
            add(start, 0.08 * pad * _env(length, 0.05, 2.5 * beat, sr))
        bass_len = int(beat * sr)  # bass: chord root, one per beat
        add(start, 0.25 * _tone(_midi(root - 12 + chord[0] + (7 if pos == 2 else 0)), bass_len, rng, bass_t, sr=sr)
            * _env(bass_len, 0.01, 0.4 * beat, sr))
        for part in range(lead_steps):  # melody, sometimes resting
            if rng.random() < 0.3:
                continue
            step = int(rng.integers(0, 7))
            note = root + 24 + scale[step] + (12 if rng.random() < 0.2 else 0)
            ln = int(beat / lead_steps * sr)
            add(start + part * beat / lead_steps, 0.12 * _tone(_midi(note), ln, rng, lead_t, sr=sr) * _env(ln, 0.01, 0.3 * beat, sr))
        kick_len = int(0.15 * sr)  # drums: kick on 1 and 3, snare on 2 and 4, hats on eighths
        tk = np.arange(kick_len) / sr
        if pos in (0, 2):
            add(start, 0.5 * np.sin(2 * np.pi * (kick_f + kick_sweep * np.exp(-tk * 30)) * tk) * np.exp(-tk * 20))
        else:
            noise = nrng.standard_normal(int(0.12 * sr))
            body = np.sin(2 * np.pi * snare_tone * np.arange(noise.size) / sr)
            add(start, 0.15 * (noise + body) * _env(noise.size, 0.001, 0.04, sr))
        for half in range(2):
            hat = np.diff(nrng.standard_normal(int(0.04 * sr) + 1))
            add(start + half * beat / 2, 0.03 * hat * _env(hat.size, 0.001, 0.01, sr))
    out = out[:n]
    return (0.8 * out / (np.max(np.abs(out)) + 1e-9)).astype(np.float32)


def write_wav(path: Path, x: np.ndarray, sr: int = SR) -> Path:
    pcm = (np.clip(x, -1, 1) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sr)
        w.writeframes(pcm.tobytes())
    return path


def read_wav(path: Path) -> np.ndarray:
    with wave.open(str(path), "rb") as w:
        return np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float32) / 32767


def ffmpeg(src: Path, dst: Path, *args: str) -> Path:
    """Run ffmpeg on `src` with output options `args`, writing `dst`."""
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", str(src), *args, str(dst)], check=True)
    return dst


def pitch_shift(src: Path, dst: Path, semitones: float) -> Path:
    """Pitch moved, tempo kept: resample (changes both), then time-stretch back."""
    ratio = 2 ** (semitones / 12)
    return ffmpeg(src, dst, "-af", f"asetrate={SR * ratio:.0f},aresample={SR},atempo={1 / ratio:.6f}")


def tempo_change(src: Path, dst: Path, factor: float) -> Path:
    """Faster (factor > 1) or slower, pitch kept."""
    return ffmpeg(src, dst, "-af", f"atempo={factor}")


def speed_change(src: Path, dst: Path, factor: float) -> Path:
    """Faster and higher (factor > 1), like a turntable: resampled without correction."""
    return ffmpeg(src, dst, "-af", f"asetrate={SR * factor:.0f},aresample={SR}")


def mp3(src: Path, dst: Path, kbps: int = 32) -> Path:
    return ffmpeg(src, dst, "-c:a", "libmp3lame", "-b:a", f"{kbps}k")


def excerpt(x: np.ndarray, start_s: float, seconds: float) -> np.ndarray:
    return x[int(start_s * SR):int((start_s + seconds) * SR)].copy()


def embed(host: np.ndarray, piece: np.ndarray, at_s: float) -> np.ndarray:
    """`piece` spliced into `host` at `at_s`, replacing that much of the host, with 20 ms crossfades."""
    i = int(at_s * SR)
    fade = int(0.02 * SR)
    m = min(piece.size, host.size - i)
    w = np.ones(m, np.float32)  # the piece's weight; the host gets 1 - w
    ramp = np.linspace(0, 1, fade, dtype=np.float32)
    w[:fade], w[-fade:] = ramp, ramp[::-1]
    out = host.copy()
    out[i:i + m] = host[i:i + m] * (1 - w) + piece[:m] * w
    return out


def gain_db(x: np.ndarray, db: float) -> np.ndarray:
    return (x * 10 ** (db / 20)).astype(np.float32)


def add_noise(x: np.ndarray, snr_db: float, seed: int = 0) -> np.ndarray:
    """White noise at `snr_db` below the signal's RMS."""
    rng = np.random.default_rng(seed)
    rms = float(np.sqrt(np.mean(x ** 2)))
    noise = rng.standard_normal(x.size).astype(np.float32) * rms * 10 ** (-snr_db / 20)
    return np.clip(x + noise, -1, 1).astype(np.float32)


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * SR), np.float32)


def near_silence(seconds: float, level_db: float = -70.0, seed: int = 0) -> np.ndarray:
    """Dither-like hiss and a faint mains hum, far below any music."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SR)
    t = np.arange(n) / SR
    hum = np.sin(2 * np.pi * 50 * t) + 0.5 * np.sin(2 * np.pi * 150 * t)
    return (10 ** (level_db / 20) * (rng.standard_normal(n) + hum)).astype(np.float32)


def shared_intro_pair(seed_a: int, seed_b: int, seed_intro: int, intro_s: float = 8.0,
                      body_s: float = 30.0) -> tuple[np.ndarray, np.ndarray]:
    """Two different songs that open with the same `intro_s` seconds (a common sample)."""
    intro = song(seed_intro, intro_s)
    return (np.concatenate([intro, song(seed_a, body_s)]), np.concatenate([intro, song(seed_b, body_s)]))


# -- additive helpers for the edits re-uploaders make (tests/test_fingerprint_edits.py) ---------------
def write_stereo_wav(path: Path, left: np.ndarray, right: np.ndarray, sr: int = SR) -> Path:
    n = min(left.size, right.size)
    pcm = (np.clip(np.stack([left[:n], right[:n]], axis=1), -1, 1) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(sr)
        w.writeframes(pcm.tobytes())
    return path


def babble(seconds: float, seed: int = 0, sr: int = SR) -> np.ndarray:
    """Speech-like audio without a speech synthesiser: a glottal pulse train with a gliding
    pitch (90-220 Hz) through three moving formants, in syllables of about 4 a second."""
    rng = np.random.default_rng(seed)
    n = int(seconds * sr)
    t = np.arange(n) / sr
    f0 = 150 + 50 * np.sin(2 * np.pi * 0.3 * t + rng.uniform(0, 6)) + 20 * np.sin(2 * np.pi * 2.1 * t)
    phase = np.cumsum(f0 / sr)
    pulses = (np.diff(np.floor(phase), prepend=0) > 0).astype(np.float64)
    out = np.zeros(n)
    seg = int(0.25 * sr)  # formants move once per syllable: filter syllable by syllable
    for i in range(0, n, seg):
        chunk = pulses[i:i + seg]
        if chunk.size < 16:
            break
        fr = np.fft.rfftfreq(chunk.size, 1 / sr)
        shape = sum(np.exp(-0.5 * ((fr - rng.uniform(lo, hi)) / bw) ** 2)
                    for lo, hi, bw in ((300, 800, 80), (900, 2200, 120), (2300, 3000, 150)))
        voiced = np.fft.irfft(np.fft.rfft(chunk) * shape, chunk.size)
        env = np.sin(np.pi * np.arange(chunk.size) / chunk.size) ** 2 * (rng.random() > 0.15)
        out[i:i + chunk.size] = voiced * env
    return (0.5 * out / (np.max(np.abs(out)) + 1e-9)).astype(np.float32)


def crossfade(a: np.ndarray, b: np.ndarray, seconds: float, sr: int = SR) -> np.ndarray:
    """A DJ's transition: the end of `a` fades over `seconds` into the start of `b`."""
    k = int(seconds * sr)
    ramp = np.linspace(0, 1, k, dtype=np.float32)
    mid = a[-k:] * (1 - ramp) + b[:k] * ramp
    return np.concatenate([a[:-k], mid, b[k:]]).astype(np.float32)


def loop(x: np.ndarray, start_s: float, seconds: float, times: int, sr: int = SR) -> np.ndarray:
    """One passage of `x` repeated `times` times (a loop upload)."""
    return np.tile(x[int(start_s * sr):int((start_s + seconds) * sr)], times)


def score(seed: int, seconds: float) -> dict:
    """The notes `song(seed)` plays, drawn from the same generator in the same order (its
    tempo, key, chords and melody: (beat, part of the beat, parts per beat, midi note))."""
    rng = np.random.default_rng(seed)
    bpm = rng.uniform(80, 140)
    root = 48 + int(rng.integers(0, 12))
    scale = MAJOR if rng.random() < 0.5 else MINOR
    progression = rng.choice(7, size=4, replace=True)
    sizes = [_timbre(rng, k).size for k in (8, 6, 10)]
    voicing = [(0, 2, 4), (0, 2, 4, 6), (0, 3, 4), (0, 4, 7), (0, 2, 4, 8)][int(rng.integers(0, 5))]
    lead_steps = [2, 4, 4, 1][int(rng.integers(0, 4))]
    rng.uniform(40, 70), rng.uniform(40, 140), rng.uniform(150, 300)

    def skip_tone(size: int) -> None:  # what `_tone` draws
        rng.standard_normal(size)
        rng.uniform(0, 2 * np.pi, size)

    beat = 60.0 / bpm
    chords, melody = [], []
    for b in range(int(seconds / beat) + 1):
        bar, pos = divmod(b, 4)
        degree = int(progression[bar % 4])
        chord = [scale[(degree + k) % 7] + 12 * ((degree + k) // 7) for k in voicing]
        chords.append(chord)
        if pos == 0:
            for _ in chord:
                skip_tone(sizes[0])
        skip_tone(sizes[1])
        for part in range(lead_steps):
            if rng.random() < 0.3:
                continue
            step = int(rng.integers(0, 7))
            note = root + 24 + scale[step] + (12 if rng.random() < 0.2 else 0)
            skip_tone(sizes[2])
            melody.append((b, part, lead_steps, note))
    return {"bpm": bpm, "root": root, "chords": chords, "melody": melody}


def cover(seed: int, seconds: float, performer: int, sr: int = SR) -> np.ndarray:
    """`song(seed)`'s score, the same melody and chords, played by another band: its own
    instruments and drums, its own tempo (within 4%) that drifts as a band's does (a random walk
    of 0.6% a beat, within 5%), and human timing (+/-25 ms a note)."""
    sc = score(seed, seconds)
    band = np.random.default_rng(10_000 + performer)
    beat = 60.0 / (sc["bpm"] * band.uniform(0.96, 1.04))
    root = sc["root"]
    pad_t, bass_t, lead_t = _timbre(band, 8), _timbre(band, 6), _timbre(band, 10)
    n = int(seconds * sr)
    out = np.zeros(n + sr * 2)

    def add(start_s: float, sig: np.ndarray) -> None:
        i = int(max(0.0, start_s + band.normal(0, 0.025)) * sr)
        if i >= n:
            return
        m = min(sig.size, out.size - i)
        out[i:i + m] += sig[:m]

    walk, starts, lengths = 0.0, [], []
    for _ in range(len(sc["chords"]) + 1):
        walk = float(np.clip(walk + band.normal(0, 0.006), -0.05, 0.05))  # a band drifts; nothing pulls it back
        lengths.append(beat * np.exp(walk))
    starts = np.concatenate([[0.0], np.cumsum(lengths)])
    for b, chord in enumerate(sc["chords"]):
        start, beat = starts[b], lengths[b]
        if b % 2 == 0:  # the band strums twice a bar, an octave lower
            length = int(2 * beat * sr)
            pad = sum(_tone(_midi(root + c), length, band, pad_t, sr=sr) for c in chord)
            add(start, 0.08 * pad * _env(length, 0.1, 1.5 * beat, sr))
        ln = int(beat * sr)
        add(start, 0.25 * _tone(_midi(root - 12 + chord[0]), ln, band, bass_t, sr=sr) * _env(ln, 0.01, 0.5 * beat, sr))
        tk = np.arange(int(0.12 * sr)) / sr
        if b % 2 == 0:
            add(start, 0.4 * np.sin(2 * np.pi * (55 + 80 * np.exp(-tk * 25)) * tk) * np.exp(-tk * 18))
    for b, part, steps, note in sc["melody"]:
        beat = lengths[b]
        ln = int(beat / steps * sr)
        add(starts[b] + part / steps * beat, 0.12 * _tone(_midi(note), ln, band, lead_t, sr=sr) * _env(ln, 0.02, 0.3 * beat, sr))
    out = out[:n]
    return (0.8 * out / (np.max(np.abs(out)) + 1e-9)).astype(np.float32)


def reverb(x: np.ndarray, rt60: float = 1.2, wet: float = 0.4, seed: int = 0, sr: int = SR) -> np.ndarray:
    """A room: `x` convolved with exponentially decaying noise (60 dB down after `rt60` s), mixed
    `wet` with the dry signal; the level is kept."""
    rng = np.random.default_rng(seed)
    n = int(rt60 * sr)
    ir = rng.standard_normal(n) * 10 ** (-3 * np.arange(n) / n)
    ir /= np.sqrt(np.sum(ir ** 2))
    m = x.size + n - 1
    size = 1 << (m - 1).bit_length()
    tail = np.fft.irfft(np.fft.rfft(x, size) * np.fft.rfft(ir, size), size)[:x.size]
    out = (1 - wet) * x + wet * tail * (np.std(x) / (np.std(tail) + 1e-12))
    return (out * (np.max(np.abs(x)) / (np.max(np.abs(out)) + 1e-12))).astype(np.float32)
