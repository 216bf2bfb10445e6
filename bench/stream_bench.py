#!/usr/bin/env python3
"""Label stream benchmark: firehose-mod against @skyware/labeler 0.2.0, same client, same machine.

    bash bench/skyware/install.sh                 # once
    python3 bench/stream_bench.py                 # full run (populated databases are cached)
    python3 bench/stream_bench.py --quick         # ~2 minute smoke run with small N

What it measures, per peer (see bench/README.md for details):
- backfill: one websockets client, subscribeLabels?cursor=0, counts frames until it has N;
  labels/s, time to first frame, client CPU, server RSS idle and peak (VmRSS polled, VmHWM);
- queryLabels at --query-size: latency of exact and prefix uriPatterns, limit=50, one keep-alive
  connection per peer (--query-new-connections: a fresh TCP connection per request, as before
  firehose-mod served keep-alive);
- live fan-out: S live-only subscribers (raw asyncio WebSocket clients in --client-procs
  processes), labels emitted inside the server process at --emit-rate for --emit-seconds;
  latency = client receive time (time.time_ns() in data_received) - emit call time (in the uri).

Results: bench/results/stream-<UTC time>.json and .md (and latest.json / latest.md).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import random
import resource
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"
DATA = RESULTS / "data"
SKYWARE = BENCH / "skyware"
SUBSCRIBE = "/xrpc/com.atproto.label.subscribeLabels"
QUERY = "/xrpc/com.atproto.label.queryLabels"
OURS_DID = "did:plc:oursbenchlabelerzzzzzzzz"
SKYWARE_DID = "did:plc:skywarebenchlabeler0000"
ACCOUNTS = 25000

sys.path.insert(0, str(BENCH))
from populate_ours import account_did, gen_label  # noqa: E402


def log(*a) -> None:
    print(f"[{time.strftime('%H:%M:%S')}]", *a, file=sys.stderr, flush=True)


def pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    k = min(len(s) - 1, max(0, round(p / 100 * (len(s) - 1))))
    return s[k]


def summary_ms(values: list[float]) -> dict:
    return {
        "n": len(values),
        "p50_ms": _r(pct(values, 50)),
        "p99_ms": _r(pct(values, 99)),
        "max_ms": _r(max(values) if values else None),
        "mean_ms": _r(statistics.fmean(values) if values else None),
    }


def _r(x, nd=3):
    return None if x is None else round(x, nd)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# ---------------------------------------------------------------------------------- RSS
def proc_mem(pid: int) -> dict:
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    k, v = line.split(":")
                    out[k] = int(v.split()[0]) / 1024  # MiB
    except FileNotFoundError:
        pass
    return out


def proc_cpu(pid: int) -> float:
    """utime + stime of pid in seconds (0 if gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (FileNotFoundError, IndexError):
        return 0.0


def cpu_busy(seconds: float = 1.0) -> float:
    """Fraction of all CPUs busy over `seconds` (taken when no benchmark process is working)."""
    def snap():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return sum(v), v[3] + v[4]  # total, idle + iowait
    t0, i0 = snap()
    time.sleep(seconds)
    t1, i1 = snap()
    return round(1 - (i1 - i0) / max(1, t1 - t0), 3)


def wait_quiet(res: dict, phase: str, limit: float, max_wait: float) -> None:
    """Record how busy the machine is before `phase`; wait (up to max_wait s) while others load it."""
    deadline = time.monotonic() + max_wait
    busy = cpu_busy()
    while busy > limit and time.monotonic() < deadline:
        log(f"machine {busy:.0%} busy before {phase} (other processes); waiting")
        busy = cpu_busy(2.0)
    if busy > limit:
        log(f"WARNING: machine still {busy:.0%} busy before {phase}; figures are disturbed")
    res.setdefault("cpu_busy_before", {})[phase] = busy


class RssPoller:
    """Polls VmRSS of one pid every `interval` s in a thread; keeps the peak."""

    def __init__(self, pid: int, interval: float = 0.02):
        self.pid, self.interval = pid, interval
        self.peak = 0.0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, proc_mem(self.pid).get("VmRSS", 0.0))
            self._stop.wait(self.interval)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()


