#!/usr/bin/env python3
"""Label write rate: firehose-mod's `LabelLog.emit_many` / `emit` vs @skyware/labeler's createLabels.

Usage (see bench/LABEL_WRITES.md for the runs and what they found):

    python3 bench/label_write_bench.py batched --to 5000000            # 1,000 per emit_many, rate per 100k step
    python3 bench/label_write_bench.py single --to 20000 --step 5000   # emit() one at a time from an empty log
    python3 bench/label_write_bench.py single --db DB --count 2000     # 2,000 emit()s on an existing (large) log
    python3 bench/label_write_bench.py skyware --to 100000 --step 10000
    python3 bench/label_write_bench.py import --n 1000000              # `firehose-mod import --from URL`
    python3 bench/label_write_bench.py build --to 1000000 --db DB      # a 1M-label log in plain SQL (~2 min)
    python3 bench/label_write_bench.py build --to 1000000 --db DB --schema 17   # ... at an older schema version
    python3 bench/label_write_bench.py readers --db DB --count 100     # the decision readers by subject, per call
    python3 bench/label_write_bench.py ab --version head=/tmp/head --version now=- --rounds 4 --to 30000 \
        --big-db head=M1-HEAD.db --big-db now=M1-NOW.db --big-labels 20000   # alternating A/B, CPU us a label

Every mode writes one JSON line per step to stdout and the whole run to <--work>/<mode>-<tag>-<UTC>.json
(--work: bench/results/label_writes, where the databases go too).

- `batched` and `single` call the daemon's own write path: `LabelLog.open(..., busy_wait=None)`
  (no operator pause after commits), `synchronous=FULL` (the default: each commit is durable), a
  signed label per request, label_state kept, and for `batched` the `also=` callback writing one
  decision per label in the same transaction, as the scan engine does. Logging is configured at
  `--log-level` (default warning, JSON to /dev/null). The labels are the set `populate_ours.py`
  and skyware's `populate.mjs` generate (uri at://did:plc:bench<account>/app.bsky.feed.post/3l<i>,
  25,000 accounts, 8 values), so consecutive labels hit random places of the uri indexes.
- Each step reports wall-clock labels/s and labels per CPU-second of this process plus the
  label log's signing helper process (`labels/sign_worker.py`, which signs part of each large
  batch on the other core), the share of signatures the helper made, the WAL's size and the load
  average (the machine is shared: CPU time is the steadier figure when something else runs).
  A step's requests are built before its clock starts (the bench's base32 uris cost ~10 us a
  label, which is not the write path's).
- `build` fills --db (fresh) with --to labels in plain SQL, for `batched --resume` onto a large log
  without writing it label by label: the bench's label set in seq order, random 64-byte sigs and
  230-byte CBOR, a `label_state` row and a decision per label (the bench's), every index filled
  in seq order as the real path fills them. The labels are not verifiable (it is only the size
  and the shape of the indexes that matter); `single --db` and `batched --resume` write real ones on top.
  `--schema N` stops the schema at version N (e.g. 17, still with `decisions_uri`: HEAD's copy in an
  A/B of migration 18; a copy for the code now is migrated by its first open, or `open_db` before).
- `readers` times the decision readers by subject (`automatic_values`, `overruled`, `history`,
  `uris_under` of the subject's account) on `--count` seeded random subjects of --db, per call.
- `ab` runs `batched` in a fresh process per (version, size), versions alternating (ABBA...): each
  `--version NAME=PATH` puts PATH first on PYTHONPATH (e.g. `git archive HEAD firehose_mod | tar -x
  -C PATH`; `-` is this tree), writes `--to` labels into a fresh log, then (with `--big-db NAME=DB`,
  a copy of a `build` log for each version: a newer schema cannot be opened by older code)
  `--big-labels` more onto it; one row per run with the writer's and the helper's CPU us a label.
- `skyware` runs `LabelerServer#createLabels({uri}, {create: [val]})` one label at a time in node,
  on a fresh database (@skyware/labeler 0.2.0 from bench/skyware, `bash bench/skyware/install.sh`).
- `import` populates a source data directory with `--n` labels (emit_many, NORMAL: it is only the
  source), serves it with `firehose-mod serve`, and times `firehose-mod import --from URL
  --no-verify` into an empty data directory, the operator command as an operator runs it.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import anyio

from firehose_mod.labels.signing import SigningKey
from firehose_mod.logs import configure_logging
from firehose_mod.store.decisions import DecisionRow
from firehose_mod.store.label_log import EmitRequest, LabelLog
from populate_ours import DEFAULT_ACCOUNTS, DEFAULT_DID
from populate_ours import gen_label as populate_gen_label  # bench/ is on sys.path as the script's folder

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
SKYWARE = HERE / "skyware"
ACCOUNTS = DEFAULT_ACCOUNTS
DID = DEFAULT_DID


def gen_label(i: int) -> tuple[str, str]:
    """(uri, val) of label i: the same set as populate_ours.py and skyware/populate.mjs."""
    return populate_gen_label(i, ACCOUNTS)


def fresh(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def cpu() -> float:
    t = os.times()
    return t.user + t.system


def emit(row: dict) -> None:
    print(json.dumps(row), flush=True)


async def _record(decisions, written) -> None:
    """One decision per label, as the scan engine's `also=` writes them."""
    await decisions.write([
        DecisionRow(s.label.uri, s.label.cid, "label", s.label.val, origin="policy", rule="bench",
                    policy_version="bench", scanners={"bench": "1"},
                    evidence=[{"scanner": "bench", "kind": "bench", "score": 1.0}], label_seq=s.seq)
        for s in written
    ])


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


