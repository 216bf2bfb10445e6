"""ffmpeg and fpcalc read the upload and nothing else, and a long upload decodes in bounded memory.

An upload is a stranger's file. Saved as `.mp3`, an HLS playlist or an ffconcat script is
still opened by its content: without a guard ffmpeg follows it to any file on the labeler's
disk (another user's cached upload, a reference track of the catalogue) and fingerprints that.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from firehose_mod.scan.fingerprint import (
    ChromaprintError, DecodeError, chromaprint_file, fingerprint_file, fingerprint_samples,
)
from firehose_mod.scan.fingerprint.extract import fingerprint_stream

from tests import media as M


@pytest.fixture(scope="module")
def disk(tmp_path_factory) -> Path:
    """A private audio file (say another user's cached upload) and playlists that point at it."""
    d: Path = tmp_path_factory.mktemp("uploads")
    secret = M.write_wav(d / "private.wav", M.song(11, 12))
    M.mp3(secret, d / "private.mp3", kbps=64)
    (d / "hls.mp3").write_text(f"#EXTM3U\n#EXT-X-TARGETDURATION:12\n#EXTINF:12.0,\n{d / 'private.mp3'}\n"
                               "#EXT-X-ENDLIST\n")
    (d / "hls-passwd.mp3").write_text("#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1.0,\n/etc/passwd\n#EXT-X-ENDLIST\n")
    (d / "concat-relative.mp3").write_text("ffconcat version 1.0\nfile private.wav\n")
    (d / "concat-absolute.mp3").write_text(f"ffconcat version 1.0\nfile {secret}\n")
    return d


PLAYLISTS = ["hls.mp3", "hls-passwd.mp3", "concat-relative.mp3", "concat-absolute.mp3"]


@pytest.mark.parametrize("name", PLAYLISTS)
def test_a_playlist_upload_is_not_followed_to_files_on_disk(disk, name):
    with pytest.raises(DecodeError):
        fingerprint_file(disk / name)


@pytest.mark.parametrize("name", ["hls.mp3", "concat-relative.mp3"])
def test_chromaprint_does_not_follow_a_playlist_either(disk, name):
    with pytest.raises(ChromaprintError):
        chromaprint_file(disk / name)


def test_real_audio_still_decodes_through_the_guard(disk, tmp_path):
    assert fingerprint_file(disk / "private.mp3").duration == pytest.approx(12, abs=0.2)
    chroma, duration = chromaprint_file(disk / "private.mp3")
    assert chroma.size > 50 and duration == pytest.approx(12, abs=0.2)
    m4a = M.ffmpeg(disk / "private.wav", tmp_path / "late-moov.m4a", "-c:a", "aac", "-b:a", "64k")
    assert fingerprint_file(m4a).duration == pytest.approx(12, abs=0.2)  # its index at the end: seeking works
    odd = tmp_path / "http:odd name.mp3"  # a local name that looks like a URL is still a local file
    odd.write_bytes((disk / "private.mp3").read_bytes())
    assert fingerprint_file(odd).duration == pytest.approx(12, abs=0.2)


def test_fingerprints_are_the_same_whatever_the_block_size():
    x = M.song(23, 70, sr=8000)
    whole = fingerprint_samples(x)
    pieces = np.array_split(x, 37)  # ragged chunks, as a pipe delivers them
    for block_seconds in (2.0, 10.0, 64.0):
        fp = fingerprint_stream(iter(pieces), block_seconds=block_seconds)
        assert fp.duration == whole.duration and fp.peaks == whole.peaks, block_seconds
        for field in ("t", "f", "d1", "d2", "r", "span"):
            np.testing.assert_allclose(getattr(fp, field), getattr(whole, field), atol=1e-4, err_msg=field)


def test_a_long_file_decodes_in_bounded_memory(tmp_path):
    """20 minutes (more than the 15 the fingerprint reads): peak RSS stays far below 700 MB."""
    long = tmp_path / "long.wav"
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-f", "lavfi", "-i", "anoisesrc=d=1200:a=0.3:r=8000",
                    "-ac", "1", "-y", str(long)], check=True)
    # VmHWM, not ru_maxrss: on Linux the latter keeps the high-water mark of the forking pytest.
    probe = textwrap.dedent(f"""
        import json, re
        from firehose_mod.scan.fingerprint import fingerprint_file
        def hwm_mb():
            with open("/proc/self/status") as f:
                return int(re.search(r"VmHWM:\\s+(\\d+) kB", f.read()).group(1)) / 1024
        before = hwm_mb()
        fp = fingerprint_file({str(long)!r})
        print(json.dumps({{"duration": fp.duration, "before_mb": before, "after_mb": hwm_mb()}}))
    """)
    out = json.loads(subprocess.run([sys.executable, "-c", probe], capture_output=True, check=True,
                                    text=True).stdout)
    assert out["duration"] == pytest.approx(900, abs=1)
    assert out["after_mb"] - out["before_mb"] < 120, out  # was 600 MB when the whole file was in memory
