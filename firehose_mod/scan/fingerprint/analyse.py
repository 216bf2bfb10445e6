"""One pass over an audio file: everything the catalogue keeps about it (process-pool safe)."""

from __future__ import annotations

import hashlib
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from firehose_mod.scan.fingerprint.chromaprint import ChromaprintError, chromaprint_file
from firehose_mod.scan.fingerprint.extract import DEFAULT_PARAMS, Fingerprint, FingerprintParams, ffmpeg_input, fingerprint_file


@dataclass(frozen=True)
class AudioAnalysis:
    """A file's landmark fingerprint, chromaprint (None if fpcalc failed), sha256 and tags."""

    fingerprint: Fingerprint
    chromaprint: np.ndarray | None
    sha256: str
    duration: float
    title: str | None = None
    artist: str | None = None


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def probe_tags(path: str | Path) -> dict[str, str]:
    """Title and artist tags, if ffprobe finds any (lower-cased keys); {} on any failure."""
    proc = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "format_tags=title,artist", "-of", "json", *ffmpeg_input(path)],
        capture_output=True, check=False, timeout=60,
    )
    try:
        tags = json.loads(proc.stdout).get("format", {}).get("tags", {})
    except ValueError:
        return {}
    return {k.lower(): str(v) for k, v in tags.items()}


def analyse_file(path: str | Path, params: FingerprintParams = DEFAULT_PARAMS, *, tags: bool = False) -> AudioAnalysis:
    """Fingerprint, chromaprint and hash `path`. Raises `DecodeError` when it is not decodable audio."""
    fp = fingerprint_file(path, params)
    try:
        chroma, _ = chromaprint_file(path)
    except ChromaprintError:
        chroma = None  # the landmark index is the matcher; the chromaprint is a bonus
    found = probe_tags(path) if tags else {}
    return AudioAnalysis(fp, chroma, sha256_file(path), fp.duration, found.get("title"), found.get("artist"))
