"""Lookup time, memory, start-up and false matches as the catalogue grows (1,000 / 10,000 tracks).

    python bench/fingerprint_scale.py --sizes 1000 10000 [--sources 200] [--cache /var/tmp/copyright_eval]

Volume: `--sources` generated three-minute songs (tests/media.py, 8 kHz, fingerprinted from
samples), each reused as many catalogue tracks: transposed (-6..+6 semitones), re-timed
(x0.8..1.25), circularly shifted and thinned (a random 80% of its triplets), then hashed
again. That keeps the hash-key statistics of music while making 10,000 tracks in minutes;
since a few hundred songs stand in for thousands, keys collide more than in a real catalogue
of that size, so lookup cost here is an upper bound.
On top: the real soundtrack tracks of bench/copyright_eval.py (same split), with real edited
queries and the real held-out negatives. Every size goes through SQLite (the daemon's start-up
path: `load_index`), so the start-up time is the real one.

Results: bench/results/fingerprint/scale-latest.json.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import anyio
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from copyright_eval import make_queries, negatives_extra, soundtracks, split  # noqa: E402

from firehose_mod.scan.copyright import load_index  # noqa: E402
from firehose_mod.scan.fingerprint import (  # noqa: E402
    FINGERPRINT_VERSION, Fingerprint, FingerprintIndex, fingerprint_file, fingerprint_samples, index_entries,
)
from firehose_mod.store.catalogue import CatalogueStore  # noqa: E402
from tests import media as M  # noqa: E402

OUT = ROOT / "bench" / "results" / "fingerprint"
EDITS = ("exact (mp3 128k)", "nightcore x1.25 +bass", "slowed x0.8 +reverb", "tempo +15%", "pitch -4 st",
         "voice over", "DJ crossfade", "heavy compression")


def _source(seed: int) -> Fingerprint:
    return fingerprint_samples(M.song(seed, 180.0, sr=8000))


def volume_entries(fp: Fingerprint, rng: np.random.Generator) -> bytes:
    """One stand-in catalogue track made from a generated song (see the module docstring)."""
    keep = rng.random(len(fp)) < 0.8
    scale = float(np.exp(rng.uniform(np.log(0.8), np.log(1.25))))
    shift = float(rng.uniform(-6, 6))
    dur = fp.duration * scale
    t = (fp.t[keep] * scale + rng.uniform(0, dur)) % dur
    order = np.argsort(t)
    new = Fingerprint(dur, t[order].astype(np.float32), np.clip(fp.f[keep][order] + shift, 0, 59).astype(np.float32),
                      fp.d1[keep][order], fp.d2[keep][order], fp.r[keep][order],
                      (fp.span[keep][order] * scale).astype(np.float32))
    return index_entries(new).to_bytes()


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


async def build_db(path: Path, size: int, sources: list[Fingerprint], real: dict[str, Fingerprint]) -> None:
    store = await CatalogueStore.open(path, synchronous="OFF")
    try:
        rng = np.random.default_rng(size)
        for name, fp in real.items():
            e = index_entries(fp)
            await store.add_reference(name, e.to_bytes(), fp_version=FINGERPRINT_VERSION, entry_count=len(e))
        for i in range(size - len(real)):
            blob = volume_entries(sources[i % len(sources)], rng)
            await store.add_reference(f"volume:{i}", blob, fp_version=FINGERPRINT_VERSION, entry_count=len(blob) // 12)
            if (i + 1) % 2000 == 0:
                print(f"    wrote {i + 1}", flush=True)
    finally:
        await store.close()


async def start(path: Path) -> tuple[FingerprintIndex, dict]:
    store = await CatalogueStore.open(path, readonly=True)
    try:
        index = FingerprintIndex()
        t0, c0 = time.perf_counter(), time.process_time()
        counts = await load_index(store, index)
        counts.update(load_wall_s=time.perf_counter() - t0, load_cpu_s=time.process_time() - c0)
        return index, counts
    finally:
        await store.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    ap.add_argument("--sources", type=int, default=200)
    ap.add_argument("--queries", type=int, default=8, help="real indexed tracks to edit into queries")
    ap.add_argument("--cache", type=Path, default=Path("/var/tmp/copyright_eval"))
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with ProcessPoolExecutor() as pool:
        sources = list(pool.map(_source, range(700_001, 700_001 + args.sources), chunksize=4))
    print(f"{len(sources)} generated sources in {time.perf_counter() - t0:.0f} s", flush=True)
    indexed, held_out, _ = split(soundtracks(args.cache))
    real = {p.stem: fingerprint_file(p) for p in indexed}
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        queries = []  # (edit, expected ref, fingerprint)
        for n, track in enumerate(indexed[:args.queries]):
            made = make_queries(d, track, held_out[n % len(held_out)], 90.0, n)
            queries += [(e, track.stem, fingerprint_file(made[e][0])) for e in EDITS]
        negatives = [(p.name, fingerprint_file(p)) for p in held_out]
        negatives += [(k, fingerprint_file(v)) for k, v in negatives_extra(d).items()]
        results = []
        for size in args.sizes:
            db = d / f"scale-{size}.sqlite3"
            t1 = time.perf_counter()
            anyio.run(build_db, db, size, sources, real)
            built = time.perf_counter() - t1
            gc.collect()
            before = rss_mb()
            index, counts = anyio.run(start, db)
            after = rss_mb()
            lookup_ms, recall, false = [], 0, []
            for edit, ref, fp in queries:
                c0 = time.thread_time()
                got = index.query(fp)
                lookup_ms.append((time.thread_time() - c0) * 1000 / (fp.duration / 60))
                recall += bool(got) and got[0].ref_id == ref
                false += [(edit, ref, m.ref_id) for m in got if m.ref_id != ref]
            for name, fp in negatives:
                c0 = time.thread_time()
                got = index.query(fp)
                if fp.duration:
                    lookup_ms.append((time.thread_time() - c0) * 1000 / (fp.duration / 60))
                false += [(name, None, m.ref_id) for m in got]
            row = {
                "tracks": size, "entries": counts["entries"], "index_mb": counts["bytes"] / 2**20,
                "rss_growth_mb": after - before, "startup_wall_s": counts["load_wall_s"],
                "startup_cpu_s": counts["load_cpu_s"], "sqlite_mb": db.stat().st_size / 2**20, "build_db_s": built,
                "lookup_cpu_ms_per_query_min": {"median": float(np.median(lookup_ms)),
                                                "p95": float(np.percentile(lookup_ms, 95)),
                                                "max": float(np.max(lookup_ms))},
                "recall": f"{recall}/{len(queries)}", "false_matches": false, "negatives": len(negatives),
                "load_average": list(os.getloadavg()),
            }
            print(json.dumps(row), flush=True)
            results.append(row)
            del index
            gc.collect()
            db.unlink()
    out = {"sources": args.sources, "edits": EDITS, "sizes": results}
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    (OUT / f"scale-{stamp}.json").write_text(json.dumps(out, indent=2))
    (OUT / "scale-latest.json").write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
