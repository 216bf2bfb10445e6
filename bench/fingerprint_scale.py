"""Lookup time, memory, start-up and false matches as the catalogue grows (1,000 / 10,000 / 100,000 tracks).

    python bench/fingerprint_scale.py --sizes 1000 10000 100000 [--sources 200] [--cache /var/tmp/copyright_eval]
        [--workdir /var/tmp/fingerprint_scale] [--keep] [--memory-limit 4G]

Volume: `--sources` generated three-minute songs (tests/media.py, 8 kHz, fingerprinted from
samples), each reused as many catalogue tracks: transposed (-6..+6 semitones), re-timed
(x0.8..1.25), circularly shifted and thinned (a random 80% of its triplets), then hashed
again. That keeps the hash-key statistics of music while making 10,000 tracks in minutes;
since a few hundred songs stand in for thousands, keys collide more than in a real catalogue
of that size, so lookup cost here is an upper bound.
On top: the real soundtrack tracks of bench/copyright_eval.py (same split), with real edited
queries and the real held-out negatives. Every size goes through SQLite and the daemon's own
start-up path (`scan.catalogue.load_segmented`): the first open after the catalogue is written
builds the on-disk segments from SQLite (a one-time cost, as after an upgrade); the second open
is the start-up measured (it maps the segments). Then one reference is added and the index
reloaded, to show that a catalogue change does not rebuild the index.
Memory: RSS is split into anonymous memory (the process's own) and file-backed pages of the
memory-mapped segments (page cache the kernel can drop and reload).
`--memory-limit 4G` then measures the lookups again under a real limit: the segment files are
evicted from the page cache (posix_fadvise DONTNEED, checked with fincore), then a child process
starts inside a new cgroup-v1 memory group limited to that size (all its memory, and the page
cache it faults in, is charged there and reclaimed at the limit), opens the index again and
times two rounds of lookups (CPU and wall). Reported: the group's `memory.max_usage_in_bytes`,
major page faults, recall and false matches. Needs root and a writable /sys/fs/cgroup/memory.

Results: bench/results/fingerprint/scale-latest.json.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import pickle
import resource
import shutil
import subprocess
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

from firehose_mod.scan.catalogue import IndexFiles, index_dir, load_segmented  # noqa: E402
from firehose_mod.scan.fingerprint import (  # noqa: E402
    FINGERPRINT_VERSION,
    Fingerprint,
    FingerprintIndex,
    fingerprint_file,
    fingerprint_samples,
    index_entries,
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


def rss_mb() -> dict[str, float]:
    """Resident memory of this process, MB: total, anonymous, file-backed (mapped segments)."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
                out[k] = int(v.split()[0]) / 1024
    return out


def segment_files(db: Path) -> list[Path]:
    return sorted(p for p in index_dir(db).glob("seg-*/*") if p.is_file())


def resident_bytes(files: list[Path]) -> int | None:
    """Bytes of `files` in the page cache (util-linux `fincore`, i.e. mincore(2)); None without it."""
    if not files or shutil.which("fincore") is None:
        return None
    total = 0
    for i in range(0, len(files), 200):
        out = subprocess.run(["fincore", "-b", "-n", "-r", "-o", "RES", *map(str, files[i:i + 200])],
                             capture_output=True, text=True, check=True).stdout
        total += sum(int(x) for x in out.split())
    return total


def evict(files: list[Path]) -> None:
    """Drop `files` from the page cache (pages still mapped somewhere stay)."""
    for p in files:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def meminfo_mb(field: str = "Cached") -> float:
    with open("/proc/meminfo") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k == field:
                return int(v.split()[0]) / 1024
    return float("nan")


class MemoryGroup:
    """A new cgroup-v1 memory group limited to `limit` bytes, for a `with` block (removed on exit).

    `join` is run in a child process before it execs (`preexec_fn`), so everything the child
    allocates and every page of the page cache it faults in is charged to the group and
    reclaimed at the limit."""

    ROOT = Path("/sys/fs/cgroup/memory")

    def __init__(self, limit: str):
        self.limit = limit
        self.path = self.ROOT / f"fingerprint-scale-{os.getpid()}"

    def __enter__(self) -> MemoryGroup:
        self.path.mkdir(exist_ok=True)
        (self.path / "memory.limit_in_bytes").write_text(self.limit)
        return self

    def join(self) -> None:
        with open(self.path / "cgroup.procs", "w") as f:
            f.write(str(os.getpid()))

    def read(self, name: str) -> int:
        return int((self.path / name).read_text().split()[0])

    def stat(self) -> dict[str, int]:
        out = {}
        for line in (self.path / "memory.stat").read_text().splitlines():
            k, v = line.split()
            out[k] = int(v)
        return out

    def __exit__(self, *exc) -> None:
        for _ in range(50):
            try:
                self.path.rmdir()
                break
            except OSError:
                time.sleep(0.1)