# ---------------------------------------------------------------------------- populate
def populate_ours(n: int) -> dict:
    d = DATA / f"ours-{n}"
    t = time.perf_counter()
    r = subprocess.run(
        [sys.executable, str(BENCH / "populate_ours.py"), "--data-dir", str(d), "--n", str(n),
         "--accounts", str(ACCOUNTS), "--did", OURS_DID],
        check=True, capture_output=True, text=True,
    )
    info = json.loads(r.stdout.strip().splitlines()[-1])
    log(f"ours n={n}: {'cached' if info.get('cached') else 'populated'} in {info['seconds']} s "
        f"({info['labels_per_s']}/s) [{time.perf_counter() - t:.1f} s now]")
    return info


def skyware_paths(n: int) -> tuple[Path, Path, Path]:
    return DATA / f"skyware-{n}.db", DATA / f"skyware-{n}.key", DATA / f"skyware-{n}.json"


def populate_skyware(n: int) -> dict:
    db, keyf, marker = skyware_paths(n)
    if marker.exists() and json.loads(marker.read_text()).get("n") == n:
        info = json.loads(marker.read_text())
        log(f"skyware n={n}: cached ({info['seconds']} s when populated)")
        return {"cached": True, **info}
    DATA.mkdir(parents=True, exist_ok=True)
    for p in (db, Path(f"{db}-wal"), Path(f"{db}-shm")):
        p.unlink(missing_ok=True)
    keyf.write_text(os.urandom(32).hex())
    env = {**os.environ, "SKYWARE_SIGNING_KEY": keyf.read_text()}
    t = time.perf_counter()
    r = subprocess.run(
        ["node", "populate.mjs", "--db", str(db), "--n", str(n), "--accounts", str(ACCOUNTS), "--did", SKYWARE_DID],
        cwd=SKYWARE, env=env, check=True, capture_output=True, text=True,
    )
    dt = time.perf_counter() - t
    info = {"n": n, "seconds": round(dt, 2), "labels_per_s": round(n / dt), "output": r.stdout.strip(),
            "db_bytes": db.stat().st_size}
    marker.write_text(json.dumps(info, indent=1) + "\n")
    log(f"skyware n={n}: populated in {dt:.1f} s")
    return info


