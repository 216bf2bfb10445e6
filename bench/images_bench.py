"""Cover-art throughput: images per second for decode+NSFW, decode+PDQ (8 variants), and both.

Generates synthetic cover-like JPEGs (default 1000x1000, quality 90) and runs the same
top-level function the scanner sends to the process pool, in a pool of N worker processes
(default 2, the machine size). The first image per worker is a warm-up (model load).

    python bench/images_bench.py [--images 200] [--workers 2] [--size 1000] [--blocklist 100000]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from firehose_mod.scan.cover import CoverLimits, PdqBlocklist, analyse_cover, opennsfw_score  # noqa: E402


def make_images(directory: Path, count: int, size: int) -> list[str]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        x = np.linspace(0, 255, size)
        base = np.stack([*np.meshgrid(x, x[::-1]), np.full((size, size), (i * 37) % 255)], axis=2)
        noise = rng.normal(0, 18, (size, size, 3))  # photo-like grain, so JPEG sizes are realistic
        img = Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(img)
        for _ in range(8):
            x0, y0 = (int(v) for v in rng.integers(0, size - size // 4, 2))
            draw.ellipse((x0, y0, x0 + size // 5, y0 + size // 6), fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
        path = directory / f"cover{i:04d}.jpg"
        img.save(path, quality=90)
        paths.append(str(path))
    return paths


def _warm(_: int) -> None:
    opennsfw_score(Image.new("RGB", (64, 64)))
    time.sleep(0.2)  # keep this worker busy so the other one warms up too


def run(paths: list[str], workers: int, scorer, with_pdq: bool) -> float:
    limits = CoverLimits()
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(_warm, range(workers)))
        start = time.perf_counter()
        results = list(pool.map(analyse_cover, paths, [limits] * len(paths), [scorer] * len(paths),
                                [with_pdq] * len(paths), chunksize=4))
        elapsed = time.perf_counter() - start
    assert all(r.error is None for r in results), [r.error for r in results if r.error][:3]
    return len(paths) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--size", type=int, default=1000)
    parser.add_argument("--blocklist", type=int, default=100_000, help="PDQ blocklist entries for the match timing")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_images(Path(tmp), args.images, args.size)
        avg_kb = sum(os.path.getsize(p) for p in paths) / len(paths) / 1024
        print(f"{args.images} JPEGs {args.size}x{args.size} (avg {avg_kb:.0f} KiB), {args.workers} worker processes")
        for label, scorer, pdq in (("decode + NSFW", opennsfw_score, False), ("decode + PDQ x8", None, True),
                                   ("decode + NSFW + PDQ x8", opennsfw_score, True)):
            print(f"  {label:24s} {run(paths, args.workers, scorer, pdq):7.1f} images/s")
        probe = analyse_cover(paths[0], CoverLimits(), None, True).pdq
        rng = np.random.default_rng(1)
        blocklist = PdqBlocklist.parse("\n".join(rng.bytes(32).hex() for _ in range(args.blocklist)))
        start = time.perf_counter()
        for _ in range(20):
            blocklist.match(probe)
        print(f"  blocklist match, {args.blocklist} entries x 8 variants: {(time.perf_counter() - start) / 20 * 1000:.1f} ms")


if __name__ == "__main__":
    main()