def lookups(index: FingerprintIndex, queries: list, negatives: list) -> dict:
    """One round of every query and negative: CPU and wall ms per query-minute, recall, false matches."""
    cpu_ms, wall_ms, recall, false = [], [], 0, []
    for edit, ref, fp in queries:
        c0, w0 = time.thread_time(), time.perf_counter()
        got = index.query(fp)
        cpu_ms.append((time.thread_time() - c0) * 1000 / (fp.duration / 60))
        wall_ms.append((time.perf_counter() - w0) * 1000 / (fp.duration / 60))
        recall += bool(got) and got[0].ref_id == ref
        false += [(edit, ref, m.ref_id) for m in got if m.ref_id != ref]
    for name, fp in negatives:
        c0, w0 = time.thread_time(), time.perf_counter()
        got = index.query(fp)
        if fp.duration:
            cpu_ms.append((time.thread_time() - c0) * 1000 / (fp.duration / 60))
            wall_ms.append((time.perf_counter() - w0) * 1000 / (fp.duration / 60))
        false += [(name, None, m.ref_id) for m in got]
    return {"cpu_ms": cpu_ms, "wall_ms": wall_ms, "recall": recall, "false": false}


def summary(xs: list[float]) -> dict[str, float]:
    return {"median": float(np.median(xs)), "p95": float(np.percentile(xs, 95)), "max": float(np.max(xs))}


def limited_lookups(db: Path, queries_file: Path, limit: str) -> dict:
    """The lookups again, from a cold page cache, in a child process inside a memory group limited to `limit`."""
    gc.collect()
    files = segment_files(db)
    out: dict = {"limit": limit, "segment_bytes": sum(p.stat().st_size for p in files),
                 "resident_before_evict": resident_bytes(files), "cached_mb_before_evict": meminfo_mb()}
    evict(files)
    out.update(resident_after_evict=resident_bytes(files), cached_mb_after_evict=meminfo_mb())
    print(f"    evicted: {out}", flush=True)
    with MemoryGroup(limit) as group:
        cmd = [sys.executable, __file__, "--limited-child", str(db), "--queries-file", str(queries_file)]
        proc = subprocess.run(cmd, preexec_fn=group.join, capture_output=True, text=True)
        if proc.returncode:
            raise RuntimeError(f"limited lookups failed: {proc.stderr[-3000:]}")
        stat = group.stat()
        out.update(json.loads(proc.stdout.strip().splitlines()[-1]))
        out.update(max_usage_bytes=group.read("memory.max_usage_in_bytes"), failcnt=group.read("memory.failcnt"),
                   limit_bytes=group.read("memory.limit_in_bytes"),
                   group_stat={k: stat.get(k) for k in ("cache", "rss", "mapped_file", "pgmajfault")},
                   resident_segment_bytes_after=resident_bytes(files), load_average=list(os.getloadavg()))
    return out


def limited_child(db: Path, queries_file: Path) -> None:
    """Run inside the memory group: open the index, two rounds of lookups, one JSON line on stdout."""
    queries, negatives = pickle.loads(queries_file.read_bytes())
    t0, c0 = time.perf_counter(), time.process_time()
    index, counts = anyio.run(start, db)
    out: dict = {"startup_wall_s": time.perf_counter() - t0, "startup_cpu_s": time.process_time() - c0,
                 "segments": counts["segments"], "rounds": []}
    for rnd in range(2):  # the first from a cold cache, the second with what the limit kept cached
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_majflt
        w0 = time.perf_counter()
        r = lookups(index, queries, negatives)
        out["rounds"].append({"cpu_ms_per_query_min": summary(r["cpu_ms"]),
                              "wall_ms_per_query_min": summary(r["wall_ms"]),
                              "round_wall_s": time.perf_counter() - w0,
                              "major_faults": resource.getrusage(resource.RUSAGE_SELF).ru_majflt - f0,
                              "recall": f"{r['recall']}/{len(queries)}", "false_matches": r["false"]})
        shown = {k: v for k, v in out["rounds"][-1].items() if k != "false_matches"}
        print(json.dumps(shown), file=sys.stderr, flush=True)
    out["rss_mb"] = rss_mb()
    print(json.dumps(out), flush=True)


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
            if (i + 1) % 10000 == 0:
                print(f"    wrote {i + 1}", flush=True)
    finally:
        await store.close()


