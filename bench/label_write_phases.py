#!/usr/bin/env python3
"""Where a batched label write spends its wall time, phase by phase (issue 19, fifth pass).

    python3 bench/label_write_phases.py DB N            # N labels into a fresh log at DB
    python3 bench/label_write_phases.py DB N --resume   # N more onto DB (e.g. a `label_write_bench.py build` log)
    python3 bench/label_write_phases.py DB N --pragma mmap_size=17179869184   # an extra PRAGMA on the writer

The same writes as `label_write_bench.py batched` (1,000 labels an `emit_many`, a decision a label
through `also=`, FULL), with the label log's steps wrapped in timers: the microseconds a label each
step took (wall, inclusive: a step's line includes the steps it calls). `_prepare_sync` (state read,
seqs, signing begun, label_state and label_prev), `_record` (the `also=` callback: the bench's
DecisionRows, `decision_rows`' JSON, `_insert_sync`), `_finish_sync` (`finish`: the signatures the
helper has not made yet, then the wire CBOR and the `labels` rows), `sql commit`, `ckpt_wait`.
A profiler for the writer, not a benchmark: the timers cost ~1 us a label.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import sys
import time
from pathlib import Path

import label_write_bench as bench  # bench/ is on sys.path as the script's folder

import firehose_mod.labels.sign_worker as sign_worker
from firehose_mod.store import db as db_module
from firehose_mod.store import wal_checkpoint
from firehose_mod.store import decisions as decisions_module
from firehose_mod.store import label_log as label_log_module

SPENT: collections.Counter = collections.Counter()


def _timed(owner, name: str, key: str | None = None) -> None:
    fn, key = getattr(owner, name), key or name
    if asyncio.iscoroutinefunction(fn):
        async def timed(*args, **kwargs):
            t = time.perf_counter()
            try:
                return await fn(*args, **kwargs)
            finally:
                SPENT[key] += time.perf_counter() - t
    else:
        def timed(*args, **kwargs):
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                SPENT[key] += time.perf_counter() - t
    setattr(owner, name, timed)


def _instrument() -> None:
    log_cls = label_log_module.LabelLog
    for name in ("emit_many", "_append", "_currents", "_prepare_sync", "_finish_sync"):
        _timed(log_cls, name)
    _timed(wal_checkpoint.Checkpointer, "wait", "ckpt_wait")
    for name in ("decision_rows", "_insert_sync", "write_decisions"):
        _timed(decisions_module, name)
    _timed(sign_worker.ParallelSigner, "begin")
    _timed(sign_worker.ParallelSigner, "finish")
    _timed(bench, "_record")
    retry_busy = db_module.retry_busy

    async def timed_retry(op, *, what, **kwargs):  # BEGIN IMMEDIATE and COMMIT go through it
        t = time.perf_counter()
        try:
            return await retry_busy(op, what=what, **kwargs)
        finally:
            SPENT["sql " + what] += time.perf_counter() - t

    db_module.retry_busy = timed_retry


async def run(db: Path, n_new: int, resume: bool, pragmas: list[str]) -> None:
    if not resume:
        bench.fresh(db)
    log = await bench._open(db, pragmas)
    try:
        n = await log.head()
        batches = [[bench.EmitRequest(*bench.gen_label(i)) for i in range(lo, min(n + n_new, lo + 1000))]
                   for lo in range(n, n + n_new, 1000)]
        SPENT.clear()
        t0, c0 = time.perf_counter(), bench.cpu()
        for requests in batches:
            await log.emit_many(requests, also=bench._record)
        dt, dc = time.perf_counter() - t0, bench.cpu() - c0
    finally:
        await log.close()
    print(f"at {n}: {n_new / dt:.0f} labels/s, wall {dt / n_new * 1e6:.1f} us a label, "
          f"writer CPU {dc / n_new * 1e6:.1f} us a label")
    for key, seconds in SPENT.most_common():
        print(f"  {key:18s} {seconds / n_new * 1e6:7.1f} us a label")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("db")
    ap.add_argument("n", type=int, help="labels to write")
    ap.add_argument("--resume", action="store_true", help="write onto the labels already in DB")
    ap.add_argument("--pragma", action="append", default=[], help="an extra PRAGMA on the writer")
    a = ap.parse_args()
    bench.configure_logging("warning", "json")
    _instrument()
    asyncio.run(run(Path(a.db), a.n, a.resume, a.pragma))
    return 0


if __name__ == "__main__":
    sys.exit(main())
