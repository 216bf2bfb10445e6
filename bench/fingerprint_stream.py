"""A platform's stream of distinct uploads against the 100,000-track index, under a memory limit.

    python bench/fingerprint_stream.py merge --db /var/tmp/fingerprint_scale/scale-100000.sqlite3
    python bench/fingerprint_stream.py stream --db DB [--songs 600] [--memory-limit 4G] [--window 50]

`bench/fingerprint_scale.py` (build the catalogues with it first, `--keep`) times the same 105
lookups twice: they touch 2.56 GiB of a 15.5 GB index, so a 4 GiB limit never binds. A platform
checks every new upload, each one different, and over hours its lookups touch much more of the
index. This measures that.

- `merge`: what the daemon's background merger (`scan.catalogue.Catalogue.keep_merged`) does
  to the segments a first start wrote: opens the catalogue as the daemon does and runs
  `maintain` until `plan_merge` has nothing left; prints segments before and after, wall and
  CPU seconds, bytes written. Work on a copy to keep the original segments: segments are
  immutable, so `ln DB COPY && cp -al DB.fpindex COPY.fpindex` costs no disk.
- `stream`: `--songs` generated three-minute songs that are not in the catalogue (seeds apart
  from the catalogue's sources; fingerprints cached in `--workdir`) and, with `--real-dir`,
  real recordings that are not in it either, spread through them: each a distinct upload,
  looked up one after the other in a child process inside a cgroup-v1 memory group of
  `--memory-limit` (the segment files evicted from the page cache first: everything the lookups
  fault in is charged to the group, as in fingerprint_scale.py). Every `--window` uploads a row:
  lookup CPU and wall ms per query-minute (median / p95), major faults per query-minute, the
  group's usage and how often it hit the limit. Any match of an upload is a false match (each
  is listed with its seconds matched: the default policy labels a catalogue match of 30 s or more
  and sends one of 8 s or more to review).
  After the stream the real edited queries and negatives of fingerprint_scale.py run once, so
  recall and false matches are checked on the index as the stream left it.

Results: bench/results/fingerprint/stream-<stamp>.json. Needs root and /sys/fs/cgroup/memory.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import resource
import subprocess
import sys
import time
from pathlib import Path

import anyio
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from fingerprint_scale import MemoryGroup, evict, lookups, resident_bytes, segment_files, start  # noqa: E402

from firehose_mod.scan import catalogue as cat  # noqa: E402
from firehose_mod.scan.fingerprint import FINGERPRINT_VERSION, Fingerprint, FingerprintIndex  # noqa: E402
from firehose_mod.store.catalogue import CatalogueStore  # noqa: E402

OUT = ROOT / "bench" / "results" / "fingerprint"
SEED0 = 900_001  # the catalogue's sources are 700_001..; these songs are none of them


def songs(workdir: Path, n: int) -> list[Fingerprint]:
    cached = workdir / f"songs-{n}-{FINGERPRINT_VERSION}.npz"
    if not cached.exists():
        from firehose_mod.scan.fingerprint import fingerprint_samples
        from tests import media as M

        arrays = {}
        t0 = time.perf_counter()
        for i in range(n):
            fp = fingerprint_samples(M.song(SEED0 + i, 180.0, sr=8000))
            arrays.update({f"{k}_{i}": getattr(fp, k) for k in ("t", "f", "d1", "d2", "r", "span")})
            arrays[f"dur_{i}"] = np.float64(fp.duration)
            if (i + 1) % 50 == 0:
                print(f"  {i + 1} songs fingerprinted in {time.perf_counter() - t0:.0f} s", flush=True)
        workdir.mkdir(parents=True, exist_ok=True)
        np.savez(cached, **arrays)
    z = np.load(cached)
    return [Fingerprint(float(z[f"dur_{i}"]), *(z[f"{k}_{i}"] for k in ("t", "f", "d1", "d2", "r", "span")))
            for i in range(n)]


def real_tracks(root: Path, workdir: Path) -> list[tuple[str, Fingerprint]]:
    """Fingerprints of the real recordings under `root` (30 s or longer), cached in `workdir`."""
    from firehose_mod.scan.fingerprint import fingerprint_file

    paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in (".ogg", ".mp3", ".flac", ".wav"))
    cached = workdir / f"real-{len(paths)}-{FINGERPRINT_VERSION}.pkl"
    if cached.exists():
        return pickle.loads(cached.read_bytes())
    out, t0 = [], time.perf_counter()
    for i, path in enumerate(paths):
        try:
            fp = fingerprint_file(path)
        except Exception as exc:  # noqa: BLE001 - a file ffmpeg cannot read is left out, and said
            print(f"  skipped {path}: {exc}", flush=True)
            continue
        if fp.duration >= 30:
            out.append((str(path.relative_to(root)), fp))
        if (i + 1) % 20 == 0:
            print(f"  {i + 1}/{len(paths)} real recordings fingerprinted in {time.perf_counter() - t0:.0f} s", flush=True)
    cached.write_bytes(pickle.dumps(out))
    return out


async def merge_like_the_daemon(db: Path) -> dict:
    store = await CatalogueStore.open(db)
    files = cat.IndexFiles(cat.index_dir(db), writable=True)
    try:
        index = FingerprintIndex()
        await cat.load_segmented(store, index, files)
        before = index.stats()
        t0, c0 = time.perf_counter(), time.process_time()
        merges = await anyio.to_thread.run_sync(lambda: cat.maintain(index, files))
        after = index.stats()
        return {"segments_before": before["segments"], "segments_after": after["segments"], "merges": merges,
                "wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0,
                "disk_bytes_before": before["disk_bytes"], "disk_bytes_after": after["disk_bytes"],
                "entries": after["entries"], "load_average": list(os.getloadavg())}
    finally:
        files.close()
        await store.close()


def _group_usage() -> tuple[int, int]:
    """(usage bytes, failcnt) of the memory group this process is in."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, ctrl, path = line.split(":", 2)
        if "memory" in ctrl.split(","):
            base = Path("/sys/fs/cgroup/memory") / path.lstrip("/")
            return (int((base / "memory.usage_in_bytes").read_text()), int((base / "memory.failcnt").read_text()))
    return (0, 0)