def _signer_stats(log: LabelLog) -> dict:
    signer = getattr(log, "_signer", None)
    return dict(signer.stats) if signer is not None else {}


def _helper_cpu(log: LabelLog) -> float:
    """CPU seconds (user + system) of the label log's signing helper process, if it runs: it
    signs part of each batch on the other core, so its time counts in labels per CPU-second."""
    proc = getattr(getattr(log, "_signer", None), "_proc", None)
    if proc is None:
        return 0.0
    try:
        fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _open(db: Path, pragmas: list[str]) -> LabelLog:
    log = await LabelLog.open(db, SigningKey.generate(), DID, synchronous="FULL", busy_wait=None)
    for p in pragmas:  # for A/B runs only
        await log._writer.execute(f"PRAGMA {p}")
    return log


async def batched(a: argparse.Namespace) -> list[dict]:
    db = Path(a.db)
    if not a.resume:
        fresh(db)
    log = await _open(db, a.pragma)
    rows = []
    try:
        n = await log.count()
        also = _record if a.decisions else None
        while n < a.to:
            end = min(a.to, n + a.step)
            # The step's requests are made before the clock starts: making the bench's uris
            # (base32 of i) cost ~10 us a label, which is not the write path's.
            batches = [[EmitRequest(*gen_label(i)) for i in range(lo, min(end, lo + a.batch))]
                       for lo in range(n, end, a.batch)]
            signed0 = dict(_signer_stats(log))
            t0, c0, h0 = time.perf_counter(), cpu(), _helper_cpu(log)
            for requests in batches:
                await log.emit_many(requests, also=also)
            dt, dc, dh = time.perf_counter() - t0, cpu() - c0, _helper_cpu(log) - h0
            signed = {k: v - signed0.get(k, 0) for k, v in _signer_stats(log).items()}
            row = {"mode": "batched", "at": n, "labels": end - n, "seconds": round(dt, 2),
                   "labels_per_s": round((end - n) / dt), "labels_per_cpu_s": round((end - n) / (dc + dh)),
                   "cpu_s": round(dc, 2), "helper_cpu_s": round(dh, 2),
                   "signed_by_helper": round(signed.get("helper", 0) / max(1, sum(signed.values())), 2),
                   "db_mb": round(db.stat().st_size / 1e6), "wal_mb": round(_size(f"{db}-wal") / 1e6),
                   "load1": round(os.getloadavg()[0], 1)}
            emit(row)
            rows.append(row)
            n = end
        if await log.head() != n:
            raise SystemExit(f"head {await log.head()} != {n}")
    finally:
        await log.close()
    return rows


