"""The soak's media: real covers and audio clips, a local host serving them, and what the scanners match.

Covers are tests/test_cover.py's `artwork` (gradients, shapes, text) saved as JPEG; clips are
tests/media.py's music-like `song`s encoded to mp3 by ffmpeg. Both are made once and cached in
`bench/results/soak-media/`. Cover 0 goes on the operator's PDQ blocklist (value `porn`) and clip 0
into the copyright catalogue, so tracks that use them are labeled, their updates to other media
negate those labels, and their deletes negate them too: a trickle of labels and negations all
through the soak, besides the burst.
"""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE.parent) not in sys.path:
    sys.path.insert(0, str(HERE.parent))

from tests.fakes.media_server import MediaServer  # noqa: E402

CLIP_SECONDS = 40.0  # the default policy labels a catalogue match of 30 s or more


def make_media(cache: Path, covers: int, clips: int) -> dict[str, Path]:
    """Cover JPEGs and mp3 clips, made once: {url path: file}."""
    from tests.media import mp3, song, write_wav
    from tests.test_cover import artwork

    cache.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    for k in range(covers):
        path = cache / f"cover-{k}.jpg"
        if not path.exists():
            buf = io.BytesIO()
            artwork(100 + k).save(buf, format="JPEG", quality=85)
            path.write_bytes(buf.getvalue())
        files[f"/cover/{k}.jpg"] = path
    for k in range(clips):
        path = cache / f"clip-{k}.mp3"
        if not path.exists():
            wav = write_wav(cache / f"clip-{k}.wav", song(200 + k, CLIP_SECONDS))
            mp3(wav, path, 96)
            wav.unlink()
        files[f"/audio/{k}.mp3"] = path
    return files


def media_server(files: dict[str, Path]) -> MediaServer:
    """A started MediaServer (threaded, 127.0.0.1:0) answering every path in `files`."""
    srv = MediaServer()
    for route, path in files.items():
        srv.files[route] = (path.read_bytes(), "image/jpeg" if route.endswith(".jpg") else "audio/mpeg")
    return srv.start()


def pdq_blocklist(cover: Path, dest: Path) -> Path:
    """A PDQ blocklist with `cover`'s hash, value porn."""
    from firehose_mod.scan.cover import CoverLimits, analyse_cover

    pdq = analyse_cover(str(cover), CoverLimits(), None, True).pdq[0]
    dest.write_text(f"{pdq} porn  # soak: cover 0\n")
    return dest


def import_reference(config: Path, clip: Path, env: dict) -> str:
    """`firehose-mod catalogue add CLIP` into the soak's database, as an operator would."""
    proc = subprocess.run([sys.executable, "-m", "firehose_mod", "--config", str(config), "catalogue", "add", str(clip)],
                          env=env, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise SystemExit(f"catalogue add failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return proc.stdout.strip()[-500:]
