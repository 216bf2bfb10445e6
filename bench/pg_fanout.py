#!/usr/bin/env python3
"""Live fan-out to thousands of subscribers: PostgreSQL with one and with two stream servers,
beside SQLite with one server, in one run (issue 17, point 6).

    python3 bench/pg_fanout.py                  # 2,000 subscribers, the default write phases
    python3 bench/pg_fanout.py --small          # 100 subscribers, short phases: a smoke run
    python3 bench/pg_fanout.py --configs pg1,pg2 --subs 1000 --phases 10:1:10,100:10:10

Configurations, each on a fresh log, all started before the first phase; each phase then runs on
each configuration in turn (a different one first each phase), so that a change in a shared
machine's load hits all of them alike:
- sqlite1: one process that writes and serves, as `firehose-mod run` does on SQLite (the writer
  below runs inside the server's event loop, after `open_label_log(daemon=True)` +
  `run_server`, exactly what `firehose-mod serve` starts); its CPU therefore includes the writes;
- pg1 / pg2: one / two real `python -m firehose_mod serve` processes with
  FIREHOSE_MOD_DATABASE_URL on a throwaway PostgreSQL (tests/helpers/pg.py, fsync and
  synchronous_commit on), and one writer process (PgLabelLog.open, as `label emit` or a scan
  worker writes); the servers learn of the commits by LISTEN/NOTIFY.
All sign with one key file, so no server re-signs on the way out.

Subscribers: `--subs` minimal asyncio WebSocket clients (no `websockets` library: its per-frame
cost would measure the client) in `--client-procs` processes, spread evenly over the servers,
all with cursor=0 on the empty log before the first write. Each records the seq of every
`#labels` frame (read from the DAG-CBOR bytes; every subscriber's first frame fully decoded to
check that) and its arrival time (time.time_ns() when the bytes were read), answers pings, and
checks that the seqs are 1, 2, 3, ... with no gap, duplicate or reordering.

Write phases `RATE:BATCH:SECONDS` (labels/s, labels per transaction, duration): the writer
calls `emit_many` of BATCH labels every BATCH/RATE s (back to back when it falls behind) and
records each label's seq with the wall-clock time just before the call and just after it
returned (committed). After each phase the orchestrator waits until every subscriber has every
label, then reads the CPU time of each process from /proc (servers, writer, client processes,
all PostgreSQL processes), the machine's busy share from /proc/stat and `uptime`; server RSS is
polled every 0.25 s.

Per phase it reports: latency from commit to receipt (the write call's return, so the commit
is inside; and from the call, which adds the write itself) p50/p95/p99/max over every
(label, subscriber) pair; frames delivered per second (labels x subscribers, from the first
write call to the last receipt); server CPU (cores busy, and us of server CPU per frame
delivered); RSS per server. Results: bench/results/pg-fanout-<UTC>.json and .md.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import resource
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from array import array
from datetime import UTC, datetime
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SUBSCRIBE = "/xrpc/com.atproto.label.subscribeLabels"
SRC = "did:web:fanout.bench.example"
CONFIGS = {"sqlite1": ("sqlite", 1), "pg1": ("postgres", 1), "pg2": ("postgres", 2)}
# The burst is in transactions of 50: from 96 labels a batch the SQLite writer signs through a helper
# process whose pipe it watches with select(), which fails with more than 1,024 descriptors open
# (the 2,000 subscriber sockets of sqlite1): ValueError out of emit_many (see the report of this
# benchmark in bench/POSTGRES.md).
DEFAULT_PHASES = "5:1:10,20:1:10,200:10:5,1000:50:1"
SMALL_PHASES = "10:1:3,100:1:3,500:10:3"


def log(*a) -> None:
    print(f"[{time.strftime('%H:%M:%S')}]", *a, file=sys.stderr, flush=True)


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def parse_phases(text: str) -> list[tuple[float, int, float]]:
    out = []
    for part in text.split(","):
        rate, batch, seconds = part.split(":")
        out.append((float(rate), int(batch), float(seconds)))
    return out


# =============================================================================== subscribers
def _client_frame(opcode: int, payload: bytes) -> bytes:
    key = os.urandom(4)
    assert len(payload) < 126
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


class Sub(asyncio.Protocol):
    """One subscriber: seqs checked as they come (expected 1, 2, ...), arrival time per label."""

    def __init__(self, n: int, host: str, port: int, ready: asyncio.Future):
        from firehose_mod.server.frames import LABELS_HEADER

        self.n, self.host, self.port, self.ready = n, host, port, ready
        self.header = LABELS_HEADER
        self.hl = len(LABELS_HEADER)
        self.buf = bytearray()
        self.open = False
        self.transport = None
        self.expected = 1
        self.recv_us = array("q")  # arrival time of seq k+1 at index k
        self.anomalies: list[tuple[int, int]] = []  # (expected, got)
        self.other_frames = 0
        self.decoded_ok: bool | None = None
        self.closed_by_server = False
        self.lost = False

    def connection_made(self, transport) -> None:
        self.transport = transport
        key = base64.b64encode(os.urandom(16)).decode()
        transport.write(
            f"GET {SUBSCRIBE}?cursor=0 HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"User-Agent: pg-fanout/{self.n}\r\n\r\n".encode())

    def data_received(self, data: bytes) -> None:
        t = time.time_ns() // 1000
        buf = self.buf
        buf += data
        if not self.open:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            status = bytes(buf[:end]).split(b"\r\n", 1)[0]
            del buf[:end + 4]
            if b" 101 " not in status:
                if not self.ready.done():
                    self.ready.set_exception(RuntimeError(f"handshake: {status!r}"))
                self.transport.close()
                return
            self.open = True
            if not self.ready.done():
                self.ready.set_result(True)
        pos, size, hl, header = 0, len(buf), self.hl, self.header
        while size - pos >= 2:
            ln, hdr = buf[pos + 1] & 0x7F, 2
            if ln == 126:
                if size - pos < 4:
                    break
                ln, hdr = struct.unpack_from(">H", buf, pos + 2)[0], 4
            elif ln == 127:
                if size - pos < 10:
                    break
                ln, hdr = struct.unpack_from(">Q", buf, pos + 2)[0], 10
            end = pos + hdr + ln
            if end > size:
                break
            op = buf[pos] & 0x0F
            p = pos + hdr
            if op == 2:
                seq = None
                # {"seq": N, "labels": [...]}: a 2-entry map whose first key is "seq"
                if buf[p:p + hl] == header and buf[p + hl:p + hl + 5] == b"\xa2\x63seq":
                    b = buf[p + hl + 5]
                    if b < 0x18:
                        seq = b
                    else:
                        w = {0x18: 1, 0x19: 2, 0x1A: 4, 0x1B: 8}.get(b)
                        if w:
                            seq = int.from_bytes(buf[p + hl + 6:p + hl + 6 + w], "big")
                if seq is None:
                    self.other_frames += 1
                else:
                    if self.decoded_ok is None:
                        self._check_decode(bytes(buf[p:end]), seq)
                    if seq == self.expected:
                        self.recv_us.append(t)
                        self.expected += 1
                    elif len(self.anomalies) < 100:
                        self.anomalies.append((self.expected, seq))
            elif op == 9:
                self.transport.write(_client_frame(0xA, bytes(buf[p:end])))
            elif op == 8:
                self.closed_by_server = True
            pos = end
        if pos:
            del buf[:pos]

    def _check_decode(self, payload: bytes, seq: int) -> None:
        import libipld

        try:
            header, body = libipld.decode_dag_cbor_multi(payload)[:2]
            self.decoded_ok = header == {"op": 1, "t": "#labels"} and body["seq"] == seq and len(body["labels"]) == 1
        except Exception:  # noqa: BLE001 - a finding, reported
            self.decoded_ok = False

    def connection_lost(self, exc) -> None:
        self.lost = True
        if not self.ready.done():
            self.ready.set_exception(RuntimeError(f"connection lost before the handshake: {exc}"))


async def clients_main(ports: list[int], subs: int, first: int) -> None:
    """`--worker clients`: connect, print `ready N`, then answer `stats` / `report FILE OUT` / `quit`."""
    import numpy as np

    loop = asyncio.get_running_loop()
    sem = asyncio.Semaphore(100)
    conns: list[Sub] = []
    errors: list[str] = []

    async def one(i: int) -> None:
        port = ports[(first + i) % len(ports)]
        async with sem:
            ready = loop.create_future()
            sub = Sub(first + i, "127.0.0.1", port, ready)
            try:
                await loop.create_connection(lambda: sub, "127.0.0.1", port)
                await asyncio.wait_for(ready, 60)
            except Exception as exc:  # noqa: BLE001
                errors.append(repr(exc))
                return
        conns.append(sub)

    t0 = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(subs)))
    print(json.dumps({"ready": len(conns), "errors": errors[:5], "n_errors": len(errors),
                      "connect_s": round(time.perf_counter() - t0, 2)}), flush=True)
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            break
        cmd, *args = line.split()
        if cmd == "stats":
            counts = [len(c.recv_us) for c in conns]
            print(json.dumps({"min": min(counts, default=0), "max": max(counts, default=0),
                              "open": sum(c.open and not c.lost for c in conns),
                              "anomalies": sum(len(c.anomalies) for c in conns),
                              "cpu_s": round(time.process_time(), 2)}), flush=True)
        elif cmd == "report":
            commits = np.load(args[0])  # columns: seq, phase, call_us, commit_us (sorted by seq)
            out = args[1]
            n = len(commits)
            assert n == 0 or (commits[:, 0] == np.arange(1, n + 1)).all(), "commit table not 1..N"
            phases = commits[:, 1]
            lat_commit: dict[int, list] = {}
            lat_call: dict[int, list] = {}
            last_recv: dict[int, int] = {}
            for c in conns:
                r = np.frombuffer(c.recv_us, dtype=np.int64)[:n]
                k = len(r)
                for ph in np.unique(phases[:k]):
                    m = phases[:k] == ph
                    lat_commit.setdefault(int(ph), []).append(((r[m] - commits[:k, 3][m]) / 1000).astype(np.float32))
                    lat_call.setdefault(int(ph), []).append(((r[m] - commits[:k, 2][m]) / 1000).astype(np.float32))
                    last_recv[int(ph)] = max(last_recv.get(int(ph), 0), int(r[m].max()))
            for ph in lat_commit:
                np.save(f"{out}-p{ph}-commit.npy", np.concatenate(lat_commit[ph]))
                np.save(f"{out}-p{ph}-call.npy", np.concatenate(lat_call[ph]))
            counts = [len(c.recv_us) for c in conns]
            print(json.dumps({
                "subscribers": len(conns), "expected_each": n,
                "exact": sum(len(c.recv_us) == n and not c.anomalies and c.other_frames == 0 for c in conns),
                "min_count": min(counts, default=0), "max_count": max(counts, default=0),
                "anomalies": sum(len(c.anomalies) for c in conns),
                "first_anomalies": [a for c in conns for a in c.anomalies][:5],
                "other_frames": sum(c.other_frames for c in conns),
                "decoded_ok": sum(bool(c.decoded_ok) for c in conns),
                "closed_by_server": sum(c.closed_by_server for c in conns), "lost": sum(c.lost for c in conns),
                "lost_short": sum(c.lost and len(c.recv_us) < n for c in conns),
                "last_recv_us": last_recv, "cpu_s": round(time.process_time(), 2)}), flush=True)
        elif cmd == "quit":
            break
    for c in conns:
        if c.transport is not None and not c.transport.is_closing():
            c.transport.write(_client_frame(0x8, struct.pack(">H", 1000)))
            c.transport.close()
    await asyncio.sleep(0.2)


# ==================================================================================== writer
class Writer:
    """Writes the phases' labels through `emit_many` and keeps (seq, phase, call, commit) per label."""

    def __init__(self, label_log):
        self.log = label_log
        self.rows: list[tuple[int, int, int, int]] = []

    async def phase(self, phase: int, rate: float, batch: int, seconds: float) -> dict:
        import anyio

        from firehose_mod.store import EmitRequest

        total = int(rate * seconds)
        interval = batch / rate
        t0 = time.perf_counter()
        worst = spent = 0.0
        calls = 0
        for k, i in enumerate(range(0, total, batch)):
            delay = t0 + k * interval - time.perf_counter()
            if delay > 0:
                await anyio.sleep(delay)
            reqs = [EmitRequest(f"at://did:plc:fanout{phase}/fm.plyr.track/3k{j:010d}", "spam")
                    for j in range(i, min(i + batch, total))]
            a = time.perf_counter()
            call_us = time.time_ns() // 1000
            written = await self.log.emit_many(reqs)
            commit_us = time.time_ns() // 1000
            d = time.perf_counter() - a
            spent += d
            worst = max(worst, d)
            calls += 1
            self.rows.extend((s.seq, phase, call_us, commit_us) for s in written)
        took = time.perf_counter() - t0
        return {"labels": total, "seconds": round(took, 3), "achieved_rate": round(total / took, 1),
                "emit_ms_mean": round(spent / max(1, calls) * 1000, 2), "emit_ms_max": round(worst * 1000, 2)}

    def dump(self, path: str) -> None:
        import numpy as np

        rows = sorted(self.rows)
        np.save(path, np.array(rows, dtype=np.int64).reshape(-1, 4))

    async def commands(self) -> None:
        """stdin: `write PHASE RATE BATCH SECONDS` -> JSON line; `dump FILE` -> `dumped`; EOF: return."""
        import anyio

        while True:
            line = await anyio.to_thread.run_sync(sys.stdin.readline, abandon_on_cancel=True)
            if not line:
                return
            cmd, *args = line.split()
            if cmd == "write":
                res = await self.phase(int(args[0]), float(args[1]), int(args[2]), float(args[3]))
                print(json.dumps({"wrote": res}), flush=True)
            elif cmd == "dump":
                self.dump(args[0])
                print(json.dumps({"dumped": len(self.rows)}), flush=True)


