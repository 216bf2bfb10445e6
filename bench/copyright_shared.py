"""Shared passages and digital silence on real music: a match claims only the seconds it covers.

    python bench/copyright_shared.py [--cache /var/tmp/copyright_eval] [--pairs 8]

For pairs (A, B) of tracks from bench/copyright_eval.py's set:
- the index holds A, and "B with A's intro": B preceded by A's first 15 s (a reused intro, a sample),
  and "A with silence": A with 60 s of digital silence spliced in at 30 s;
- the queries are a copy of A (mp3) and a copy of B (mp3).
Each claim's seconds are compared with what the two recordings really share.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from copyright_eval import OUT, duration, run, soundtracks, split  # noqa: E402

from firehose_mod.scan.fingerprint import FingerprintIndex, fingerprint_file  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", type=Path, default=Path("/var/tmp/copyright_eval"))
    ap.add_argument("--pairs", type=int, default=8)
    args = ap.parse_args()
    indexed, held_out, _ = split(soundtracks(args.cache))
    long = [p for p in indexed if duration(p) >= 90][:args.pairs]
    others = [p for p in held_out if duration(p) >= 60]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        for n, (a, b) in enumerate(zip(long, others)):
            fmt = ["-ar", "44100", "-ac", "2"]
            intro_b = d / f"{n}-introB.wav"
            run(["ffmpeg", "-v", "error", "-y", "-t", "15", "-i", str(a), "-i", str(b), "-filter_complex",
                 "[0]aformat=sample_rates=44100:channel_layouts=stereo[x];"
                 "[1]aformat=sample_rates=44100:channel_layouts=stereo[y];[x][y]concat=n=2:v=0:a=1", *fmt, str(intro_b)])
            silent_a = d / f"{n}-silentA.wav"
            run(["ffmpeg", "-v", "error", "-y", "-i", str(a), "-filter_complex",
                 "[0]aformat=sample_rates=44100:channel_layouts=stereo,asplit[p][q];[p]atrim=0:30[h];"
                 "[q]atrim=30,asetpts=PTS-STARTPTS[t];anullsrc=r=44100:cl=stereo,atrim=0:60[s];"
                 "[h][s][t]concat=n=3:v=0:a=1", *fmt, str(silent_a)])
            index = FingerprintIndex()
            index.add("A", fingerprint_file(a))
            index.add("B with A's intro", fingerprint_file(intro_b))
            index.add("A with 60 s of silence", fingerprint_file(silent_a))
            for name, src in (("copy of A", a), ("copy of B", b)):
                q = d / f"{n}-{name[-1]}.mp3"
                run(["ffmpeg", "-v", "error", "-y", "-i", str(src), "-b:a", "128k", str(q)])
                got = index.query(fingerprint_file(q))
                rows.append({"pair": [a.name, b.name], "query": name, "query_seconds": round(duration(q), 1),
                             "claims": {m.ref_id: {"seconds": m.seconds_matched, "query": [m.query_start, m.query_end],
                                                   "ref": [m.ref_start, m.ref_end]} for m in got}})
                print(json.dumps(rows[-1]), flush=True)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "shared-latest.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