# ----------------------------------------------------------------------------- servers
class Server:
    """One benchmark peer as a subprocess; `pid` is the process whose memory we read."""

    def __init__(self, name: str, argv: list[str], env: dict, cwd: Path, *, stdin_pipe: bool = False):
        self.name = name
        self.port = free_port()
        env = {**os.environ, **env}
        argv = [a.replace("{port}", str(self.port)) for a in argv]
        env = {k: v.replace("{port}", str(self.port)) for k, v in env.items()}
        self.errlog = open(RESULTS / f"server-{name}.log", "ab")
        self.proc = subprocess.Popen(
            argv, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=self.errlog, text=True,
            stdin=subprocess.PIPE if stdin_pipe else subprocess.DEVNULL, preexec_fn=raise_nofile,
        )
        self.pid = self.proc.pid
        self._wait_ready()

    def _wait_ready(self, timeout: float = 60) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; see {self.errlog.name}")
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/xrpc/_health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} not ready after {timeout} s")

    def command(self, line: str) -> str:
        """Send one stdin command and return the next stdout line that is not 'ready ...'."""
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        while True:
            out = self.proc.stdout.readline()
            if not out:
                raise RuntimeError(f"{self.name} closed stdout")
            if not out.startswith("ready"):
                return out.strip()

    def stop(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()  # run_ours.py reads stdin in a worker thread
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.errlog.close()


def start_ours(data_dir: Path, *, runner: bool = False) -> Server:
    env = {"FIREHOSE_MOD_DATA_DIR": str(data_dir), "FIREHOSE_MOD_PORT": "{port}",
           "FIREHOSE_MOD_LOG_LEVEL": "warning", "FIREHOSE_MOD_DID": OURS_DID}
    if runner:
        argv = [sys.executable, str(BENCH / "run_ours.py")]
    else:
        exe = shutil.which("firehose-mod")
        argv = [exe, "serve"] if exe else [sys.executable, "-m", "firehose_mod", "serve"]
    return Server("ours", argv, env, ROOT, stdin_pipe=runner)


def start_skyware(db: Path, key: str, *, runner: bool = False) -> Server:
    env = {"SKYWARE_SIGNING_KEY": key, "SKYWARE_EMIT_STDIN": "1" if runner else "0"}
    return Server("skyware", ["node", "server.mjs", "{port}", str(db), SKYWARE_DID], env, SKYWARE, stdin_pipe=runner)


def start_peer(peer: str, n: int, *, runner: bool = False, copy_to: Path | None = None) -> Server:
    """Start `peer` on the populated data set of size n (or on a copy of it in `copy_to`)."""
    if peer == "ours":
        d = DATA / f"ours-{n}"
        if copy_to is not None:
            shutil.rmtree(copy_to, ignore_errors=True)
            shutil.copytree(d, copy_to)
            d = copy_to
        return start_ours(d, runner=runner)
    db, keyf, _ = skyware_paths(n)
    if copy_to is not None:
        shutil.rmtree(copy_to, ignore_errors=True)
        copy_to.mkdir(parents=True)
        for suffix in ("", "-wal", "-shm"):
            if Path(f"{db}{suffix}").exists():
                shutil.copy(f"{db}{suffix}", copy_to / f"labels.db{suffix}")
        db = copy_to / "labels.db"
    return start_skyware(db, keyf.read_text().strip(), runner=runner)


# ----------------------------------------------------------------------------- backfill
async def backfill_client(port: int, n: int) -> dict:
    """cursor=0, count frames until n; decode every 1000th frame and the last to check seq."""
    import libipld
    from websockets.asyncio.client import connect

    t0 = time.perf_counter()
    cpu0 = time.process_time()
    first = None
    count = 0
    last_seq = None
    bad = 0
    async with connect(
        f"ws://127.0.0.1:{port}{SUBSCRIBE}?cursor=0", compression=None, max_size=None, ping_interval=None,
        open_timeout=60, close_timeout=2, max_queue=64,
    ) as ws:
        t_open = time.perf_counter()
        while count < n:
            msg = await asyncio.wait_for(ws.recv(), timeout=120)
            if first is None:
                first = time.perf_counter()
            count += 1
            if count % 1000 == 0 or count == n:
                header, body = libipld.decode_dag_cbor_multi(msg)
                if header.get("t") != "#labels":
                    bad += 1
                last_seq = body["seq"]
                if last_seq != count:
                    bad += 1
    t_end = time.perf_counter()
    return {
        "frames": count, "seconds": round(t_end - t0, 3),
        "labels_per_s": round(count / (t_end - t0)),
        "labels_per_s_after_first_frame": round((count - 1) / (t_end - first)) if first and t_end > first else None,
        "handshake_ms": round((t_open - t0) * 1000, 1),
        "first_frame_s": round(first - t0, 3) if first else None,
        "last_seq": last_seq, "seq_mismatches": bad,
        "client_cpu_s": round(time.process_time() - cpu0, 2),
    }


async def backfill_client_raw(port: int, n: int) -> dict:
    """The same measurement with the minimal asyncio client (a few us per frame instead of ~30)."""
    import libipld

    loop = asyncio.get_running_loop()
    done = loop.create_future()
    finished = loop.create_future()
    proto = LiveSub("127.0.0.1", port, done, path=f"{SUBSCRIBE}?cursor=0", count_until=n, finished=finished)
    t0 = time.perf_counter()
    cpu0 = time.process_time()
    await loop.create_connection(lambda: proto, "127.0.0.1", port)
    await asyncio.wait_for(done, 60)
    t_open = time.perf_counter()
    await asyncio.wait_for(finished, 600)
    t_end = time.perf_counter()
    proto.close()
    header, body = libipld.decode_dag_cbor_multi(proto.last)
    first = proto.first
    return {
        "frames": proto.count, "seconds": round(t_end - t0, 3),
        "labels_per_s": round(proto.count / (t_end - t0)),
        "labels_per_s_after_first_frame": round((proto.count - 1) / (t_end - first)) if first and t_end > first else None,
        "handshake_ms": round((t_open - t0) * 1000, 1),
        "first_frame_s": round(first - t0, 3) if first else None,
        "last_seq": body["seq"], "seq_mismatches": int(body["seq"] != n or header.get("t") != "#labels"),
        "client_cpu_s": round(time.process_time() - cpu0, 2),
    }


def run_backfill(server: Server, n: int, client: str) -> dict:
    cpu0 = proc_cpu(server.pid)
    with RssPoller(server.pid) as rss:
        r = subprocess.run(
            [sys.executable, __file__, "--worker", f"backfill-{client}", "--port", str(server.port), "--n", str(n)],
            capture_output=True, text=True,
        )
    server_cpu = proc_cpu(server.pid) - cpu0
    if r.returncode != 0:
        return {"error": r.stderr.strip()[-2000:]}
    out = json.loads(r.stdout)
    out["server_peak_rss_mb"] = round(rss.peak, 1)
    out["server_hwm_mb"] = round(proc_mem(server.pid).get("VmHWM", 0.0), 1)
    out["client"] = client
    out["client_cpu_share"] = round(out["client_cpu_s"] / out["seconds"], 2)
    out["server_cpu_s"] = round(server_cpu, 2)
    out["server_cpu_share"] = round(server_cpu / out["seconds"], 2)
    return out


# -------------------------------------------------------------------------------- query
def run_query(server: Server, n: int, requests: int, time_cap: float, seed: int = 1, keepalive: bool = True) -> dict:
    """Exact and prefix uriPatterns, limit=50, one new TCP connection per request (both peers)."""
    import httpx

    rng = random.Random(seed)
    per_account = {a: len(range(a, n, ACCOUNTS)) for a in range(min(ACCOUNTS, n))}
    cases = {
        "exact": [(gen_label(rng.randrange(n), ACCOUNTS)[0], 1) for _ in range(requests)],
        "prefix": [],
    }
    for _ in range(requests):
        a = rng.randrange(min(ACCOUNTS, n))
        cases["prefix"].append((f"at://{account_did(a)}/*", min(50, per_account[a])))
    out = {"connection": "one keep-alive connection (httpx)" if keepalive
           else "new TCP connection per request (httpx, keep-alive off)", "limit": 50}
    limits = httpx.Limits(max_keepalive_connections=1 if keepalive else 0)
    with httpx.Client(base_url=f"http://127.0.0.1:{server.port}", limits=limits, timeout=120) as client:
        for name, items in cases.items():
            for pattern, _ in items[:5]:  # warm-up
                client.get(QUERY, params={"uriPatterns": pattern, "limit": 50})
            lat, wrong, t_start = [], 0, time.perf_counter()
            for pattern, expected in items:
                t = time.perf_counter()
                r = client.get(QUERY, params={"uriPatterns": pattern, "limit": 50})
                lat.append((time.perf_counter() - t) * 1000)
                if r.status_code != 200 or len(r.json()["labels"]) != expected:
                    wrong += 1
                if time.perf_counter() - t_start > time_cap:
                    break
            out[name] = {**summary_ms(lat), "wrong_answers": wrong,
                         "matches_per_request": statistics.fmean(e for _, e in items),
                         "capped": len(lat) < len(items)}
    out["server_rss_mb"] = round(proc_mem(server.pid).get("VmRSS", 0.0), 1)
    return out


# ------------------------------------------------------------------------------ fan-out
def _mask(payload: bytes, key: bytes) -> bytes:
    return bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def _client_frame(opcode: int, payload: bytes) -> bytes:
    key = os.urandom(4)
    assert len(payload) < 126
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + key + _mask(payload, key)


class LiveSub(asyncio.Protocol):
    """A minimal WebSocket client: timestamps each chunk on arrival, defers CBOR decoding."""

    def __init__(self, host: str, port: int, done: asyncio.Future, *, path: str = SUBSCRIBE,
                 count_until: int | None = None, finished: asyncio.Future | None = None):
        self.host, self.port, self.done, self.path = host, port, done, path
        self.count_until, self.finished = count_until, finished  # counting mode (backfill)
        self.count = 0
        self.first = None
        self.last = b""
        self.buf = bytearray()
        self.open = False
        self.frames: list[tuple[int, bytes]] = []
        self.transport = None
        self.closed = False

    def connection_made(self, transport) -> None:
        self.transport = transport
        key = base64.b64encode(os.urandom(16)).decode()
        transport.write(
            f"GET {self.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            "User-Agent: stream-bench\r\n\r\n".encode()
        )

    def data_received(self, data: bytes) -> None:
        t = time.time_ns()
        self.buf += data
        if not self.open:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            status = bytes(self.buf[:end]).split(b"\r\n", 1)[0]
            del self.buf[: end + 4]
            if b" 101 " not in status + b" ":
                if not self.done.done():
                    self.done.set_exception(RuntimeError(f"handshake failed: {status!r}"))
                self.transport.close()
                return
            self.open = True
            if not self.done.done():
                self.done.set_result(True)
        buf = self.buf
        pos, size = 0, len(buf)
        counting = self.count_until is not None
        while size - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            ln, hdr = b1 & 0x7F, 2
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
            op = b0 & 0x0F
            if op == 2:
                if not counting:
                    self.frames.append((t, bytes(buf[pos + hdr : end])))
                else:
                    if self.first is None:
                        self.first = time.perf_counter()
                    self.count += 1
                    if self.count == self.count_until:
                        self.last = bytes(buf[pos + hdr : end])
                        if not self.finished.done():
                            self.finished.set_result(True)
            elif op == 9:
                self.transport.write(_client_frame(0xA, bytes(buf[pos + hdr : end])))
            elif op == 8:
                self.closed = True
            pos = end
        if pos:
            del buf[:pos]

    def connection_lost(self, exc) -> None:
        self.closed = True
        if not self.done.done():
            self.done.set_exception(RuntimeError(f"connection lost before handshake: {exc}"))

    def close(self) -> None:
        if self.transport and not self.transport.is_closing():
            self.transport.write(_client_frame(0x8, struct.pack(">H", 1000)))
            self.transport.close()


async def fanout_worker(port: int, subs: int) -> dict:
    """Connect `subs` live subscribers, print 'ready', collect until 'stop' on stdin, report."""
    import libipld

    loop = asyncio.get_running_loop()
    conns: list[LiveSub] = []
    sem = asyncio.Semaphore(50)
    errors = []

    async def one() -> None:
        async with sem:
            done = loop.create_future()
            proto = LiveSub("127.0.0.1", port, done)
            try:
                await loop.create_connection(lambda: proto, "127.0.0.1", port)
                await asyncio.wait_for(done, 30)
            except Exception as exc:  # noqa: BLE001
                errors.append(repr(exc))
                return
        conns.append(proto)

    t0 = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(subs)))
    connect_s = time.perf_counter() - t0
    print(f"ready {len(conns)}", flush=True)
    cpu0 = time.process_time()
    await loop.run_in_executor(None, sys.stdin.readline)  # "stop"
    cpu = time.process_time() - cpu0
    for c in conns:
        c.close()
    lat, undecodable = [], 0
    for c in conns:
        for t, payload in c.frames:
            try:
                header, body = libipld.decode_dag_cbor_multi(payload)
                emitted = int(body["labels"][0]["uri"].rsplit("/", 1)[1])
            except Exception:  # noqa: BLE001
                undecodable += 1
                continue
            lat.append((t - emitted) / 1e6)
    return {"connected": len(conns), "connect_errors": errors[:5], "n_connect_errors": len(errors),
            "connect_s": round(connect_s, 2), "frames": len(lat), "undecodable": undecodable,
            "closed_by_server": sum(c.closed for c in conns), "client_cpu_s": round(cpu, 2), "latencies_ms": lat}