async def writer_main(url: str, key_file: str) -> None:
    """`--worker writer`: a PgLabelLog writer process (what `label emit` or a scan worker opens)."""
    from firehose_mod.labels import SigningKey
    from firehose_mod.logs import configure_logging
    from firehose_mod.store.pg import PgLabelLog

    configure_logging("warning")
    key, _ = SigningKey.load_or_create(Path(key_file))
    label_log = await PgLabelLog.open(url, key, SRC)
    try:
        print(json.dumps({"ready": True}), flush=True)
        await Writer(label_log).commands()
    finally:
        await label_log.close()


async def sqlite_server_main() -> None:
    """`--worker sqlite-server`: `firehose-mod serve` on SQLite with the writer in the same event
    loop (the one-process SQLite deployment); settings from FIREHOSE_MOD_* as for serve."""
    import anyio

    from firehose_mod.config import load_settings
    from firehose_mod.daemon import open_label_log, raise_open_file_limit, run_server
    from firehose_mod.logs import configure_logging

    settings = load_settings()
    configure_logging(settings.log_level, settings.log_format)
    raise_open_file_limit()
    async with open_label_log(settings, daemon=True) as label_log, anyio.create_task_group() as tg:
        await tg.start(run_server, settings, label_log)
        print(json.dumps({"ready": True}), flush=True)

        async def stop_on_signal() -> None:
            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for _ in signals:
                    tg.cancel_scope.cancel()
                    return

        tg.start_soon(stop_on_signal)
        await Writer(label_log).commands()
        tg.cancel_scope.cancel()