async def single(a: argparse.Namespace) -> list[dict]:
    db = Path(a.db)
    if a.count is None:
        fresh(db)
    log = await _open(db, a.pragma)
    rows = []
    try:
        n = await log.count()
        steps = [(n, a.count)] if a.count is not None else [(k, a.step) for k in range(0, a.to, a.step)]
        for at, count in steps:
            t0, c0 = time.perf_counter(), cpu()
            for i in range(count):
                # new subjects past anything `batched` wrote, so each emit writes a label
                await log.emit(*gen_label(10_000_000 + at + i))
            dt, dc = time.perf_counter() - t0, cpu() - c0
            row = {"mode": "single", "at": at, "labels": count, "seconds": round(dt, 2),
                   "labels_per_s": round(count / dt), "labels_per_cpu_s": round(count / dc),
                   "ms_per_emit": round(dt / count * 1000, 3)}
            emit(row)
            rows.append(row)
    finally:
        await log.close()
    return rows


SKYWARE_JS = r"""
import { LabelerServer } from "@skyware/labeler";
const [dbPath, to, step] = process.argv.slice(2).map((x, k) => (k ? Number(x) : x));
const VALS = ["spam", "porn", "sexual", "nudity", "gore", "!hide", "!warn", "rude"];
const B32 = "abcdefghijklmnopqrstuvwxyz234567";
const b32 = (n, w) => { let s = ""; for (let k = 0; k < w; k++) { s = B32[n % 32] + s; n = Math.floor(n / 32); } return s; };
const server = new LabelerServer({ did: "did:plc:skywarebenchlabeler0000", signingKey: process.env.SKYWARE_SIGNING_KEY, dbPath });
await server.dbInitLock;
for (let n = 0; n < to; n += step) {
  const t0 = performance.now(), c0 = process.cpuUsage();
  for (let i = n; i < n + step; i++) {
    const uri = `at://did:plc:bench${b32(i % 25000, 19)}/app.bsky.feed.post/3l${b32(i, 11)}`;
    await server.createLabels({ uri }, { create: [VALS[i % 8]] });
  }
  const dt = (performance.now() - t0) / 1000, c = process.cpuUsage(c0), dc = (c.user + c.system) / 1e6;
  console.log(JSON.stringify({ mode: "skyware", at: n, labels: step, seconds: +dt.toFixed(2),
    labels_per_s: Math.round(step / dt), labels_per_cpu_s: Math.round(step / dc) }));
}
server.db.close();
process.exit(0);
"""


def skyware(a: argparse.Namespace) -> list[dict]:
    db = Path(a.db)
    fresh(db)
    env = {**os.environ, "SKYWARE_SIGNING_KEY": secrets.token_hex(32)}
    script = SKYWARE / "write_bench.tmp.mjs"  # inside bench/skyware so that node finds its node_modules
    script.write_text(SKYWARE_JS)
    rows = []
    try:
        proc = subprocess.Popen(["node", str(script), str(db), str(a.to), str(a.step)], cwd=SKYWARE, env=env,
                                stdout=subprocess.PIPE, text=True)
        for line in proc.stdout:
            row = json.loads(line)
            emit(row)
            rows.append(row)
        if proc.wait():
            raise SystemExit(f"skyware run failed: exit {proc.returncode}")
    finally:
        script.unlink(missing_ok=True)
    return rows