async def start(path: Path) -> tuple[FingerprintIndex, dict]:
    """The daemon's start-up: open the catalogue, map its segments, read what they lack."""
    store = await CatalogueStore.open(path)
    files = IndexFiles(index_dir(path), writable=True)
    try:
        index = FingerprintIndex()
        t0, c0 = time.perf_counter(), time.process_time()
        counts = await load_segmented(store, index, files)
        counts.update(load_wall_s=time.perf_counter() - t0, load_cpu_s=time.process_time() - c0)
        return index, counts
    finally:
        files.close()
        await store.close()


async def drop_added(path: Path) -> None:
    """Remove what `add_one` added (a kept catalogue is measured again as it was built)."""
    store = await CatalogueStore.open(path)
    try:
        await store.remove("added-later")
    finally:
        await store.close()


async def add_one(path: Path, fp: Fingerprint) -> None:
    store = await CatalogueStore.open(path)
    try:
        e = index_entries(fp)
        await store.add_reference("added-later", e.to_bytes(), fp_version=FINGERPRINT_VERSION, entry_count=len(e))
    finally:
        await store.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    ap.add_argument("--sources", type=int, default=200)
    ap.add_argument("--queries", type=int, default=8, help="real indexed tracks to edit into queries")
    ap.add_argument("--cache", type=Path, default=Path("/var/tmp/copyright_eval"))
    ap.add_argument("--workdir", type=Path, default=Path("/var/tmp/fingerprint_scale"),
                    help="where the catalogues are built (100,000 tracks take ~25 GB)")
    ap.add_argument("--keep", action="store_true", help="keep each catalogue (reused by a later run)")
    ap.add_argument("--workers", type=int, default=1, help="processes generating the songs (a shared machine: 1)")
    ap.add_argument("--memory-limit", default="", metavar="SIZE",
                    help="also time the lookups from a cold page cache inside a cgroup memory group of SIZE (e.g. 4G)")
    ap.add_argument("--limited-sizes", type=int, nargs="*", default=None,
                    help="sizes the --memory-limit phase runs at (default: every size)")
    ap.add_argument("--limited-child", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--queries-file", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.limited_child:
        limited_child(args.limited_child, args.queries_file)
        return
    OUT.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    args.workdir.mkdir(parents=True, exist_ok=True)
    cached = args.workdir / f"sources-{args.sources}-{FINGERPRINT_VERSION}.npz"
    if cached.exists():  # the generated songs' fingerprints, kept from an earlier run
        z = np.load(cached)
        sources = [Fingerprint(float(z[f"dur_{i}"]), *(z[f"{k}_{i}"] for k in ("t", "f", "d1", "d2", "r", "span")))
                   for i in range(args.sources)]
    else:
        with ProcessPoolExecutor(max_workers=args.workers) as pool:
            sources = list(pool.map(_source, range(700_001, 700_001 + args.sources), chunksize=4))
        np.savez(cached, **{f"{k}_{i}": getattr(fp, k) for i, fp in enumerate(sources)
                            for k in ("t", "f", "d1", "d2", "r", "span")},
                 **{f"dur_{i}": np.float64(fp.duration) for i, fp in enumerate(sources)})
    print(f"{len(sources)} generated sources in {time.perf_counter() - t0:.0f} s", flush=True)
    indexed, held_out, _ = split(soundtracks(args.cache))
    real = {p.stem: fingerprint_file(p) for p in indexed}
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        kept = args.workdir / f"queries-{args.queries}.pkl"
        if kept.exists():  # made by an earlier run: sox and ffmpeg are the slow part
            queries, negatives = pickle.loads(kept.read_bytes())
        else:
            queries = []  # (edit, expected ref, fingerprint)
            for n, track in enumerate(indexed[:args.queries]):
                made = make_queries(d, track, held_out[n % len(held_out)], 90.0, n)
                queries += [(e, track.stem, fingerprint_file(made[e][0])) for e in EDITS]
            negatives = [(p.name, fingerprint_file(p)) for p in held_out]
            negatives += [(k, fingerprint_file(v)) for k, v in negatives_extra(d).items()]
            kept.write_bytes(pickle.dumps((queries, negatives)))
        results = []
        for size in args.sizes:
            db = args.workdir / f"scale-{size}.sqlite3"
            t1 = time.perf_counter()
            if not db.exists():
                anyio.run(build_db, db, size, sources, real)
            built = time.perf_counter() - t1
            anyio.run(drop_added, db)
            print(f"  {size}: catalogue written in {built:.0f} s", flush=True)
            c1, t1 = time.process_time(), time.perf_counter()
            first, first_counts = anyio.run(start, db)  # builds the segments that are missing
            seg_build = {"cpu_s": time.process_time() - c1, "wall_s": time.perf_counter() - t1,
                         "from_sqlite": first_counts["from_sqlite"]}
            del first
            gc.collect()
            print(f"  {size}: segments built: {seg_build}", flush=True)
            before = rss_mb()
            index, counts = anyio.run(start, db)
            after = rss_mb()
            for rnd in range(2):  # the first round loads the pages it touches; the second is measured
                r = lookups(index, queries, negatives)
                if rnd == 0:
                    cold = {"median": float(np.median(r["cpu_ms"])), "p95": float(np.percentile(r["cpu_ms"], 95)),
                            "wall": summary(r["wall_ms"])}
            lookup_ms, recall, false = r["cpu_ms"], r["recall"], r["false"]
            queried = rss_mb()
            # A catalogue change: one reference added, the index reloaded (no rebuild).
            anyio.run(add_one, db, negatives[0][1])
            del index
            gc.collect()
            c2, t2 = time.process_time(), time.perf_counter()
            again, again_counts = anyio.run(start, db)
            reload = {"cpu_s": time.process_time() - c2, "wall_s": time.perf_counter() - t2,
                      "from_sqlite": again_counts["from_sqlite"], "segments": again_counts["segments"]}
            found = again.query(negatives[0][1])
            reload["found_added"] = bool(found) and found[0].ref_id == "added-later"
            del again
            gc.collect()
            anyio.run(drop_added, db)
            row = {
                "tracks": size, "entries": counts["entries"], "segments": counts["segments"],
                "index_disk_mb": counts["disk_bytes"] / 2**20, "index_memory_mb": counts["bytes"] / 2**20,
                "rss_before_mb": before, "rss_after_start_mb": after, "rss_after_queries_mb": queried,
                "startup_wall_s": counts["load_wall_s"], "startup_cpu_s": counts["load_cpu_s"],
                "startup_from_segments": counts["from_segments"], "startup_from_sqlite": counts["from_sqlite"],
                "segment_build": seg_build, "reload_after_adding_one": reload,
                "sqlite_mb": db.stat().st_size / 2**20, "build_db_s": built,
                "lookup_cpu_ms_per_query_min": {"median": float(np.median(lookup_ms)),
                                                "p95": float(np.percentile(lookup_ms, 95)),
                                                "max": float(np.max(lookup_ms))},
                "lookup_wall_ms_per_query_min": summary(r["wall_ms"]),
                "lookup_cold_first_round": cold,
                "recall": f"{recall}/{len(queries)}", "false_matches": false, "negatives": len(negatives),
                "load_average": list(os.getloadavg()),
            }
            if args.memory_limit and (args.limited_sizes is None or size in args.limited_sizes):
                row["memory_limited"] = limited_lookups(db, kept, args.memory_limit)
                print(f"    limited: {json.dumps(row['memory_limited'])[:1500]}", flush=True)
            print(json.dumps(row), flush=True)
            results.append(row)
            if not args.keep:
                db.unlink()
                for extra in (db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
                    extra.unlink(missing_ok=True)
                shutil.rmtree(index_dir(db), ignore_errors=True)
    out = {"sources": args.sources, "edits": EDITS, "sizes": results}
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    (OUT / f"scale-{stamp}.json").write_text(json.dumps(out, indent=2))
    (OUT / "scale-latest.json").write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