# ============================================================================== /proc probes
TICK = os.sysconf("SC_CLK_TCK")


def proc_cpu(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return 0.0


def proc_cpu_sys(pid: int) -> float:
    """stime of pid in seconds: kernel time (on loopback a send also runs the receiver's TCP path)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[12]) / TICK
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return 0.0


def proc_rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except FileNotFoundError:
        pass
    return 0.0


def postgres_cpu(cluster) -> float:
    """CPU of our PostgreSQL cluster only (other clusters may run as the same user): the postmaster,
    its live children, and what its ended children used (in its cutime/cstime)."""
    try:
        pid = int((cluster.root / "data" / "postmaster.pid").read_text().split()[0])
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ValueError, IndexError):
        return 0.0
    total = (int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])) / TICK
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                fl = f.read().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(fl[1]) == pid:
            total += (int(fl[11]) + int(fl[12])) / TICK
    return total


def machine_jiffies() -> tuple[int, int]:
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + v[4]
    return sum(v) - idle, sum(v)


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


class RssPoller:
    def __init__(self, pids: list[int], interval: float = 0.25):
        self.pids, self.interval = pids, interval
        self.peak = {p: 0.0 for p in pids}
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for p in self.pids:
                self.peak[p] = max(self.peak[p], proc_rss_mb(p))
            self._stop.wait(self.interval)

    def start(self) -> RssPoller:
        self._t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._t.join()


# ============================================================================== orchestration
class Child:
    """A worker subprocess speaking JSON lines on stdin/stdout."""

    def __init__(self, name: str, argv: list[str], env: dict | None = None, errlog: Path | None = None):
        self.name = name
        self.err = open(errlog or os.devnull, "ab")
        self.proc = subprocess.Popen(argv, env=env, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.err, text=True, preexec_fn=raise_nofile)
        self.pid = self.proc.pid

    def read(self, timeout: float = 300) -> dict:
        box: list = []
        t = threading.Thread(target=lambda: box.append(self.proc.stdout.readline()), daemon=True)
        t.start()
        t.join(timeout)
        if not box or not box[0]:
            raise RuntimeError(f"{self.name}: no answer (exit code {self.proc.poll()}); see {self.err.name}")
        return json.loads(box[0])

    def ask(self, line: str, timeout: float = 300) -> dict:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return self.read(timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.err.close()


def wait_healthy(port: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server on {port} exited {proc.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/xrpc/_health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"server on {port} not healthy after {timeout} s")


def server_env(data_dir: Path, port: int, key_file: Path, url: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FIREHOSE_MOD_")}
    env.update(FIREHOSE_MOD_DATA_DIR=str(data_dir), FIREHOSE_MOD_PORT=str(port), FIREHOSE_MOD_KEY_FILE=str(key_file),
               FIREHOSE_MOD_DID=SRC, FIREHOSE_MOD_LOG_LEVEL="warning")
    if url:
        env["FIREHOSE_MOD_DATABASE_URL"] = url
    return env


def disconnects(port: int) -> dict:
    """The server's own count of subscriber disconnections by reason (its /metrics)."""
    import httpx

    out = {}
    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    except httpx.HTTPError as exc:
        return {"error": repr(exc)}
    for line in text.splitlines():
        if line.startswith("firehose_mod_disconnects_total{"):
            reason = line.split('reason="', 1)[1].split('"', 1)[0]
            out[reason] = float(line.rsplit(" ", 1)[1])
    return out


def pct(sorted_values, p: float) -> float:
    import numpy as np

    if len(sorted_values) == 0:
        return float("nan")
    return float(np.percentile(sorted_values, p))


class Rig:
    """One configuration: its server(s), writer and subscriber processes, up for the whole run.

    Every configuration is started before the first phase, and each phase is run on each
    configuration in turn (a different one first each phase), so that a shift in the shared
    machine's load hits all of them alike instead of whichever ran last."""

    def __init__(self, name: str, a: argparse.Namespace, cluster, work: Path):
        self.name, self.a, self.cluster = name, a, cluster
        self.backend, self.nservers = CONFIGS[name]
        self.dir = work / name
        self.dir.mkdir()
        self.url: str | None = None
        self.servers: list[Child] = []
        self.writer: Child | None = None
        self.clients: list[Child] = []
        self.written = 0
        self.res: dict = {"config": name, "backend": self.backend, "servers": self.nservers,
                          "subscribers": a.subs, "client_procs": a.client_procs, "phases": []}

    def start(self) -> None:
        from firehose_mod.labels import SigningKey
        from tests.procs import free_port

        a, name = self.a, self.name
        key_file = self.dir / "signing.key"
        SigningKey.load_or_create(key_file)
        if self.backend == "postgres":
            self.url = self.cluster.create_database(f"fanout_{name}")
        me = str(Path(__file__).resolve())
        ports = []
        for k in range(self.nservers):
            port = free_port()
            env = server_env(self.dir / f"server{k}", port, key_file, self.url)
            argv = ([sys.executable, me, "--worker", "sqlite-server"] if self.backend == "sqlite"
                    else [sys.executable, "-m", "firehose_mod", "serve"])
            s = Child(f"{name}-server{k}", argv, env, RESULTS / f"pg-fanout-{name}-server{k}.log")
            self.servers.append(s)
            if self.backend == "sqlite":
                s.read(60)
            wait_healthy(port, s.proc)
            ports.append(port)
        if self.backend == "sqlite":
            self.writer = self.servers[0]
        else:
            self.writer = Child(f"{name}-writer", [sys.executable, me, "--worker", "writer", "--url", self.url,
                                                   "--key-file", str(key_file)],
                                errlog=RESULTS / f"pg-fanout-{name}-writer.log")
            self.writer.read(60)
        procs = max(1, min(a.client_procs, a.subs))
        share = [a.subs // procs + (1 if i < a.subs % procs else 0) for i in range(procs)]
        first = 0
        for i, n in enumerate(share):
            self.clients.append(Child(f"{name}-clients{i}", [
                sys.executable, me, "--worker", "clients", "--ports", ",".join(map(str, ports)),
                "--subs", str(n), "--first", str(first)], errlog=RESULTS / f"pg-fanout-{name}-clients{i}.log"))
            first += n
        ready = [c.read(300) for c in self.clients]
        self.res["connected"] = sum(r["ready"] for r in ready)
        self.res["connect"] = ready
        log(f"{name}: {self.res['connected']}/{a.subs} subscribers connected over {self.nservers} server(s)")
        self.spids = [s.pid for s in self.servers]
        self.ports = ports
        self.poller = RssPoller(self.spids).start()

    def idle_rss(self) -> None:
        self.res["rss_idle_mb"] = [round(proc_rss_mb(p), 1) for p in self.spids]

    def snap(self) -> dict:
        busy, total = machine_jiffies()
        pg = postgres_cpu(self.cluster) if self.backend == "postgres" else 0.0
        return {"t": time.perf_counter(), "servers": [proc_cpu(p) for p in self.spids],
                "servers_sys": [proc_cpu_sys(p) for p in self.spids],
                "writer": proc_cpu(self.writer.pid) if self.backend == "postgres" else 0.0,
                "clients": sum(proc_cpu(c.pid) for c in self.clients), "postgres": pg,
                "busy": busy, "total": total}

    def phase(self, ph: int, rate: float, batch: int, seconds: float) -> None:
        before = self.snap()
        up0 = uptime()
        wrote = self.writer.ask(f"write {ph} {rate} {batch} {seconds}", timeout=seconds * 20 + 120)["wrote"]
        self.written += wrote["labels"]
        deadline = time.monotonic() + self.a.drain_timeout
        while True:
            stats = [c.ask("stats") for c in self.clients]
            if min(s["min"] for s in stats) >= self.written or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        after = self.snap()
        up = uptime()
        wall = after["t"] - before["t"]
        cpu = {k: [round(x - y, 2) for x, y in zip(after[k], before[k])] if k == "servers"
               else round(after[k] - before[k], 2) for k in ("servers", "writer", "clients", "postgres")}
        cpu["servers_sys"] = [round(x - y, 2) for x, y in zip(after["servers_sys"], before["servers_sys"])]
        row = {"phase": ph, "rate": rate, "batch": batch, "seconds": seconds, "wrote": wrote,
               "drained": min(s["min"] for s in stats) >= self.written, "wall_s": round(wall, 2), "cpu_s": cpu,
               "machine_busy": round((after["busy"] - before["busy"]) / max(1, after["total"] - before["total"]), 3),
               "uptime_before": up0, "uptime": up}
        ours = sum(cpu["servers"]) + cpu["writer"] + cpu["clients"] + cpu["postgres"]
        row["ours_cores"] = round(ours / wall, 2)  # this configuration's processes
        row["others_cores"] = round(max(0.0, row["machine_busy"] * (os.cpu_count() or 1) - ours / wall), 2)
        self.res["phases"].append(row)
        log(f"{self.name} phase {ph} ({rate:g}/s x{batch}): wrote {wrote}, drained={row['drained']},"
            f" cpu {cpu}, {up}")

    def finish(self) -> dict:
        import numpy as np

        res, cdir = self.res, self.dir
        self.poller.stop()
        res["rss_peak_mb"] = [round(self.poller.peak[p], 1) for p in self.spids]
        commits = cdir / "commits.npy"
        self.writer.ask(f"dump {commits}")
        table = np.load(commits)
        reports = [c.ask(f"report {commits} {cdir}/lat-{i}", timeout=600) for i, c in enumerate(self.clients)]
        res["check"] = {
            "labels": int(len(table)),
            "seqs_1_to_n": bool(len(table) == 0 or (table[:, 0] == np.arange(1, len(table) + 1)).all()),
            "subscribers": sum(r["subscribers"] for r in reports),
            "exact": sum(r["exact"] for r in reports),
            "min_count": min(r["min_count"] for r in reports), "max_count": max(r["max_count"] for r in reports),
            "anomalies": sum(r["anomalies"] for r in reports),
            "first_anomalies": [x for r in reports for x in r["first_anomalies"]][:5],
            "other_frames": sum(r["other_frames"] for r in reports),
            "decoded_ok": sum(r["decoded_ok"] for r in reports),
            "closed_by_server": sum(r["closed_by_server"] for r in reports),
            "lost": sum(r["lost"] for r in reports),
        }
        res["check"]["lost_short"] = sum(r["lost_short"] for r in reports)
        res["client_cpu_total_s"] = [r["cpu_s"] for r in reports]
        res["server_disconnects"] = [disconnects(p) for p in self.ports]
        for row in res["phases"]:
            ph = row["phase"]
            m = table[:, 1] == ph

            def load(kind: str):
                parts = [np.load(f) for i in range(len(self.clients))
                         if (f := Path(f"{cdir}/lat-{i}-p{ph}-{kind}.npy")).exists()]
                return np.sort(np.concatenate(parts)) if parts else np.array([])

            lc, lcall = load("commit"), load("call")
            last = max(r["last_recv_us"].get(str(ph), 0) for r in reports)
            first_call = int(table[m, 2].min()) if m.any() else 0
            span = (last - first_call) / 1e6
            frames = len(lc)
            row["frames"] = frames
            row["frames_per_s"] = round(frames / span) if span > 0 else None
            row["span_s"] = round(span, 2)
            row["latency_commit_ms"] = {k: round(pct(lc, p), 2) for k, p in
                                        (("p50", 50), ("p95", 95), ("p99", 99), ("max", 100))}
            row["latency_call_ms"] = {k: round(pct(lcall, p), 2) for k, p in
                                      (("p50", 50), ("p95", 95), ("p99", 99), ("max", 100))}
            scpu = sum(row["cpu_s"]["servers"])
            row["server_cores"] = [round(x / row["wall_s"], 2) for x in row["cpu_s"]["servers"]]
            row["server_us_per_frame"] = round(scpu / frames * 1e6, 2) if frames else None
            idle = sum(res.get("idle_server_cores", [])) * row["wall_s"]
            row["server_us_per_frame_net"] = round(max(0.0, scpu - idle) / frames * 1e6, 2) if frames else None
            row["client_us_per_frame"] = round(row["cpu_s"]["clients"] / frames * 1e6, 2) if frames else None
        return res

    def stop(self) -> None:
        for c in self.clients:
            try:
                if c.proc.poll() is None:
                    c.ask("quit", timeout=10)
            except (RuntimeError, OSError, ValueError):
                pass
            c.stop()
        if self.writer is not None and self.writer not in self.servers:
            self.writer.stop()
        for s in self.servers:
            s.stop()
        if self.url:
            self.cluster.drop_database(self.url)


def markdown(all_res: list[dict], meta: dict) -> str:
    lines = [f"# pg_fanout, {meta['started']}", "",
             f"{meta['machine']}; {meta['subs']} subscribers in {meta['client_procs']} client processes; "
             f"phases RATE:BATCH:SECONDS {meta['phases']}", ""]
    lines.append("| config | phase (labels/s x batch) | achieved labels/s | latency from commit p50 / p95 / p99 / max ms"
                 " | from the write call p50 / p99 ms | frames/s delivered | server cores (each) | server us/frame (net of idle)"
                 " | writer / PG / clients CPU s | cores: this bench / others | load avg |")
    lines.append("|---|---|---:|---|---|---:|---|---:|---|---|---|")
    for r in all_res:
        for row in r["phases"]:
            lc, lca, cpu = row.get("latency_commit_ms", {}), row.get("latency_call_ms", {}), row["cpu_s"]
            lines.append(
                f"| {r['config']} | {row['rate']:g} x{row['batch']} | {row['wrote']['achieved_rate']:,.0f} |"
                f" {lc.get('p50')} / {lc.get('p95')} / {lc.get('p99')} / {lc.get('max')} |"
                f" {lca.get('p50')} / {lca.get('p99')} | {row.get('frames_per_s') or 0:,} |"
                f" {' + '.join(str(x) for x in row.get('server_cores', []))} | {row.get('server_us_per_frame')} ({row.get('server_us_per_frame_net')}) |"
                f" {cpu['writer']} / {cpu['postgres']} / {cpu['clients']} | {row['ours_cores']} / {row['others_cores']} |"
                f" {row['uptime'].split('load average:')[-1].strip()} |")
    lines.append("")
    lines.append("| config | connected | every subscriber got 1..N once, in order | RSS idle / peak per server MB"
                 " | idle server cores (pings) |")
    lines.append("|---|---:|---|---|---|")
    for r in all_res:
        ch = r.get("check", {})
        lines.append(f"| {r['config']} | {r.get('connected')} | {ch.get('exact')}/{ch.get('subscribers')} exact, N={ch.get('labels')},"
                     f" anomalies {ch.get('anomalies')}, cut before the end {ch.get('lost_short')}"
                     f" (server: {r.get('server_disconnects')}) |"
                     f" {' / '.join(map(str, r.get('rss_idle_mb', [])))} ; {' / '.join(map(str, r.get('rss_peak_mb', [])))} |"
                     f" {' + '.join(map(str, r.get('idle_server_cores', [])))} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--subs", type=int, help="subscribers in all (default 2000; 100 with --small)")
    ap.add_argument("--client-procs", type=int, default=2, help="subscriber processes (split evenly)")
    ap.add_argument("--configs", default="sqlite1,pg1,pg2", help="comma list of sqlite1, pg1, pg2")
    ap.add_argument("--phases", help=f"RATE:BATCH:SECONDS,... (default {DEFAULT_PHASES}; small: {SMALL_PHASES})")
    ap.add_argument("--small", action="store_true", help="smoke run: 100 subscribers, 3 s phases")
    ap.add_argument("--drain-timeout", type=float, default=90, help="s to wait after a phase for every label to arrive")
    ap.add_argument("--idle-seconds", type=float, default=10, help="idle window measured once all are connected")
    ap.add_argument("--worker", choices=["clients", "writer", "sqlite-server"], help=argparse.SUPPRESS)
    ap.add_argument("--ports", help=argparse.SUPPRESS)
    ap.add_argument("--first", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--url", help=argparse.SUPPRESS)
    ap.add_argument("--key-file", help=argparse.SUPPRESS)
    a = ap.parse_args()

    if a.worker == "clients":
        raise_nofile()
        asyncio.run(clients_main([int(p) for p in a.ports.split(",")], a.subs, a.first))
        return 0
    if a.worker == "writer":
        import anyio

        anyio.run(writer_main, a.url, a.key_file)
        return 0
    if a.worker == "sqlite-server":
        import anyio

        anyio.run(sqlite_server_main)
        return 0

    a.subs = a.subs or (100 if a.small else 2000)
    phases = parse_phases(a.phases or (SMALL_PHASES if a.small else DEFAULT_PHASES))
    configs = [c for c in a.configs.split(",") if c]
    for c in configs:
        if c not in CONFIGS:
            ap.error(f"unknown config {c!r}")
    raise_nofile()
    RESULTS.mkdir(parents=True, exist_ok=True)
    from tests.helpers.pg import PgCluster

    import platform

    started = datetime.now(UTC)
    meta = {"started": started.strftime("%Y-%m-%d %H:%M:%S UTC"), "subs": a.subs, "client_procs": a.client_procs,
            "phases": a.phases or (SMALL_PHASES if a.small else DEFAULT_PHASES),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
            "uptime_start": uptime()}
    log("start:", meta["uptime_start"])
    cluster = None
    if any(CONFIGS[c][0] == "postgres" for c in configs):
        cluster = PgCluster.start(settings={"fsync": "on", "full_page_writes": "on", "synchronous_commit": "on"})
    work = Path(tempfile.mkdtemp(prefix="pg-fanout-"))
    all_res = []
    rigs: list[Rig] = []
    try:
        for c in configs:
            rig = Rig(c, a, cluster, work)
            rigs.append(rig)
            rig.start()
        time.sleep(2.0)
        before = [rig.snap() for rig in rigs]
        time.sleep(a.idle_seconds)  # every subscriber connected, nothing written: pings only
        for rig, b in zip(rigs, before):
            rig.idle_rss()
            after = rig.snap()
            rig.res["idle_server_cores"] = [round((x - y) / (after["t"] - b["t"]), 3)
                                            for x, y in zip(after["servers"], b["servers"])]
        meta["uptime_connected"] = uptime()
        log("all connected:", meta["uptime_connected"])
        for ph, (rate, batch, seconds) in enumerate(phases, start=1):
            k = (ph - 1) % len(rigs)
            for rig in rigs[k:] + rigs[:k]:
                rig.phase(ph, rate, batch, seconds)
        for rig in rigs:
            all_res.append(rig.finish())
    finally:
        for rig in rigs:
            rig.stop()
        if cluster is not None:
            cluster.stop()
        shutil.rmtree(work, ignore_errors=True)
    meta["uptime_end"] = uptime()
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    (RESULTS / f"pg-fanout-{stamp}.json").write_text(json.dumps({"meta": meta, "results": all_res}, indent=1) + "\n")
    md = markdown(all_res, meta)
    (RESULTS / f"pg-fanout-{stamp}.md").write_text(md)
    print(md)
    log("end:", meta["uptime_end"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