def build(a: argparse.Namespace) -> list[dict]:
    """A log of `--to` labels shaped as `batched` leaves one (see the module docstring), in plain SQL."""
    import sqlite3

    db = Path(a.db)
    fresh(db)
    if a.page_size:  # a new file's page size is set before its first table (see LABEL_WRITES.md, fifth pass)
        with sqlite3.connect(db) as conn:
            conn.execute(f"PRAGMA page_size = {int(a.page_size)}")
            conn.execute("PRAGMA journal_mode = WAL")

    async def migrate() -> None:
        await (await LabelLog.open(db, SigningKey.generate(), DID)).close()

    if a.schema:  # an older schema (e.g. 17: decisions_uri, for HEAD's copy in an A/B of migration 18)
        from firehose_mod.store.db import _statements
        from firehose_mod.store.migrations import MIGRATIONS

        with sqlite3.connect(db) as conn:
            conn.execute("PRAGMA journal_mode = WAL")
            for script in MIGRATIONS[: a.schema]:
                for statement in _statements(script):
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {a.schema}")
    else:
        anyio.run(migrate)
    t0 = time.perf_counter()
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA synchronous = OFF")
    conn.execute("PRAGMA cache_size = -1000000")
    key_id = SigningKey.generate().did_key
    evidence, scanners = json.dumps([{"scanner": "bench", "kind": "bench", "score": 1.0}]), json.dumps({"bench": "1"})
    for lo in range(0, a.to, 100_000):
        hi = min(a.to, lo + 100_000)
        labels = [(i + 1, *gen_label(i)) for i in range(lo, hi)]
        cts = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO labels (seq, src, uri, cid, val, neg, cts, exp, sig, key_id, cbor)"
                         " VALUES (?, ?, ?, NULL, ?, 0, ?, NULL, ?, ?, ?)",
                         ((seq, DID, u, v, cts, os.urandom(64), key_id, os.urandom(230)) for seq, u, v in labels))
        conn.executemany("INSERT INTO label_state (uri, val, src, seq) VALUES (?, ?, ?, ?)",
                         ((u, v, DID, seq) for seq, u, v in labels))
        conn.executemany("INSERT INTO decisions (uri, cid, action, value, origin, rule, policy_version,"
                         " scanners, evidence, label_seq, actor, reason, created) VALUES"
                         " (?, NULL, 'label', ?, 'policy', 'bench', 'bench', ?, ?, ?, NULL, NULL, ?)",
                         ((u, v, scanners, evidence, seq, cts) for seq, u, v in labels))
        conn.execute("COMMIT")
        emit({"mode": "build", "labels": hi, "seconds": round(time.perf_counter() - t0, 1)})
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    row = {"mode": "build", "labels": a.to, "seconds": round(time.perf_counter() - t0, 1),
           "db_mb": round(db.stat().st_size / 1e6)}
    emit(row)
    return [row]


async def readers(a: argparse.Namespace) -> list[dict]:
    """CPU and wall per call of the decision readers by subject on --db (run under each version's
    PYTHONPATH on its own copy): `--count` random labelled subjects (seeded: the same for every
    version), `automatic_values`, `overruled`, `history`, and `uris_under` of each one's account
    (40 uris at 1M). Read-only."""
    import random
    import sqlite3

    from firehose_mod.store.decisions import DecisionStore

    with sqlite3.connect(f"file:{a.db}?mode=ro", uri=True) as conn:
        (head,) = conn.execute("SELECT max(seq) FROM labels").fetchone()
        rnd = random.Random(19)
        subjects = [conn.execute("SELECT uri FROM labels WHERE seq = ?", (rnd.randint(1, head),)).fetchone()[0]
                    for _ in range(a.count or 100)]
    store = await DecisionStore.open(Path(a.db), readonly=True)
    rows = []
    try:
        calls = {
            "automatic_values": lambda u: store.automatic_values(u),
            "overruled": lambda u: store.overruled(u, None),
            "history": lambda u: store.history(u),
            "uris_under": lambda u: store.uris_under(u.rsplit("/", 2)[0] + "/"),
        }
        for name, call in calls.items():
            for u in subjects:  # warm SQLite's page cache and the statement cache: the timed pass reads no file
                await call(u)
            t0, c0 = time.perf_counter(), cpu()
            found = 0
            for u in subjects:
                found += len(await call(u))
            row = {"mode": "readers", "reader": name, "calls": len(subjects), "rows": found,
                   "wall_us": round((time.perf_counter() - t0) / len(subjects) * 1e6, 1),
                   "cpu_us": round((cpu() - c0) / len(subjects) * 1e6, 1), "load1": round(os.getloadavg()[0], 1)}
            emit(row)
            rows.append(row)
    finally:
        await store.close()
    return rows