def child(db: Path, queries_file: Path, window: int) -> None:
    stream, real_queries, negatives = pickle.loads(queries_file.read_bytes())  # stream: (kind, name, fp)
    t0 = time.perf_counter()
    index, counts = anyio.run(start, db)
    out: dict = {"startup_wall_s": time.perf_counter() - t0, "segments": counts["segments"], "windows": []}
    cpu, wall, faults, false = [], [], [], []
    for i, (kind, name, fp) in enumerate(stream):
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_majflt
        c0, w0 = time.thread_time(), time.perf_counter()
        got = index.query(fp)
        minutes = fp.duration / 60
        cpu.append((time.thread_time() - c0) * 1000 / minutes)
        wall.append((time.perf_counter() - w0) * 1000 / minutes)
        faults.append((resource.getrusage(resource.RUSAGE_SELF).ru_majflt - f0) / minutes)
        false += [{"upload": i, "kind": kind, "name": name, "ref": m.ref_id, "seconds_matched": m.seconds_matched,
                   "score": m.score, "time_scale": m.time_scale, "pitch_shift": m.pitch_shift_semitones}
                  for m in got]
        if (i + 1) % window == 0 or i + 1 == len(stream):
            usage, failcnt = _group_usage()
            a = len(out["windows"]) * window
            row = {"uploads": i + 1,
                   "cpu_ms": [float(np.median(cpu[a:])), float(np.percentile(cpu[a:], 95))],
                   "wall_ms": [float(np.median(wall[a:])), float(np.percentile(wall[a:], 95))],
                   "major_faults_per_min": float(np.mean(faults[a:])),
                   "group_usage_gib": usage / 2**30, "failcnt": failcnt, "false": len(false),
                   "load": os.getloadavg()[0]}
            out["windows"].append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    kinds = sorted({k for k, _, _ in stream})
    out["stream"] = {"cpu_ms_median": float(np.median(cpu)), "cpu_ms_p95": float(np.percentile(cpu, 95)),
                     "wall_ms_median": float(np.median(wall)), "wall_ms_p95": float(np.percentile(wall, 95)),
                     "false_matches": false, "uploads": {k: sum(1 for x, _, _ in stream if x == k) for k in kinds},
                     "uploads_with_a_false_match": {k: len({f["upload"] for f in false if f["kind"] == k}) for k in kinds},
                     # what the default policy would do with them (catalogue references: label at 30 s, review at 8 s)
                     "would_label": sum(1 for f in false if f["seconds_matched"] >= 30),
                     "would_review": sum(1 for f in false if 8 <= f["seconds_matched"] < 30)}
    r = lookups(index, real_queries, negatives)
    out["real_after_stream"] = {"recall": f"{r['recall']}/{len(real_queries)}", "false_matches": r["false"],
                                "cpu_ms": [float(np.median(r["cpu_ms"])), float(np.percentile(r["cpu_ms"], 95))]}
    print(json.dumps(out), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["merge", "stream", "child"])
    ap.add_argument("--db", type=Path, required=True, help="a catalogue built by fingerprint_scale.py --keep")
    ap.add_argument("--songs", type=int, default=600, help="distinct uploads in the stream")
    ap.add_argument("--window", type=int, default=50, help="uploads per reported row")
    ap.add_argument("--memory-limit", default="4G", metavar="SIZE")
    ap.add_argument("--workdir", type=Path, default=Path("/var/tmp/fingerprint_stream"))
    ap.add_argument("--real-dir", type=Path, default=None,
                    help="real recordings none of which is in the catalogue, added to the stream (e.g. the music of"
                         " Debian's asc-music, hyperrogue-music, drascula-music and wesnoth-1.16-music, unpacked)")
    ap.add_argument("--real", type=Path, default=Path("/var/tmp/fingerprint_scale/queries-8.pkl"),
                    help="fingerprint_scale.py's kept real queries and negatives")
    ap.add_argument("--queries-file", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.mode == "child":
        child(args.db, args.queries_file, args.window)
        return
    OUT.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    if args.mode == "merge":
        res = anyio.run(merge_like_the_daemon, args.db)
        print(json.dumps(res), flush=True)
        (OUT / f"merge-{stamp}.json").write_text(json.dumps(res, indent=2))
        return
    generated = [("generated", f"song:{SEED0 + i}", fp) for i, fp in enumerate(songs(args.workdir, args.songs))]
    real = [("real", name, fp) for name, fp in real_tracks(args.real_dir, args.workdir)] if args.real_dir else []
    stream = list(generated)
    for j, item in enumerate(real):  # spread evenly through the generated uploads
        stream.insert(int((j + 0.5) * len(stream) / len(real)) if stream else 0, item)
    real_queries, negatives = pickle.loads(args.real.read_bytes())
    qfile = args.workdir / f"stream-queries-{os.getpid()}.pkl"
    qfile.write_bytes(pickle.dumps((stream, real_queries, negatives)))
    files = segment_files(args.db)
    evict(files)
    res: dict = {"db": str(args.db), "limit": args.memory_limit, "segment_bytes": sum(p.stat().st_size for p in files),
                 "resident_after_evict": resident_bytes(files)}
    try:
        with MemoryGroup(args.memory_limit) as group:
            cmd = [sys.executable, __file__, "child", "--db", str(args.db), "--queries-file", str(qfile),
                   "--window", str(args.window)]
            proc = subprocess.run(cmd, preexec_fn=group.join, stdout=subprocess.PIPE, text=True)
            if proc.returncode:
                raise SystemExit(f"the stream's child failed ({proc.returncode})")
            res.update(json.loads(proc.stdout.strip().splitlines()[-1]))
            res.update(max_usage_bytes=group.read("memory.max_usage_in_bytes"), failcnt=group.read("memory.failcnt"),
                       group_stat={k: group.stat().get(k) for k in ("cache", "rss", "mapped_file", "pgmajfault")})
    finally:
        qfile.unlink(missing_ok=True)
    print(json.dumps({k: v for k, v in res.items() if k != "windows"})[:3000], flush=True)
    (OUT / f"stream-{stamp}.json").write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
