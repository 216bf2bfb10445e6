"""Audio fingerprint benchmark: cost per audio-minute, lookup time at catalogue scale, match rates.

    python bench/fingerprint_bench.py --catalogue 1000 --seconds 180 --refs 12 --unrelated 12

1. Catalogue: N generated tracks (tests/media.py songs), fingerprinted straight from samples
   made at 8 kHz (generation dominates; decoding is measured in step 3), stored in a real
   SQLite catalogue (cached under bench/results/fingerprint/ and reused).
2. Start-up: load the whole catalogue from SQLite into the in-memory index; RAM of the index.
3. Queries: `--refs` catalogue tracks re-made at 22.05 kHz as WAV files, each edited with
   ffmpeg (mp3 32 kbps, excerpts, embedded, pitch, tempo, speed, noise); every query is
   decoded by ffmpeg and fingerprinted (CPU of this process + ffmpeg children), then looked up.
   Unrelated tracks (not in the catalogue) and silence count false matches.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import anyio
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from firehose_mod.scan.copyright import load_index  # noqa: E402
from firehose_mod.scan.fingerprint import (  # noqa: E402
    FINGERPRINT_VERSION, FingerprintIndex, chromaprint_file, fingerprint_file, fingerprint_samples, index_entries,
)
from firehose_mod.store.catalogue import CatalogueStore  # noqa: E402
from tests import media as M  # noqa: E402

OUT = ROOT / "bench" / "results" / "fingerprint"
AUDD_USD_PER_HOUR = 1.50


def _catalogue_track(seed: int, seconds: float) -> tuple[int, bytes, int, float, float]:
    x = M.song(seed, seconds, sr=8000)
    t1 = time.process_time()
    fp = fingerprint_samples(x)
    e = index_entries(fp)
    return seed, e.to_bytes(), len(e), fp.duration, time.process_time() - t1


async def build_catalogue(path: Path, n: int, seconds: float) -> dict:
    store = await CatalogueStore.open(path, synchronous="NORMAL")
    try:
        have = {r.ref for r in await store.list()}
        todo = [s for s in range(1, n + 1) if f"bench:{s}" not in have]
        fp_cpu, t0 = 0.0, time.perf_counter()
        if todo:
            with ProcessPoolExecutor() as pool:
                for i, (seed, blob, count, dur, cpu) in enumerate(
                        pool.map(_catalogue_track, todo, [seconds] * len(todo), chunksize=4)):
                    fp_cpu += cpu
                    await store.add_reference(f"bench:{seed}", blob, fp_version=FINGERPRINT_VERSION,
                                              entry_count=count, title=f"Bench song {seed}", duration=dur)
                    if (i + 1) % 50 == 0:
                        print(f"  catalogue {len(have) + i + 1}/{n} ({time.perf_counter() - t0:.0f} s)", flush=True)
        return {"built": len(todo), "fingerprint_cpu_s_from_samples": fp_cpu, **await store.stats()}
    finally:
        await store.close()


async def load(path: Path) -> tuple[FingerprintIndex, dict]:
    store = await CatalogueStore.open(path, synchronous="NORMAL")
    try:
        index = FingerprintIndex()
        t0 = time.perf_counter()
        counts = await load_index(store, index)
        counts["load_seconds"] = time.perf_counter() - t0
        return index, counts
    finally:
        await store.close()


def cpu_now() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def variants(d: Path, seed: int, seconds: float) -> dict[str, tuple[Path, float]]:
    """name -> (file, seconds of the reference it contains)."""
    x = M.song(seed, seconds)
    a = M.write_wav(d / f"{seed}.wav", x)
    host = M.song(seed + 500_000, 60)
    return {
        "exact": (a, seconds),
        "mp3-32k": (M.mp3(a, d / f"{seed}.mp3"), seconds),
        "excerpt-15s": (M.write_wav(d / f"{seed}-ex15.wav", M.excerpt(x, 0.25 * seconds, 15)), 15),
        "excerpt-10s": (M.write_wav(d / f"{seed}-ex10.wav", M.excerpt(x, 0.5 * seconds, 10)), 10),
        "embedded-15s": (M.write_wav(d / f"{seed}-emb.wav", M.embed(host, M.excerpt(x, 0.35 * seconds, 15), 20)), 15),
        "pitch+2": (M.pitch_shift(a, d / f"{seed}-p+2.wav", 2), seconds),
        "pitch-2": (M.pitch_shift(a, d / f"{seed}-p-2.wav", -2), seconds),
        "tempo+5%": (M.tempo_change(a, d / f"{seed}-t+5.wav", 1.05), seconds / 1.05),
        "tempo-5%": (M.tempo_change(a, d / f"{seed}-t-5.wav", 0.95), seconds / 0.95),
        "speed+5%": (M.speed_change(a, d / f"{seed}-s+5.wav", 1.05), seconds / 1.05),
        "speed-5%": (M.speed_change(a, d / f"{seed}-s-5.wav", 0.95), seconds / 0.95),
        "noise-10dB-snr": (M.write_wav(d / f"{seed}-n.wav", M.add_noise(x, 10)), seconds),
        "quieter-20dB+mp3": (M.mp3(M.write_wav(d / f"{seed}-q.wav", M.gain_db(x, -20)), d / f"{seed}-q.mp3"), seconds),
    }


def run_queries(index: FingerprintIndex, args) -> dict:
    rng = np.random.default_rng(0)
    ref_seeds = sorted(rng.choice(np.arange(1, args.catalogue + 1), size=args.refs, replace=False).tolist())
    per_variant: dict[str, dict] = {}
    fp_cpu = fp_audio = 0.0
    lookups: list[float] = []  # wall ms per query-minute
    lookup_cpu: list[float] = []  # CPU ms per query-minute (the machine may be shared)
    chroma_cpu = chroma_audio = 0.0
    false_matches = []
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        for seed in ref_seeds:
            for name, (path, shared) in variants(d, seed, args.seconds).items():
                c0 = cpu_now()
                fp = fingerprint_file(path)
                fp_cpu += cpu_now() - c0
                fp_audio += fp.duration
                t0, c0 = time.perf_counter(), time.thread_time()
                matches = index.query(fp)
                ms = (time.perf_counter() - t0) * 1000
                lookups.append(ms / (fp.duration / 60))
                lookup_cpu.append((time.thread_time() - c0) * 1000 / (fp.duration / 60))
                v = per_variant.setdefault(name, {"queries": 0, "matched": 0, "seconds_ratio": [], "wrong": 0})
                v["queries"] += 1
                ok = bool(matches) and matches[0].ref_id == f"bench:{seed}"
                v["matched"] += ok
                v["wrong"] += sum(m.ref_id != f"bench:{seed}" for m in matches)
                if ok:
                    v["seconds_ratio"].append(matches[0].seconds_matched / shared)
                if name in ("exact", "mp3-32k") and chroma_audio < 600:
                    c0 = cpu_now()
                    chromaprint_file(path)
                    chroma_cpu += cpu_now() - c0
                    chroma_audio += min(fp.duration, 120)
            print(f"  queried ref {seed}", flush=True)
        unrelated = 0
        for seed in range(900_001, 900_001 + args.unrelated):
            p = M.write_wav(d / f"u{seed}.wav", M.song(seed, args.seconds))
            fp = fingerprint_file(p)
            unrelated += 1
            got = index.query(fp)
            if got:
                false_matches.append({"query": f"unrelated:{seed}", "matches": [m.ref_id for m in got]})
        for label, x in (("silence", M.silence(60)), ("near-silence", M.near_silence(60))):
            got = index.query(fingerprint_file(M.write_wav(d / f"{label}.wav", x)))
            if got:
                false_matches.append({"query": label, "matches": [m.ref_id for m in got]})
    for v in per_variant.values():
        r = v.pop("seconds_ratio")
        v["match_rate"] = v["matched"] / v["queries"]
        v["median_seconds_ratio"] = float(np.median(r)) if r else None
    return {
        "refs_queried": ref_seeds,
        "variants": per_variant,
        "fingerprint_cpu_s_per_audio_min": fp_cpu / (fp_audio / 60),
        "chromaprint_cpu_s_per_audio_min": chroma_cpu / (chroma_audio / 60) if chroma_audio else None,
        "lookup_ms_per_query_min": {"median": float(np.median(lookups)), "p95": float(np.percentile(lookups, 95)),
                                    "max": float(np.max(lookups))},
        "lookup_cpu_ms_per_query_min": {"median": float(np.median(lookup_cpu)),
                                        "p95": float(np.percentile(lookup_cpu, 95)), "max": float(np.max(lookup_cpu))},
        "load_average": list(__import__("os").getloadavg()),
        "unrelated_queries": unrelated + 2,
        "false_matches": false_matches,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--catalogue", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=180.0)
    ap.add_argument("--refs", type=int, default=12)
    ap.add_argument("--unrelated", type=int, default=12)
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    db = OUT / f"catalogue-{args.catalogue}x{int(args.seconds)}s-{FINGERPRINT_VERSION}.sqlite3"
    print(f"catalogue {db}", flush=True)
    built = anyio.run(build_catalogue, db, args.catalogue, args.seconds)
    index, loaded = anyio.run(load, db)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"loaded {loaded}", flush=True)
    q = run_queries(index, args)
    cpu_min = q["fingerprint_cpu_s_per_audio_min"]
    result = {
        "catalogue": {"tracks": args.catalogue, "seconds_each": args.seconds, **built, **loaded,
                      "index_mb": loaded["bytes"] / 2**20, "max_rss_mb_after_load": rss_mb},
        **q,
        "cost": {
            "cpu_s_per_audio_hour": cpu_min * 60,
            # A 2-vCPU cloud VM at ~$0.04/hour: cost of the CPU time one audio-hour needs.
            "usd_per_audio_hour_at_0.02_usd_per_cpu_hour": cpu_min * 60 / 3600 * 0.02,
            "audd_usd_per_audio_hour": AUDD_USD_PER_HOUR,
        },
    }
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    (OUT / f"fingerprint-{stamp}.json").write_text(json.dumps(result, indent=2))
    (OUT / "latest.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