def ab(a: argparse.Namespace) -> list[dict]:
    """Alternating A/B of code versions (see the module docstring)."""
    import sqlite3

    versions = [v.split("=", 1) for v in a.version]
    big = dict(v.split("=", 1) for v in a.big_db)
    rows = []

    def run(name: str, path: str, db: str, args: list[str]) -> dict:
        env = {**os.environ}
        if path != "-":
            env["PYTHONPATH"] = path + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        cmd = [sys.executable, __file__, "batched", "--db", db, "--work", a.work, "--batch", str(a.batch), *args,
               *([] if a.decisions else ["--no-decisions"])]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if out.returncode:
            raise SystemExit(f"{name}: {out.stderr[-2000:]}")
        steps = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
        n = sum(r["labels"] for r in steps)
        return {"mode": "ab", "version": name, "at": steps[0]["at"], "labels": n,
                "writer_us": round(sum(r["cpu_s"] for r in steps) / n * 1e6, 1),
                "helper_us": round(sum(r["helper_cpu_s"] for r in steps) / n * 1e6, 1),
                "labels_per_s": round(n / sum(r["seconds"] for r in steps)),
                "signed_by_helper": steps[-1]["signed_by_helper"], "load1": steps[-1]["load1"],
                "utc": time.strftime("%H:%M:%S", time.gmtime())}

    for rnd in range(1, a.rounds + 1):
        for name, path in versions if rnd % 2 else versions[::-1]:
            db = Path(a.work) / f"ab-{name}.db"
            fresh(db)
            runs = [(str(db), ["--to", str(a.to), "--step", str(a.to)])]
            if name in big:
                with sqlite3.connect(big[name]) as conn:
                    (head,) = conn.execute("SELECT coalesce(max(seq), 0) FROM labels").fetchone()
                runs.append((big[name], ["--resume", "--to", str(head + a.big_labels), "--step", str(a.big_labels)]))
            for target, args in runs:
                row = {**run(name, path, target, args), "round": rnd}
                emit(row)
                rows.append(row)
    return rows


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cli_env(data_dir: Path, port: int | None = None) -> dict:
    env = {**os.environ, "FIREHOSE_MOD_DATA_DIR": str(data_dir), "FIREHOSE_MOD_DID": DID,
           "FIREHOSE_MOD_LOG_LEVEL": "warning"}
    if port is not None:
        env["FIREHOSE_MOD_PORT"] = str(port)
    return env


async def _populate_source(data_dir: Path, n: int) -> None:
    from firehose_mod.config import load_settings
    from firehose_mod.daemon import open_label_log

    settings = load_settings(env={}, data_dir=data_dir, did=DID, db_synchronous="NORMAL", log_level="warning")
    async with open_label_log(settings, daemon=True) as log:
        for lo in range(await log.count(), n, 1000):
            await log.emit_many([EmitRequest(*gen_label(i)) for i in range(lo, min(n, lo + 1000))])


