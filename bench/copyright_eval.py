"""Copyright matcher on real music: recall per edit, false matches, calibration, cost.

    python bench/copyright_eval.py [--cache /var/tmp/copyright_eval] [--query-seconds 90]

The set is built here, from real recordings in Debian packages, and never stored in the
repository: `apt-get download` fetches the game soundtracks (supertuxkart-data, hedgewars-data)
into `--cache`, their OGG music is extracted, and every edit is made by sox or ffmpeg.

- Index: every other track of each soundtrack (sorted by name). SuperTuxKart's `*_fast`
  tracks are the game's own faster renditions of a base track: they are queries of that base
  (the edit "fast version (game)"), never negatives.
- Positives: a `--query-seconds` passage of each indexed track (from 20 s in), edited each way
  in EDITS; a loop and a DJ crossfade are made from it too.
- Negatives: the other tracks of the same soundtracks (same composers, same instruments, not in
  the index), speech (espeak-ng), tones, silence, near-silence and noise.
- Calibration: every query is also run with the acceptance thresholds relaxed to the floor,
  so the evidence of the best *wrong* candidate on every negative is recorded; the thresholds
  in `MatchParams` must sit above all of it.
- Cost: CPU seconds (this process and its ffmpeg children) per audio-minute for decode +
  fingerprint + lookup, measured on the queries of this run.

Results: bench/results/fingerprint/copyright-eval-latest.json (and a timestamped copy).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from firehose_mod.scan.fingerprint import (  # noqa: E402
    LONG_PARAMS, FingerprintIndex, MatchParams, describe_edit, fingerprint_file,
)

OUT = ROOT / "bench" / "results" / "fingerprint"
PACKAGES = {"supertuxkart-data": "usr/share/games/supertuxkart/data/music",
            "hedgewars-data": "usr/share/games/hedgewars/Data/Music"}
SR = 44100
SPEECH = ("Hello everyone and welcome back to the stream. Today we are going to look at the new levels, "
          "talk about what changed in the last update and answer a few of your questions from the chat. "
          "Remember to like and subscribe, it really helps the channel. ") * 6

# name -> sox effect chain applied to the passage (44.1 kHz stereo WAV); None: made in code.
EDITS: dict[str, list[str] | None] = {
    "exact (mp3 128k)": [],
    "mp3 32k mono": [],
    "excerpt 15 s": ["trim", "30", "15"],
    "nightcore x1.2": ["speed", "1.2"],
    "nightcore x1.25 +bass": ["speed", "1.25", "bass", "+8"],
    "nightcore x1.35": ["speed", "1.35"],
    "slowed x0.9 +reverb": ["speed", "0.9", "reverb", "70"],
    "slowed x0.8 +reverb": ["speed", "0.8", "reverb", "80", "50", "100"],
    "slowed x0.75 +reverb": ["speed", "0.75", "reverb", "90", "50", "100"],
    "tempo +15%": ["tempo", "-m", "1.15"],
    "tempo -15%": ["tempo", "-m", "0.85"],
    "pitch +4 st": ["pitch", "400"],
    "pitch -4 st": ["pitch", "-400"],
    "reverb": ["reverb", "80", "50", "100"],
    "bass boost +15 dB": ["bass", "+15", "gain", "-n", "-1"],
    "heavy compression": ["compand", "0.005,0.1", "6:-70,-60,-20,-10,-5", "-6", "-90", "0.02", "gain", "-n", "-1"],
    "stereo to mono fold": ["remix", "1,2"],
    "white noise 10 dB SNR": None,
    "voice over": None,
    "DJ crossfade": None,
    "loop of 20 s x4": None,
}


def run(cmd: list[str]) -> None:
    subprocess.run(cmd, check=True, stdin=subprocess.DEVNULL, capture_output=True)


def cpu_now() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def soundtracks(cache: Path) -> dict[str, list[Path]]:
    """{package: [ogg files]}, downloading and extracting the packages once into `cache`."""
    out = {}
    for pkg, sub in PACKAGES.items():
        root = cache / pkg
        music = root / sub
        if not music.is_dir():
            debs = list(cache.glob(f"{pkg}_*.deb"))
            if not debs:
                run(["bash", "-c", f"cd {cache} && apt-get download {pkg}"])
                debs = list(cache.glob(f"{pkg}_*.deb"))
            root.mkdir(parents=True, exist_ok=True)
            run(["bash", "-c", f"dpkg-deb --fsys-tarfile {debs[0]} | tar -x -C {root} --wildcards '*/[Mm]usic/*.ogg'"])
        out[pkg] = sorted(music.glob("*.ogg"), key=lambda p: p.name.lower())
    return out


def base_name(path: Path) -> str:
    """SuperTuxKart's fast renditions (`x_fast`, `farm_f`) and Hedgewars' sudden-death take
    (`olympics_sd`) belong with their base track."""
    stem = path.stem.lower()
    for suffix in ("_fast", "_f", "_sd"):
        if stem.endswith(suffix):
            return stem[: -len(suffix)]
    return stem


def split(tracks: dict[str, list[Path]]) -> tuple[list[Path], list[Path], list[tuple[Path, Path]]]:
    """(indexed, held-out negatives, [(fast rendition, its indexed base)])."""
    indexed, negatives, variants = [], [], []
    for files in tracks.values():
        bases = {}
        for p in files:
            bases.setdefault(base_name(p), []).append(p)
        for i, name in enumerate(sorted(bases)):
            group = sorted(bases[name], key=lambda p: len(p.stem))
            if i % 2 == 0:
                indexed.append(group[0])
                variants += [(v, group[0]) for v in group[1:]]
            else:
                negatives += group
    return indexed, negatives, variants


def duration(path: Path) -> float:
    out = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0", str(path)],
                         capture_output=True, text=True, check=True).stdout
    return float(out.strip())


def make_queries(d: Path, track: Path, other: Path, seconds: float, n: int) -> dict[str, tuple[Path, float, float]]:
    """edit -> (file, seconds of `track` it holds, expected time scale: query s per reference s)."""
    start = min(20.0, max(0.0, duration(track) - seconds))
    passage = d / f"{n}-passage.wav"
    run(["ffmpeg", "-v", "error", "-y", "-ss", str(start), "-t", str(seconds), "-i", str(track), "-ac", "2",
         "-ar", str(SR), str(passage)])
    held = min(seconds, duration(passage))
    out = {}
    for name, chain in EDITS.items():
        dst = d / f"{n}-{len(out)}.wav"
        if chain is not None:
            if name.startswith("exact") or name.startswith("mp3"):
                dst = dst.with_suffix(".mp3")
                kbps, ch = ("128", "2") if name.startswith("exact") else ("32", "1")
                run(["ffmpeg", "-v", "error", "-y", "-i", str(passage), "-ac", ch, "-b:a", f"{kbps}k", str(dst)])
            else:
                run(["sox", str(passage), str(dst), *chain])
        elif name.startswith("white noise"):
            run(["sox", str(passage), str(dst), "gain", "-n", "-10"])  # RMS is ~10 dB below peak for music
            noise = d / f"{n}-noise.wav"
            run(["sox", "-n", "-r", str(SR), "-c", "2", str(noise), "synth", str(held), "whitenoise", "gain", "-30"])
            mixed = d / f"{n}-mixed.wav"
            run(["sox", "-m", str(dst), str(noise), str(mixed)])
            dst = mixed
        elif name == "voice over":
            speech = d / f"{n}-speech.wav"
            run(["espeak-ng", "-s", "150", "-w", str(speech), SPEECH[:900]])
            run(["ffmpeg", "-v", "error", "-y", "-i", str(passage), "-i", str(speech), "-filter_complex",
                 "[0]volume=0.6[m];[1]aresample=44100,volume=2.5[v];[m][v]amix=inputs=2:duration=first:normalize=0",
                 "-ac", "2", str(dst)])
        elif name == "DJ crossfade":
            # The reference's last 30 s of the passage fade over 8 s into another (unindexed) track.
            run(["ffmpeg", "-v", "error", "-y", "-ss", str(max(0.0, held - 30)), "-i", str(passage), "-ss", "30",
                 "-t", "40", "-i", str(other), "-filter_complex", "[0]aformat=sample_rates=44100:channel_layouts=stereo[a];"
                 "[1]aformat=sample_rates=44100:channel_layouts=stereo[b];[a][b]acrossfade=d=8", str(dst)])
            held = 30.0 - 4.0  # about half the fade is still recognisable
        elif name.startswith("loop"):
            run(["sox", str(passage), str(dst), "trim", "10", "20", "repeat", "3"])
        scale = {"nightcore x1.2": 1 / 1.2, "nightcore x1.25 +bass": 1 / 1.25, "nightcore x1.35": 1 / 1.35,
                 "slowed x0.9 +reverb": 1 / 0.9, "slowed x0.8 +reverb": 1 / 0.8, "slowed x0.75 +reverb": 1 / 0.75,
                 "tempo +15%": 1 / 1.15, "tempo -15%": 1 / 0.85}.get(name, 1.0)
        # Seconds of the query that hold the reference (a speed-up shortens them).
        shared = {"excerpt 15 s": 15.0, "DJ crossfade": 26.0, "loop of 20 s x4": 20.0}.get(name, held * scale)
        out[name] = (dst, shared, scale)
        held = min(seconds, duration(passage))
    return out


def negatives_extra(d: Path) -> dict[str, Path]:
    """Speech, tones, silence, near-silence and noise: none of them may match anything."""
    out = {}
    out["speech (espeak-ng)"] = d / "speech.wav"
    run(["espeak-ng", "-s", "160", "-w", str(out["speech (espeak-ng)"]), SPEECH])
    out["speech, two voices"] = d / "speech2.wav"
    run(["espeak-ng", "-v", "en-us+f3", "-p", "70", "-s", "140", "-w", str(out["speech, two voices"]), SPEECH[::-1]])
    for name, args in {
        "tone 440 Hz": ["synth", "60", "sine", "440"],
        "sweep 100-4000 Hz": ["synth", "60", "sine", "100-4000"],
        "DTMF-like two tones": ["synth", "60", "sine", "697", "sine", "1209", "remix", "1,2"],
        "square 220 Hz": ["synth", "60", "square", "220", "gain", "-12"],
        "silence": ["trim", "0", "60"],
        "pink noise": ["synth", "60", "pinknoise", "gain", "-10"],
        "near-silence (-70 dB hiss)": ["synth", "60", "whitenoise", "gain", "-70"],
    }.items():
        p = d / f"{name.split()[0]}-{len(out)}.wav"
        run(["sox", "-n", "-r", "44100", "-c", "2", str(p), *args])
        out[name] = p
    return out


def long_upload(d: Path, files: list[Path], hours: float) -> Path:
    """A DJ-set-length upload: the soundtracks played back to back, again and again, as one mp3."""
    listing = d / "set.txt"
    total, lines, same = 0.0, [], []
    for i, p in enumerate(files):  # one format for all: the concat demuxer cannot mix sample rates
        same.append(d / f"set-{i}.wav")
        run(["ffmpeg", "-v", "error", "-y", "-i", str(p), "-ac", "1", "-ar", "22050", str(same[-1])])
    while total < hours * 3600:
        for p in same:
            lines.append(f"file '{p}'")
            total += duration(p)
            if total >= hours * 3600:
                break
    listing.write_text("\n".join(lines))
    out = d / "set.mp3"
    run(["ffmpeg", "-v", "error", "-y", "-f", "concat", "-safe", "0", "-i", str(listing), "-t", str(hours * 3600),
         "-ac", "1", "-ar", "22050", "-b:a", "64k", str(out)])
    return out


def long_check(d: Path, index: FingerprintIndex, indexed: list[Path], held_out: list[Path], hours: float) -> dict:
    """CPU (this process and ffmpeg) to fingerprint and look up one `hours`-long upload."""
    path = long_upload(d, indexed + held_out, hours)
    c0 = cpu_now()
    fp = fingerprint_file(path, LONG_PARAMS)  # what the scanner reads: up to 4 hours
    c1 = cpu_now()
    got = index.query(fp, limit=1000)
    c2 = cpu_now()
    out = {"hours": fp.duration / 3600, "fingerprint_cpu_s": c1 - c0, "lookup_cpu_s": c2 - c1,
           "total_cpu_s": c2 - c0, "triplets": len(fp), "refs_found": len({m.ref_id for m in got}),
           "refs_in_it": len(indexed), "time_scales_found": sorted({m.time_scale for m in got})[:3]}
    print(f"  {hours} h upload: {out}", flush=True)
    return out


RELAXED = dict(min_matches=6, min_seconds=0.0, min_pitch_bands=0, min_segment_matches=3)


def evidence(index: FingerprintIndex, fp, relaxed: MatchParams) -> list[dict]:
    """Every candidate the relaxed query accepts, with what the real thresholds look at."""
    return [{"ref": m.ref_id, "matches": m.matches, "seconds": m.seconds_matched, "bands": m.pitch_bands,
             "score": m.score, "jitter_ms": m.jitter_ms} for m in index.query(fp, params=relaxed, limit=10)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", type=Path, default=Path("/var/tmp/copyright_eval"))
    ap.add_argument("--query-seconds", type=float, default=90.0)
    ap.add_argument("--limit", type=int, default=0, help="index at most this many tracks (0: all)")
    ap.add_argument("--long-hours", type=float, default=3.0, help="also time one upload this long (0: skip)")
    ap.add_argument("--only-long", action="store_true", help="only the long upload (the index is built as usual)")
    args = ap.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    for tool in ("sox", "ffmpeg", "espeak-ng"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} not found: apt-get install sox ffmpeg espeak-ng")
    tracks = soundtracks(args.cache)
    indexed, held_out, fast = split(tracks)
    if args.limit:
        indexed = indexed[:args.limit]
        fast = [(v, b) for v, b in fast if b in indexed]
    print(f"indexed {len(indexed)}, held-out negatives {len(held_out)}, fast renditions {len(fast)}", flush=True)

    index = FingerprintIndex()
    c0, audio = cpu_now(), 0.0
    for p in indexed:
        fp = fingerprint_file(p)
        audio += fp.duration
        index.add(p.stem, fp)
    index.compact()
    ref_cost = (cpu_now() - c0) / (audio / 60)
    params = index.params
    relaxed = replace(params, **RELAXED)
    cost = {"fingerprint_cpu_s": 0.0, "lookup_cpu_s": 0.0, "audio_s": 0.0}

    def check(path: Path):
        c0 = cpu_now()
        fp = fingerprint_file(path)
        c1 = cpu_now()
        got = index.query(fp)
        c2 = cpu_now()
        cost["fingerprint_cpu_s"] += c1 - c0
        cost["lookup_cpu_s"] += c2 - c1
        cost["audio_s"] += fp.duration
        return fp, got

    rows, per_edit = [], {}
    if args.only_long:
        with tempfile.TemporaryDirectory() as tmp:
            long_run = long_check(Path(tmp), index, indexed, held_out, args.long_hours)
        text = json.dumps({"long_upload": long_run, "index": index.stats(), "load_average": list(os.getloadavg())},
                          indent=2)
        (OUT / "copyright-eval-long-latest.json").write_text(text)
        print(text)
        return
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        for n, track in enumerate(indexed):
            other = held_out[n % len(held_out)]
            for edit, (path, shared, scale) in make_queries(d, track, other, args.query_seconds, n).items():
                fp, got = check(path)
                hit = [m for m in got if m.ref_id == track.stem]
                wrong = [m.ref_id for m in got if m.ref_id != track.stem]
                row = {"edit": edit, "ref": track.stem, "matched": bool(hit), "wrong": wrong, "shared": shared,
                       "expected_scale": round(scale, 4)}
                if hit:
                    m = hit[0]
                    row.update(seconds=m.seconds_matched, time_scale=m.time_scale, pitch=m.pitch_shift_semitones,
                               matches=m.matches, bands=m.pitch_bands, jitter_ms=m.jitter_ms,
                               query_start=m.query_start, ref_start=m.ref_start, edit_seen=describe_edit(
                                   m.time_scale, m.pitch_shift_semitones))
                # The best wrong candidate under relaxed thresholds: what calibration must stay above.
                row["wrong_evidence"] = [e for e in evidence(index, fp, relaxed) if e["ref"] != track.stem][:1]
                rows.append(row)
                e = per_edit.setdefault(edit, {"queries": 0, "matched": 0, "wrong": 0, "seconds_ratio": [],
                                               "scale_error": []})
                e["queries"] += 1
                e["matched"] += bool(hit)
                e["wrong"] += len(wrong)
                if hit:
                    e["seconds_ratio"].append(hit[0].seconds_matched / shared)
                    e["scale_error"].append(abs(hit[0].time_scale / scale - 1))
            for p in d.glob(f"{n}-*"):
                p.unlink()
            print(f"  {n + 1}/{len(indexed)} {track.stem}: "
                  f"{sum(r['matched'] for r in rows if r['ref'] == track.stem)}/{len(EDITS)}", flush=True)
        for variant, base in fast:
            fp, got = check(variant)
            hit = [m for m in got if m.ref_id == base.stem]
            e = per_edit.setdefault("fast version (game's own)", {"queries": 0, "matched": 0, "wrong": 0,
                                                                   "seconds_ratio": [], "scale_error": []})
            e["queries"] += 1
            e["matched"] += bool(hit)
            e["wrong"] += sum(m.ref_id != base.stem for m in got)
            rows.append({"edit": "fast version (game's own)", "ref": base.stem, "query": variant.name,
                         "matched": bool(hit), "wrong": [m.ref_id for m in got if m.ref_id != base.stem],
                         **({"seconds": hit[0].seconds_matched, "time_scale": hit[0].time_scale,
                             "pitch": hit[0].pitch_shift_semitones} if hit else {})})
        negs = [{"kind": "same soundtrack, not indexed", "name": p.name, "path": p} for p in held_out]
        negs += [{"kind": "speech/tones/silence", "name": k, "path": v} for k, v in negatives_extra(d).items()]
        false, neg_evidence = [], []
        for neg in negs:
            fp, got = check(neg["path"])
            ev = evidence(index, fp, relaxed)
            neg_evidence.append({"kind": neg["kind"], "name": neg["name"], "triplets": len(fp),
                                 "best": ev[0] if ev else None})
            if got:
                false.append({"name": neg["name"], "matches": [(m.ref_id, m.matches, m.seconds_matched,
                                                                m.pitch_bands) for m in got]})
            print(f"  negative {neg['name']}: {'FALSE MATCH ' + str(got) if got else 'none'}", flush=True)
        long_run = long_check(d, index, indexed, held_out, args.long_hours) if args.long_hours else {}
    for e in per_edit.values():
        r, s = e.pop("seconds_ratio"), e.pop("scale_error")
        e["recall"] = e["matched"] / e["queries"]
        e["median_seconds_ratio"] = float(np.median(r)) if r else None
        e["max_scale_error"] = float(np.max(s)) if s else None
    wrong_pos = [r["wrong_evidence"][0] for r in rows if r.get("wrong_evidence")]
    calib = {
        "thresholds": {k: getattr(params, k) for k in ("min_matches", "min_seconds", "min_pitch_bands")},
        "negatives_max": {k: max([e["best"][k] for e in neg_evidence if e["best"]] + [0])
                          for k in ("matches", "seconds", "bands")},
        "wrong_candidates_on_positives_max": {k: max([w[k] for w in wrong_pos] + [0])
                                              for k in ("matches", "seconds", "bands")},
        "positives_min": {k: min((r[k] for r in rows if r.get("matched") and k in r), default=None)
                          for k in ("matches", "seconds", "bands")},
    }
    result = {
        "indexed": [p.name for p in indexed], "held_out": [p.name for p in held_out],
        "query_seconds": args.query_seconds, "per_edit": per_edit,
        "false_matches": false, "negatives": len(negs), "calibration": calib,
        "cost": {**cost, "cpu_s_per_audio_min_fingerprint": cost["fingerprint_cpu_s"] / (cost["audio_s"] / 60),
                 "cpu_ms_per_query_min_lookup": 1000 * cost["lookup_cpu_s"] / (cost["audio_s"] / 60),
                 "cpu_s_per_audio_min_all_in": (cost["fingerprint_cpu_s"] + cost["lookup_cpu_s"]) / (cost["audio_s"] / 60),
                 "reference_fingerprint_cpu_s_per_audio_min": ref_cost},
        "index": index.stats(), "load_average": list(os.getloadavg()), "long_upload": long_run,
        "negative_evidence": neg_evidence, "rows": rows,
    }
    OUT.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    text = json.dumps(result, indent=2, default=str)
    (OUT / f"copyright-eval-{stamp}.json").write_text(text)
    (OUT / "copyright-eval-latest.json").write_text(text)
    print(json.dumps({k: result[k] for k in ("per_edit", "false_matches", "calibration", "cost", "index",
                                             "long_upload")},
                     indent=2, default=str))


if __name__ == "__main__":
    main()
