#!/usr/bin/env python3
"""Fill a firehose-mod data directory with N real signed labels, through the public API.

Usage:
    python3 bench/populate_ours.py --data-dir bench/results/data/ours-100000 --n 100000 \
        [--batch 1000] [--accounts 25000] [--did did:plc:oursbenchlabelerzzzzzzzz] [--synchronous NORMAL]

Labels go through `LabelLog.emit_many([EmitRequest(uri, val), ...])` in batches of `--batch`
(one transaction each), so every row is exactly what the daemon would write: signed with the
data dir's key (generated on first use), wire CBOR stored, label_state maintained. Population
runs with `synchronous=NORMAL` (the only thing changed from the defaults); the server later
opens the same file with the default FULL.

The label set is the one `bench/skyware/populate.mjs` generates for the same --n/--accounts:
    i -> uri at://did:plc:bench<base32(i % accounts, 19)>/app.bsky.feed.post/3l<base32(i, 11)>
         val ["spam","porn","sexual","nudity","gore","!hide","!warn","rude"][i % 8]
Only `cts` differs (ours is the wall clock at emit; the API does not take a cts).

A finished directory gets a `populated.json` marker; if it already holds the marker for the
same N, nothing is done (the benchmark caches populated databases this way).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import anyio

from firehose_mod.config import load_settings
from firehose_mod.daemon import open_label_log
from firehose_mod.logs import configure_logging
from firehose_mod.store.label_log import EmitRequest

VALS = ["spam", "porn", "sexual", "nudity", "gore", "!hide", "!warn", "rude"]
B32 = "abcdefghijklmnopqrstuvwxyz234567"
DEFAULT_DID = "did:plc:oursbenchlabelerzzzzzzzz"
DEFAULT_ACCOUNTS = 25000


def b32(n: int, width: int) -> str:
    out = []
    for _ in range(width):
        out.append(B32[n % 32])
        n //= 32
    return "".join(reversed(out))


def account_did(acct: int) -> str:
    return "did:plc:bench" + b32(acct, 19)


def gen_label(i: int, accounts: int) -> tuple[str, str]:
    """(uri, val) of label i; identical to populate.mjs's genLabel."""
    return f"at://{account_did(i % accounts)}/app.bsky.feed.post/3l{b32(i, 11)}", VALS[i % len(VALS)]


def marker_ok(data_dir: Path, n: int) -> bool:
    m = data_dir / "populated.json"
    if not m.exists():
        return False
    try:
        return json.loads(m.read_text()).get("n") == n
    except ValueError:
        return False


async def populate(data_dir: Path, n: int, batch: int, accounts: int, did: str, synchronous: str) -> dict:
    settings = load_settings(env={}, data_dir=data_dir, did=did, db_synchronous=synchronous, log_level="warning")
    t0 = time.perf_counter()
    written = 0
    last = t0
    async with open_label_log(settings) as label_log:
        start = await label_log.count()  # resume an interrupted run (the generator is deterministic)
        written = start
        for lo in range(start, n, batch):
            hi = min(n, lo + batch)
            out = await label_log.emit_many(EmitRequest(*gen_label(i, accounts)) for i in range(lo, hi))
            written += len(out)
            now = time.perf_counter()
            if now - last > 10:
                last = now
                print(f"  {written}/{n} ({(written - start) / (now - t0):.0f}/s)", file=sys.stderr, flush=True)
        head = await label_log.head()
        key = label_log.key.did_key
    dt = time.perf_counter() - t0
    info = {
        "n": n, "head": head, "seconds": round(dt, 2), "labels_per_s": round((n - start) / dt) if dt else None,
        "resumed_from": start, "batch": batch, "accounts": accounts, "did": did, "did_key": key,
        "synchronous": synchronous, "db_bytes": settings.db_path.stat().st_size,
    }
    if head != n:
        raise SystemExit(f"populate: expected head {n}, got {head} (is {data_dir} from another run?)")
    return info


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, required=True)
    ap.add_argument("--n", type=int, required=True)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--accounts", type=int, default=DEFAULT_ACCOUNTS)
    ap.add_argument("--did", default=DEFAULT_DID)
    ap.add_argument("--synchronous", default="NORMAL")
    ap.add_argument("--force", action="store_true", help="delete the directory and populate again")
    a = ap.parse_args(argv)
    configure_logging("warning", "json")  # emit_many logs one info line per label otherwise
    if a.force and a.data_dir.exists():
        shutil.rmtree(a.data_dir)
    if marker_ok(a.data_dir, a.n):
        print(json.dumps({"cached": True, **json.loads((a.data_dir / "populated.json").read_text())}))
        return 0
    (a.data_dir / "populated.json").unlink(missing_ok=True)
    info = anyio.run(populate, a.data_dir, a.n, a.batch, a.accounts, a.did, a.synchronous)
    (a.data_dir / "populated.json").write_text(json.dumps(info, indent=1) + "\n")
    print(json.dumps(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