def import_run(a: argparse.Namespace) -> list[dict]:
    source, target = Path(a.work) / f"import-source-{a.n}", Path(a.work) / "import-target"
    marker = source / "populated.n"
    if not (marker.exists() and marker.read_text() == str(a.n)):
        shutil.rmtree(source, ignore_errors=True)
        t0 = time.perf_counter()
        anyio.run(_populate_source, source, a.n)
        marker.write_text(str(a.n))
        emit({"mode": "import-source", "labels": a.n, "seconds": round(time.perf_counter() - t0, 1)})
    shutil.rmtree(target, ignore_errors=True)
    port = _free_port()
    with open(Path(a.work) / "import-serve.log", "w") as serve_log:
        server = subprocess.Popen([sys.executable, "-m", "firehose_mod", "serve"], env=_cli_env(source, port),
                                  stdout=subprocess.DEVNULL, stderr=serve_log)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit("firehose-mod serve did not start: see import-serve.log") from None
                time.sleep(0.2)
        cmd = [sys.executable, "-m", "firehose_mod", "import", "--from", f"http://127.0.0.1:{port}", "--no-verify",
               "--json", *(["--stream"] if a.stream else [])]
        t0, c0 = time.perf_counter(), os.times()
        out = subprocess.run(cmd, env=_cli_env(target), capture_output=True, text=True, check=False)
        dt = time.perf_counter() - t0
        c1 = os.times()
        if out.returncode:
            raise SystemExit(f"import failed ({out.returncode}): {out.stderr[-2000:]}")
        report = json.loads(out.stdout)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)
    row = {"mode": "import", "labels": a.n, "via": "stream" if a.stream else "query", "seconds": round(dt, 1),
           "labels_per_s": round(a.n / dt), "import_cpu_s": round(c1.children_user + c1.children_system
                                                                - c0.children_user - c0.children_system, 1),
           "written": report.get("written"), "read": report.get("read")}
    emit(row)
    return [row]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["batched", "single", "skyware", "import", "build", "ab", "readers"])
    ap.add_argument("--to", type=int, default=5_000_000, help="write labels until the log holds this many")
    ap.add_argument("--step", type=int, default=100_000, help="report the rate every this many labels")
    ap.add_argument("--batch", type=int, default=1000, help="labels per emit_many")
    ap.add_argument("--count", type=int, help="single: this many emit()s on the existing --db instead of 0..--to")
    ap.add_argument("--n", type=int, default=1_000_000, help="import: labels in the source")
    ap.add_argument("--stream", action="store_true", help="import: read the source's subscribeLabels, not queryLabels")
    ap.add_argument("--db", default=None, help="database file (default under --work)")
    ap.add_argument("--work", default=str(RESULTS / "label_writes"), help="where databases go")
    ap.add_argument("--resume", action="store_true", help="batched: go on from the labels already in --db")
    ap.add_argument("--no-decisions", dest="decisions", action="store_false",
                    help="batched: no also= callback (labels only)")
    ap.add_argument("--pragma", action="append", default=[], help="an extra PRAGMA on the writer (A/B runs)")
    ap.add_argument("--version", action="append", default=[],
                    help="ab: NAME=PATH (PATH first on PYTHONPATH; - = this tree)")
    ap.add_argument("--rounds", type=int, default=4, help="ab: rounds, the versions' order reversed every other round")
    ap.add_argument("--big-db", action="append", default=[], help="ab: NAME=DB, a large log for version NAME")
    ap.add_argument("--big-labels", type=int, default=20_000, help="ab: labels written onto each --big-db a round")
    ap.add_argument("--schema", type=int, default=0,
                    help="build: stop at this schema version (e.g. 17, for a version before migration 18)")
    ap.add_argument("--page-size", type=int, default=0, help="build: the new file's page size (default: SQLite's)")
    ap.add_argument("--log-level", default="warning")
    ap.add_argument("--tag", default="", help="a name for this run in the results file")
    a = ap.parse_args(argv)
    Path(a.work).mkdir(parents=True, exist_ok=True)
    a.db = a.db or str(Path(a.work) / f"{a.mode}.db")
    if a.mode in ("batched", "single"):  # the log lines go nowhere (rendered all the same); errors still show
        stderr, sys.stderr = sys.stderr, open(os.devnull, "w")  # noqa: SIM115 - open for the whole run
        configure_logging(a.log_level, "json")
        sys.stderr = stderr
    else:
        configure_logging(a.log_level, "json")
    if a.mode == "skyware":
        rows = skyware(a)
    elif a.mode == "import":
        rows = import_run(a)
    elif a.mode == "build":
        rows = build(a)
    elif a.mode == "ab":
        rows = ab(a)
    elif a.mode == "readers":
        rows = anyio.run(readers, a)
    else:
        rows = anyio.run(batched if a.mode == "batched" else single, a)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out = Path(a.work) / f"{a.mode}{'-' + a.tag if a.tag else ''}-{stamp}.json"
    out.write_text(json.dumps({"args": vars(a), "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