def run_fanout(server: Server, subs: int, procs: int, count: int, rate: float) -> dict:
    procs = max(1, min(procs, subs))
    shares = [subs // procs + (1 if i < subs % procs else 0) for i in range(procs)]
    workers = [
        subprocess.Popen(
            [sys.executable, __file__, "--worker", "fanout", "--port", str(server.port), "--subs", str(s)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, preexec_fn=raise_nofile,
        )
        for s in shares
    ]
    connected = 0
    for w in workers:
        line = w.stdout.readline().strip()
        if not line.startswith("ready"):
            raise RuntimeError(f"fan-out worker failed: {line!r}")
        connected += int(line.split()[1])
    time.sleep(1.0)  # let every subscriber reach its live wait
    rss_before = proc_mem(server.pid).get("VmRSS", 0.0)
    with RssPoller(server.pid, 0.05) as rss:
        emitted = server.command(f"emit {count} {rate}").split()
        time.sleep(2.0)  # drain
    results = []
    for w in workers:
        out, _ = w.communicate("stop\n", timeout=300)
        results.append(json.loads(out.strip().splitlines()[-1]))
    lat = [x for r in results for x in r.pop("latencies_ms")]
    return {
        "subscribers": subs, "connected": connected, "client_procs": procs,
        "labels_emitted": int(emitted[1]), "emit_rate_per_s": rate,
        "emit_call_mean_ms": float(emitted[2]), "emit_call_max_ms": float(emitted[3]),
        "expected_frames": int(emitted[1]) * subs, "received_frames": len(lat),
        "latency": summary_ms(lat),
        "server_rss_mb_before": round(rss_before, 1), "server_peak_rss_mb": round(rss.peak, 1),
        "workers": results,
    }


# ------------------------------------------------------------------------------- report
def ratio(a, b):
    return None if a in (None, 0) or b in (None, 0) else round(a / b, 2)


def markdown(res: dict) -> str:
    peers = res["peers"]
    rows = []

    def row(label, get, unit="", better="", nd=1):
        vals = []
        for p in ("ours", "skyware"):
            try:
                vals.append(get(res["results"][p]) if p in peers else None)
            except (KeyError, TypeError, ZeroDivisionError):
                vals.append(None)
        fmt = lambda v: "—" if v is None else (v if isinstance(v, str) else f"{v:,.{nd}f}" if isinstance(v, float) else f"{v:,}")
        rat = None if any(isinstance(v, str) for v in vals) else ratio(vals[0], vals[1])
        rows.append(f"| {label} | {fmt(vals[0])} {unit} | {fmt(vals[1])} {unit} | "
                    f"{'—' if rat is None else f'{rat:.2f}'} | {better} |")

    for n in res["sizes"]:
        b = lambda r, n=n: r["backfill"][str(n)]
        row(f"backfill {n:,}: labels/s", lambda r, b=b: b(r)["labels_per_s"], "", "higher", 0)
        row(f"backfill {n:,}: time to first frame", lambda r, b=b: b(r)["first_frame_s"], "s", "lower", 3)
        row(f"backfill {n:,}: total time", lambda r, b=b: b(r)["seconds"], "s", "lower", 2)
        row(f"backfill {n:,}: server / client CPU share", lambda r, b=b: f"{b(r)['server_cpu_share']:.2f} / {b(r)['client_cpu_share']:.2f}", "", "")
        row(f"RSS idle, {n:,} labels", lambda r, b=b: b(r)["server_idle_rss_mb"], "MB", "lower")
        row(f"RSS peak during backfill {n:,}", lambda r, b=b: b(r)["server_peak_rss_mb"], "MB", "lower")
    if res.get("query_size"):
        for kind in ("exact", "prefix"):
            for p in ("p50", "p99"):
                row(f"queryLabels {kind} {p} @ {res['query_size']:,}",
                    lambda r, kind=kind, p=p: r["query"][kind][f"{p}_ms"], "ms", "lower", 2)
    for s in res["fanout_levels"]:
        f = lambda r, s=s: r["fanout"][str(s)]
        for p in ("p50", "p99", "max"):
            row(f"fan-out {s:,} subs: latency {p}", lambda r, f=f, p=p: f(r)["latency"][f"{p}_ms"], "ms", "lower", 2)
        row(f"fan-out {s:,} subs: emit call mean / max", lambda r, f=f: f"{f(r)['emit_call_mean_ms']:.1f} / {f(r)['emit_call_max_ms']:.1f}", "ms", "")
        row(f"fan-out {s:,} subs: frames received / expected",
            lambda r, f=f: f(r)["received_frames"] / f(r)["expected_frames"], "", "1.0", 4)
        row(f"fan-out {s:,} subs: server peak RSS", lambda r, f=f: f(r)["server_peak_rss_mb"], "MB", "lower")
    head = "| measurement | firehose-mod | skyware 0.2.0 | ours/skyware | better |\n| --- | ---: | ---: | ---: | --- |"
    return head + "\n" + "\n".join(rows) + "\n"


# --------------------------------------------------------------------------------- main
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run: small N, fewer requests/subscribers")
    ap.add_argument("--peers", default="ours,skyware")
    ap.add_argument("--sizes", help="backfill sizes (default 100000,1000000)")
    ap.add_argument("--query-size", type=int, help="data size for queryLabels (default the largest size)")
    ap.add_argument("--query-requests", type=int, help="requests per pattern kind (default 200)")
    ap.add_argument("--query-time-cap", type=float, default=60, help="seconds per pattern kind and peer")
    ap.add_argument("--query-new-connections", action="store_true",
                    help="a new TCP connection per queryLabels request (default: one keep-alive connection)")
    ap.add_argument("--fanout", help="subscriber counts (default 1,100,1000)")
    ap.add_argument("--fanout-size", type=int, help="data set copied for the fan-out servers (default smallest size)")
    ap.add_argument("--emit-rate", type=float, default=10.0)
    ap.add_argument("--emit-seconds", type=float, default=10.0)
    ap.add_argument("--client-procs", type=int, default=1, help="fan-out client processes (subscribers split evenly)")
    ap.add_argument("--quiet-limit", type=float, default=0.15,
                    help="before each phase, wait while the machine is busier than this (other processes)")
    ap.add_argument("--quiet-wait", type=float, default=120, help="longest wait for a quiet machine (s)")
    ap.add_argument("--skip", default="", help="comma list of parts to skip: backfill,query,fanout")
    # internal
    ap.add_argument("--backfill-client", choices=["websockets", "raw"], default="websockets",
                    help="backfill client: the websockets library (default) or the minimal asyncio one")
    ap.add_argument("--worker", choices=["backfill-websockets", "backfill-raw", "fanout"], help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--subs", type=int, help=argparse.SUPPRESS)
    a = ap.parse_args()

    if a.worker == "backfill-websockets":
        print(json.dumps(asyncio.run(backfill_client(a.port, a.n))))
        return 0
    if a.worker == "backfill-raw":
        print(json.dumps(asyncio.run(backfill_client_raw(a.port, a.n))))
        return 0
    if a.worker == "fanout":
        raise_nofile()
        print(json.dumps(asyncio.run(fanout_worker(a.port, a.subs))))
        return 0

    sizes = [int(x) for x in (a.sizes or ("2000,10000" if a.quick else "100000,1000000")).split(",")]
    query_size = a.query_size or max(sizes)
    requests = a.query_requests or (50 if a.quick else 200)
    levels = [int(x) for x in (a.fanout or ("1,10,100" if a.quick else "1,100,1000")).split(",")]
    fanout_size = a.fanout_size or min(sizes)
    if a.quick:
        a.emit_seconds = min(a.emit_seconds, 3)
    peers = [p for p in a.peers.split(",") if p]
    skip = set(filter(None, a.skip.split(",")))
    count = max(1, round(a.emit_rate * a.emit_seconds))

    RESULTS.mkdir(parents=True, exist_ok=True)
    raise_nofile()
    if "skyware" in peers and not (SKYWARE / "node_modules" / "@skyware" / "labeler").exists():
        log("skyware is not installed: run `bash bench/skyware/install.sh` first")
        return 2

    started = time.perf_counter()
    res = {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "argv": sys.argv[1:], "machine": machine(), "peers": peers, "sizes": sizes,
        "query_size": None if "query" in skip else query_size, "fanout_levels": [] if "fanout" in skip else levels,
        "fanout_size": fanout_size, "emit": {"rate": a.emit_rate, "count": count},
        "populate": {p: {} for p in peers}, "results": {p: {"backfill": {}, "fanout": {}} for p in peers},
    }
    needed = set(sizes) | {query_size, fanout_size}
    for n in sorted(needed):
        for p in peers:
            res["populate"][p][str(n)] = populate_ours(n) if p == "ours" else populate_skyware(n)

    for n in sorted(set(sizes) | {query_size}):
        for p in peers:
            do_backfill = n in sizes and "backfill" not in skip
            do_query = n == query_size and "query" not in skip
            if not (do_backfill or do_query):
                continue
            wait_quiet(res, f"{p}-{n}", a.quiet_limit, a.quiet_wait)
            server = start_peer(p, n)
            try:
                time.sleep(2)
                idle = proc_mem(server.pid).get("VmRSS", 0.0)
                if do_backfill:
                    log(f"{p}: backfill {n:,} (idle RSS {idle:.0f} MB)")
                    b = run_backfill(server, n, a.backfill_client)
                    b["server_idle_rss_mb"] = round(idle, 1)
                    res["results"][p]["backfill"][str(n)] = b
                    log(f"{p}: backfill {n:,}: {b.get('labels_per_s')} labels/s, first frame {b.get('first_frame_s')} s, "
                        f"peak RSS {b.get('server_peak_rss_mb')} MB {b.get('error', '')}")
                if do_query:
                    log(f"{p}: queryLabels at {n:,}")
                    q = run_query(server, n, requests, a.query_time_cap, keepalive=not a.query_new_connections)
                    q["server_idle_rss_mb"] = round(idle, 1)
                    res["results"][p]["query"] = q
                    log(f"{p}: query exact p50 {q['exact']['p50_ms']} ms p99 {q['exact']['p99_ms']} ms; "
                        f"prefix p50 {q['prefix']['p50_ms']} ms p99 {q['prefix']['p99_ms']} ms")
            finally:
                server.stop()

    if "fanout" not in skip:
        for p in peers:
            server = start_peer(p, fanout_size, runner=True, copy_to=RESULTS / "tmp" / f"fanout-{p}")
            try:
                time.sleep(1)
                for s in levels:
                    wait_quiet(res, f"{p}-fanout-{s}", a.quiet_limit + 0.05, a.quiet_wait)
                    log(f"{p}: fan-out to {s} subscribers, {count} labels at {a.emit_rate}/s")
                    f = run_fanout(server, s, a.client_procs, count, a.emit_rate)
                    res["results"][p]["fanout"][str(s)] = f
                    log(f"{p}: fan-out {s}: p50 {f['latency']['p50_ms']} ms p99 {f['latency']['p99_ms']} ms "
                        f"max {f['latency']['max_ms']} ms, {f['received_frames']}/{f['expected_frames']} frames")
            finally:
                server.stop()
            shutil.rmtree(RESULTS / "tmp" / f"fanout-{p}", ignore_errors=True)

    res["total_seconds"] = round(time.perf_counter() - started, 1)
    md = markdown(res)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + ("-quick" if a.quick else "")
    for name in (f"stream-{stamp}", "latest-quick" if a.quick else "latest"):
        (RESULTS / f"{name}.json").write_text(json.dumps(res, indent=1) + "\n")
        (RESULTS / f"{name}.md").write_text(md)
    print(md)
    log(f"total {res['total_seconds']} s; results in {RESULTS}/stream-{stamp}.json")
    return 0


def machine() -> dict:
    def cmd(*argv):
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return None

    cpu = None
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import websockets
    import firehose_mod

    return {"cpus": os.cpu_count(), "cpu_model": cpu, "mem_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
            "python": sys.version.split()[0], "node": cmd("node", "--version"), "kernel": os.uname().release,
            "websockets": websockets.__version__, "firehose_mod": firehose_mod.__version__,
            "git": cmd("git", "-C", str(ROOT), "describe", "--always", "--dirty")}


if __name__ == "__main__":
    sys.exit(main())
