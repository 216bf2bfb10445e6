"""The label log on SQLite and on PostgreSQL, side by side in one run.

Measured, for each backend:
- single emits: `emit()` of one label per transaction (the daemon's own pattern), with 1 writer
  and with 4 concurrent writers (4 log instances, each its own connection, in this process);
- batched emits: `emit_many` of 1,000 labels per transaction filling the log, 1 and 4 writers;
- backfill: `cbor_after(seq, 1000)` from 0 to the head (a subscriber with cursor=0).

Both are durable as in production: SQLite synchronous=FULL in WAL mode; PostgreSQL on a
throwaway local cluster (tests/helpers/pg.py) with fsync and synchronous_commit on. Signing
(coincurve, ~40 us a label) is part of every emit figure, as it is in the daemon.

    python -m bench.pg_bench [--labels 100000] [--singles 2000]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import anyio

from firehose_mod.labels import SigningKey
from firehose_mod.logs import configure_logging
from firehose_mod.store import EmitRequest, LabelLog
from firehose_mod.store.pg import PgLabelLog
from tests.helpers.pg import PgCluster

SRC = "did:web:bench.example"


def subject(writer: int, i: int) -> str:
    return f"at://did:plc:bench{writer}/fm.plyr.track/3k{i:010d}"


async def _writers(open_log, count: int, per_tx: int, writers: int, tag: str) -> float:
    """Labels a second, `writers` instances each writing count/writers labels, `per_tx` a transaction."""
    logs = [await open_log() for _ in range(writers)]
    share = count // writers
    try:
        started = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for w, log in enumerate(logs):
                async def run(w=w, log=log):
                    for i in range(0, share, per_tx):
                        reqs = [EmitRequest(subject(w, j), f"bench-{tag}") for j in range(i, min(i + per_tx, share))]
                        if per_tx == 1:
                            await log.emit(reqs[0].uri, reqs[0].val)
                        else:
                            await log.emit_many(reqs)
                tg.start_soon(run)
        return share * writers / (time.perf_counter() - started)
    finally:
        for log in logs:
            await log.close()


async def _backfill(log) -> tuple[int, float]:
    started, seq, n = time.perf_counter(), 0, 0
    while rows := await log.cbor_after(seq, 1000):
        seq, n = rows[-1][0], n + len(rows)
    return n, time.perf_counter() - started


async def run_backend(name: str, open_log, labels: int, singles: int) -> dict[str, float]:
    out: dict[str, float] = {}
    for writers in (1, 4):
        out[f"single x{writers}"] = await _writers(open_log, singles, 1, writers, f"s{writers}")
    for writers in (1, 4):
        out[f"batch x{writers}"] = await _writers(open_log, labels // 2, 1000, writers, f"b{writers}")
    log = await open_log()
    try:
        n, seconds = await _backfill(log)
        _, seconds2 = await _backfill(log)  # warm cache
    finally:
        await log.close()
    out["backfill labels"] = n
    out["backfill s (cold)"] = seconds
    out["backfill s (warm)"] = seconds2
    return out


async def main(labels: int, singles: int) -> None:
    configure_logging("warning")
    key = SigningKey.generate()
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.sqlite3"
        results["SQLite (FULL, WAL)"] = await run_backend(
            "sqlite", lambda: LabelLog.open(path, key, SRC, synchronous="FULL"), labels, singles)
    cluster = await anyio.to_thread.run_sync(
        lambda: PgCluster.start(settings={"fsync": "on", "full_page_writes": "on", "synchronous_commit": "on"}))
    try:
        url = await anyio.to_thread.run_sync(cluster.create_database)
        results["PostgreSQL (fsync on)"] = await run_backend(
            "postgres", lambda: PgLabelLog.open(url, key, SRC), labels, singles)
    finally:
        await anyio.to_thread.run_sync(cluster.stop)
    print(f"# {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()};"
          f" {labels} labels batched, {singles} single emits\n")
    rows = list(next(iter(results.values())))
    print("| | " + " | ".join(results) + " |")
    print("|---|" + "---:|" * len(results))
    for row in rows:
        cells = []
        for r in results.values():
            v = r[row]
            cells.append(f"{v:,.0f} labels/s" if row.startswith(("single", "batch")) else
                         f"{v:,.0f}" if row == "backfill labels" else f"{v:.2f}")
        print(f"| {row} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--labels", type=int, default=100_000,
                        help="labels written in batches (half with 1 writer, half with 4)")
    parser.add_argument("--singles", type=int, default=2000,
                        help="labels written one per transaction, per writer count")
    args = parser.parse_args()
    anyio.run(main, args.labels, args.singles, backend="asyncio")
