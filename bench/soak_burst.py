"""The soak's label burst: N labels written into a running daemon's log from another process.

    python3 bench/soak_burst.py --config DATA_DIR/soak.toml --n 25000 [--batch 500]

This is how an operator's `rescan --apply` or `label emit` reaches a running daemon: the same
database, `LabelLog.emit_many` (signed with the data dir's key, one transaction per batch, the
daemon's busy timeout), and the daemon's feed picks the new rows up within `[stream]
poll_interval` and fans them out. The label set is the stream benchmark's (bench/populate_ours.py
`gen_label`, distinct (uri, val) pairs), offset by `--offset` so a second burst never repeats one.

stdout: one JSON line: labels written, first and last seq, seconds, labels/s, slowest batch.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
for p in (str(HERE.parent), str(HERE)):
    if p not in sys.path:
        sys.path.insert(0, p)

import anyio  # noqa: E402

from firehose_mod.config import load_settings  # noqa: E402
from firehose_mod.daemon import open_label_log  # noqa: E402
from firehose_mod.logs import configure_logging  # noqa: E402
from firehose_mod.store.label_log import EmitRequest  # noqa: E402
from populate_ours import DEFAULT_ACCOUNTS, gen_label  # noqa: E402


async def burst(config: Path, n: int, batch: int, offset: int) -> dict:
    settings = load_settings(config, env={})
    t0 = time.perf_counter()
    written, first, last, slowest = 0, None, None, 0.0
    async with open_label_log(settings) as label_log:
        for lo in range(offset, offset + n, batch):
            hi = min(offset + n, lo + batch)
            b0 = time.perf_counter()
            out = await label_log.emit_many(EmitRequest(*gen_label(i, DEFAULT_ACCOUNTS)) for i in range(lo, hi))
            slowest = max(slowest, time.perf_counter() - b0)
            if out:
                first = first if first is not None else out[0].seq
                last = out[-1].seq
            written += len(out)
    dt = time.perf_counter() - t0
    return {"written": written, "first_seq": first, "last_seq": last, "seconds": round(dt, 2),
            "labels_per_s": round(written / dt) if dt else None, "batch": batch, "slowest_batch_s": round(slowest, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", type=Path, required=True)
    ap.add_argument("--n", type=int, default=25_000)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--offset", type=int, default=0)
    a = ap.parse_args()
    configure_logging("warning", "json")  # emit_many logs one info line per label otherwise
    print(json.dumps(anyio.run(burst, a.config, a.n, a.batch, a.offset)), flush=True)


if __name__ == "__main__":
    main()
