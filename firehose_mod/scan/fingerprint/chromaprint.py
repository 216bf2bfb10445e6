"""Chromaprint (`fpcalc -raw`): a cheap second opinion for exact duplicates.

Two encodings of one recording have raw chromaprints whose 32-bit items differ in few bits
once aligned; different recordings differ in about half. The landmark index finds edits
and excerpts; this only answers "is it the same recording, start to end".
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np

from firehose_mod.scan.fingerprint.extract import decode_command

_RATE = 11025  # Chromaprint's own working rate: fpcalc would resample to it anyway
DUPLICATE_MAX_BIT_ERROR = 0.15  # same recording re-encoded is typically < 0.1, unrelated ~0.5


class ChromaprintError(Exception):
    """fpcalc failed or is missing; the message says which."""


def chromaprint_file(path: str | Path, *, length: int = 120) -> tuple[np.ndarray, float]:
    """(raw fingerprint as uint32, seconds fingerprinted) of the first `length` seconds.

    fpcalc is given PCM, never the file: it would open an upload with libavformat and no
    whitelist, so a playlist saved as `.mp3` would make it read other files. The guarded ffmpeg
    of `extract.ffmpeg_input` decodes instead, at the rate and layout fpcalc itself would use.
    """
    try:
        decoded = subprocess.run(decode_command(path, _RATE, length, "s16le"), stdin=subprocess.DEVNULL,
                                 capture_output=True, check=False, timeout=120)
    except FileNotFoundError as exc:
        raise ChromaprintError("ffmpeg not found: install FFmpeg (Debian: ffmpeg)") from exc
    if decoded.returncode != 0 or not decoded.stdout:
        why = decoded.stderr.decode("utf-8", "replace").strip().splitlines()
        raise ChromaprintError(f"ffmpeg could not decode {path}: {why[-1][:300] if why else 'no audio'}")
    try:
        proc = subprocess.run(["fpcalc", "-raw", "-json", "-length", str(length), "-format", "s16le", "-rate",
                               str(_RATE), "-channels", "1", "-"], input=decoded.stdout, capture_output=True,
                              check=False, timeout=120)
    except FileNotFoundError as exc:
        raise ChromaprintError("fpcalc not found: install Chromaprint's tools (Debian: libchromaprint-tools)") from exc
    # fpcalc 1.5 exits non-zero with "Error decoding audio frame (End of file)" on input shorter
    # than `length`, after printing a good fingerprint: trust the output when it is there.
    try:
        data = json.loads(proc.stdout)
    except ValueError:
        data = None
    if not isinstance(data, dict) or "fingerprint" not in data:
        raise ChromaprintError(f"fpcalc failed on {path}: {proc.stderr.decode('utf-8', 'replace').strip()[:300]}")
    seconds = len(decoded.stdout) / (2 * _RATE)  # fpcalc reports 0 for raw input
    return np.asarray(data.get("fingerprint", []), dtype=np.int64).astype(np.uint32), seconds


def bit_error_rate(a: np.ndarray, b: np.ndarray, *, max_shift: int = 8, min_overlap: int = 20) -> float:
    """Lowest fraction of differing bits over alignments within +/- `max_shift` items (1.0 if too short)."""
    a, b = np.asarray(a, np.uint32), np.asarray(b, np.uint32)
    best = 1.0
    for shift in range(-max_shift, max_shift + 1):
        x, y = (a[shift:], b) if shift >= 0 else (a, b[-shift:])
        n = min(x.size, y.size)
        if n < min_overlap:
            continue
        bits = np.unpackbits((x[:n] ^ y[:n]).view(np.uint8)).sum()
        best = min(best, float(bits) / (32 * n))
    return best


def is_duplicate(a: np.ndarray, b: np.ndarray, *, threshold: float = DUPLICATE_MAX_BIT_ERROR) -> bool:
    """True when `a` and `b` are the same recording (re-encoded, re-tagged, re-uploaded)."""
    return bit_error_rate(a, b) <= threshold
