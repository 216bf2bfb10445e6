"""Ingest benchmark: events/s through the whole ingest path, ours vs the atproto SDK's clients.

    python3 bench/ingest_bench.py --quick        # 100k Jetstream events, 20k relay frames (~1.5 min)
    python3 bench/ingest_bench.py                # 1M Jetstream events, 200k relay frames

A replay of the whole network (no server-side filtering, ~1 event in 1,000 an fm.plyr.track) is
generated once and cached under bench/results/ingest-cache/ (see bench/gen_jetstream.py). A
server process (`--serve`, a minimal asyncio WebSocket server) streams the pre-framed bytes
as fast as the client reads them: the client pays for its own reads only. Each peer then runs in
a fresh process of its own, one at a time, and reports wall time and CPU time (all its threads,
so SQLite's aiosqlite thread counts) from just before connecting to the last committed batch:

  ours-js-*    JetstreamSource -> the daemon's tracking sink -> IngestPipeline -> IngestStore on a
               fresh SQLite file (synchronous=FULL, as the daemon): decode, pre-filter, validate,
               enqueue, cursor commit per batch. Checked at the end: cursor == last time_us, every
               track event enqueued or recognised, nothing dead-lettered.
  sdk-js-*     atproto 0.0.73 AsyncJetstreamClient (v2 wire: it speaks no v1) on the same events,
               callback: filter commits to fm.plyr.track and count them. No storage.
  decode-only  decode_jetstream over the pre-loaded frames in a loop, no sockets (ours) and the
               SDK's parse_frame + parse_subscribe_events_message likewise.
  ours-fh      FirehoseSource -> pipeline -> store on a relay subscribeRepos replay (DAG-CBOR+CAR).
  sdk-fh       AsyncFirehoseSubscribeReposClient + parse_subscribe_repos_message; for commits with an
               fm.plyr.track op: CAR.from_bytes and the record block looked up. No storage.

Output: a markdown table on stdout and bench/results/ingest-<UTC>[-quick].{json,md}
(latest copies: ingest-latest[-quick].*). `--profile` adds one more run of each "ours"
peer under cProfile (not the measured runs) and writes its top functions by cumulative and by own
time to bench/results/ingest-profile-*.txt.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import mmap
import os
import platform
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from array import array
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
for p in (str(REPO), str(HERE)):
    if p not in sys.path:
        sys.path.insert(0, p)

RESULTS = HERE / "results"
CACHE = RESULTS / "ingest-cache"
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
# Assumed peak event rate of the whole network (all collections, as a non-filtering Jetstream
# or the relay firehose delivers it). Bluesky's "Relay Operational Updates" post (docs.bsky.app,
# Nov 2024) reports "sustained traffic of over 2,000 events per second"; we assume a peak of
# 2.5x that. An assumption, not a measurement: override with --network-peak.
NETWORK_PEAK_EPS = 5_000


# =========================================================================== server


class Replay:
    """A cached `.ws` file (pre-framed server frames) and its frame-aligned chunk index."""

    def __init__(self, path: Path):
        self.path = path
        f = open(path, "rb")
        self.mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        f.close()
        self.idx = array("Q")
        self.idx.frombytes(path.with_suffix(".idx").read_bytes())


async def _read_exact(reader: asyncio.StreamReader, n: int) -> bytes:
    return await reader.readexactly(n)


async def _read_client_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    b0, b1 = await reader.readexactly(2)
    n = b1 & 0x7F
    if n == 126:
        n = int.from_bytes(await reader.readexactly(2), "big")
    elif n == 127:
        n = int.from_bytes(await reader.readexactly(8), "big")
    mask = await reader.readexactly(4) if b1 & 0x80 else b"\0\0\0\0"
    data = bytearray(await reader.readexactly(n))
    for i in range(n):
        data[i] ^= mask[i & 3]
    return b0 & 0x0F, bytes(data)


def _control(op: int, payload: bytes) -> bytes:
    return bytes((0x80 | op, len(payload))) + payload


class ReplayServer:
    """Serves the cached replays: Jetstream v1 `/subscribe` (compress=true -> zstd), Jetstream v2
    `/xrpc/network.bsky.jetstream.subscribeEvents` (zstdDictionary -> zstd) and its
    `getZstdDictionary`, and the relay's `/xrpc/com.atproto.sync.subscribeRepos`. Filters nothing
    (a full-network stream), ignores cursors, answers pings between frames, and keeps the socket
    open after the last frame (the client decides when it is done)."""

    def __init__(self, js_dir: Path | None, fh_dir: Path | None):
        self.replays: dict[str, Replay] = {}
        if js_dir:
            for name in ("v1.json", "v1.zstd", "v2.json", "v2.zstd"):
                self.replays[name] = Replay(js_dir / f"{name}.ws")
        if fh_dir:
            self.replays["firehose"] = Replay(fh_dir / "firehose.ws")
        from firehose_mod.ingest.jetstream import zstd_dictionary

        self.zdict = zstd_dictionary().as_bytes()
        self.log: list[dict] = []

    def pick(self, path: str, query: dict) -> str | None:
        if path == "/subscribe":
            return "v1.zstd" if query.get("compress", ["false"])[0] == "true" else "v1.json"
        if path == "/xrpc/network.bsky.jetstream.subscribeEvents":
            return "v2.zstd" if "zstdDictionary" in query else "v2.json"
        if path == "/xrpc/com.atproto.sync.subscribeRepos":
            return "firehose"
        return None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        # A large send buffer: with the 16 KiB default, loopback TCP stalls ~10 ms now and then.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * 1024 * 1024)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            _method, target, _ = lines[0].split(" ", 2)
            headers = {}
            for line in lines[1:]:
                if ":" in line:
                    k, v = line.split(":", 1)
                    headers[k.strip().lower()] = v.strip()
            url = urlsplit(target)
            query = parse_qs(url.query)
            if url.path == "/xrpc/network.bsky.jetstream.getZstdDictionary":
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: "
                             + str(len(self.zdict)).encode() + b"\r\nConnection: close\r\n\r\n" + self.zdict)
                await writer.drain()
                return
            name = self.pick(url.path, query)
            if name is None or name not in self.replays or headers.get("upgrade", "").lower() != "websocket":
                writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                await writer.drain()
                return
            accept = base64.b64encode(hashlib.sha1(headers["sec-websocket-key"].encode() + WS_GUID).digest())
            resp = [b"HTTP/1.1 101 Switching Protocols", b"Upgrade: websocket", b"Connection: Upgrade",
                    b"Sec-WebSocket-Accept: " + accept]
            if "sec-websocket-protocol" in headers:
                resp.append(b"Sec-WebSocket-Protocol: " + headers["sec-websocket-protocol"].split(",")[0].strip().encode())
            writer.write(b"\r\n".join(resp) + b"\r\n\r\n")
            self.log.append({"path": target[:200], "replay": name})
            print(json.dumps({"connection": target[:200], "replay": name}), file=sys.stderr, flush=True)
            await self.stream(self.replays[name], reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def stream(self, rp: Replay, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        pending: list[bytes] = []  # control frames to put between data frames
        closed = asyncio.Event()

        async def read_client():
            try:
                while True:
                    op, data = await _read_client_frame(reader)
                    if op == 0x9:
                        pending.append(_control(0xA, data))
                    elif op == 0x8:
                        pending.append(_control(0x8, data[:2]))
                        closed.set()
                        return
            except (asyncio.IncompleteReadError, ConnectionError):
                closed.set()

        rt = asyncio.create_task(read_client())
        mm, idx = rp.mm, rp.idx
        try:
            for i in range(len(idx) - 1):
                if closed.is_set():
                    break
                if pending:
                    writer.write(b"".join(pending))
                    pending.clear()
                writer.write(mm[idx[i]:idx[i + 1]])
                await writer.drain()
            while not closed.is_set():  # done: stay open and answer pings until the client leaves
                if pending:
                    writer.write(b"".join(pending))
                    pending.clear()
                try:
                    await asyncio.wait_for(closed.wait(), 0.05)
                except asyncio.TimeoutError:
                    pass
            if pending:
                writer.write(b"".join(pending))
                await writer.drain()
        finally:
            rt.cancel()


async def serve_main(js_dir: Path | None, fh_dir: Path | None) -> None:
    srv = ReplayServer(js_dir, fh_dir)
    server = await asyncio.start_server(srv.handle, "127.0.0.1", 0, limit=1 << 20)
    port = server.sockets[0].getsockname()[1]
    print(json.dumps({"port": port}), flush=True)
    async with server:
        await server.serve_forever()


# =========================================================================== clients (one per process)


def _rusage() -> dict:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return {"utime": r.ru_utime, "stime": r.ru_stime, "maxrss_mb": round(r.ru_maxrss / 1024, 1)}


class Meter:
    def __init__(self):
        self.w0, self.c0, self.r0 = time.perf_counter(), time.process_time(), _rusage()

    def done(self, n: int, **extra) -> dict:
        wall = time.perf_counter() - self.w0
        cpu = time.process_time() - self.c0
        r1 = _rusage()
        return {"events": n, "wall_s": round(wall, 3), "cpu_s": round(cpu, 3),
                "user_s": round(r1["utime"] - self.r0["utime"], 3), "sys_s": round(r1["stime"] - self.r0["stime"], 3),
                "eps_wall": round(n / wall), "eps_cpu": round(n / cpu), "cpu_util": round(cpu / wall, 3),
                "maxrss_mb": r1["maxrss_mb"], **extra}


async def _run_ours(source, expect_frames: int, db_dir: Path, store_factory):
    """The daemon's path: source.run(_tracking_sink(pipeline, watched)) + pipeline.run_flusher."""
    import anyio

    from firehose_mod.daemon import _tracking_sink
    from firehose_mod.ingest.pipeline import IngestPipeline

    store = await store_factory(db_dir / "bench.sqlite3")
    watched = await store.known_dids()
    source.watched_dids = watched
    pipeline = IngestPipeline(store, source.name)
    meter = Meter()
    async with anyio.create_task_group() as tg:
        tg.start_soon(pipeline.run_flusher)
        tg.start_soon(source.run, _tracking_sink(pipeline, watched), None)
        # pipeline.stats["frames"] counts frames handed to the sink; what follows in the sink is
        # synchronous unless it commits a full batch, which flush() below waits for (its lock).
        while pipeline.stats["frames"] < expect_frames:
            if source.stats.reconnects:
                raise RuntimeError(f"the source reconnected: {source.stats}")
            await anyio.sleep(0.005)
        await pipeline.flush()  # the last partial batch and the last cursor, as run_flusher would
        tg.cancel_scope.cancel()
    result = meter.done(source.stats.frames)
    counts = await store.counts()
    cursor = await store.cursor(source.name)
    async with store._db.execute("SELECT count(*) FROM repo_events") as cur:
        repo_events = (await cur.fetchone())[0]
    async with store._db.execute("SELECT count(*) FROM scan_jobs") as cur:
        jobs = (await cur.fetchone())[0]
    await store.close()
    result.update({"source_stats": source.stats.as_dict(), "pipeline_stats": dict(pipeline.stats), "queue": counts,
                   "scan_jobs": jobs, "repo_events": repo_events, "committed_cursor": cursor,
                   "db_bytes": sum(f.stat().st_size for f in db_dir.iterdir())})
    return result


def client_ours_js(port: int, variant: str, n: int) -> dict:
    import anyio

    from firehose_mod.ingest.filters import Collections
    from firehose_mod.ingest.jetstream import JetstreamSource
    from firehose_mod.store.ingest import IngestStore

    source = JetstreamSource([f"ws://127.0.0.1:{port}"], Collections.parse(["fm.plyr.track"]),
                             compress=(variant == "zstd"), read_timeout=60)
    with tempfile.TemporaryDirectory(prefix="ingest-bench-") as d:
        return anyio.run(_run_ours, source, n, Path(d), IngestStore.open)


def client_ours_fh(port: int, n: int) -> dict:
    import anyio

    from firehose_mod.ingest.filters import Collections
    from firehose_mod.ingest.firehose import FirehoseSource
    from firehose_mod.store.ingest import IngestStore

    source = FirehoseSource([f"ws://127.0.0.1:{port}"], Collections.parse(["fm.plyr.track"]), read_timeout=60)
    with tempfile.TemporaryDirectory(prefix="ingest-bench-") as d:
        return anyio.run(_run_ours, source, n, Path(d), IngestStore.open)


def client_sdk_js(port: int, variant: str, n: int, sync: bool = False) -> dict:
    from atproto import AsyncJetstreamClient, JetstreamClient

    state = {"n": 0, "tracks": 0, "other": 0}
    base = f"ws://127.0.0.1:{port}/xrpc"
    if sync:
        client = JetstreamClient(base_uri=base, compress=(variant == "zstd"), recv_timeout=60)

        def on_message(msg) -> None:
            state["n"] += 1
            if getattr(msg, "collection", None) == "fm.plyr.track":
                state["tracks"] += 1
            if state["n"] >= n:
                client.stop()

        meter = Meter()
        client.start(on_message)
        return meter.done(state["n"], tracks=state["tracks"], compressed=client.compressed)

    client = AsyncJetstreamClient(base_uri=base, compress=(variant == "zstd"), recv_timeout=60)

    async def on_message_async(msg) -> None:
        state["n"] += 1
        if getattr(msg, "collection", None) == "fm.plyr.track":
            state["tracks"] += 1
        if state["n"] >= n:
            await client.stop()

    async def main():
        meter = Meter()
        await client.start(on_message_async)
        return meter.done(state["n"], tracks=state["tracks"], compressed=client.compressed)

    return asyncio.run(main())


def client_sdk_fh(port: int, n: int) -> dict:
    from atproto import AsyncFirehoseSubscribeReposClient, CAR, models, parse_subscribe_repos_message

    state = {"n": 0, "tracks": 0, "records": 0}
    client = AsyncFirehoseSubscribeReposClient(base_uri=f"ws://127.0.0.1:{port}/xrpc", recv_timeout=60)
    Commit = models.ComAtprotoSyncSubscribeRepos.Commit

    async def on_message(message) -> None:
        state["n"] += 1
        commit = parse_subscribe_repos_message(message)
        if isinstance(commit, Commit):
            car = None
            for op in commit.ops:
                if op.path.startswith("fm.plyr.track/"):
                    state["tracks"] += 1
                    if op.cid is not None and commit.blocks:
                        car = car or CAR.from_bytes(commit.blocks)
                        if car.blocks.get(op.cid) is not None:
                            state["records"] += 1
        if state["n"] >= n:
            await client.stop()

    async def main():
        meter = Meter()
        await client.start(on_message)
        return meter.done(state["n"], tracks=state["tracks"], records=state["records"])

    return asyncio.run(main())


def client_decode(kind: str, variant: str, js_dir: Path, repeat: int) -> dict:
    """Decode alone over pre-loaded frames (no sockets): ours or the SDK's parser."""
    from gen_jetstream import iter_wire_frames

    binary = variant == "zstd"
    frames = [bytes(m) if binary else str(m, "utf-8")
              for m in iter_wire_frames((js_dir / f"{'v1' if kind == 'ours' else 'v2'}.{variant}.ws").read_bytes())]
    tracks = 0
    if kind == "ours":
        from firehose_mod.ingest.filters import Collections
        from firehose_mod.ingest.jetstream import Decompressor, decode_jetstream

        cols = Collections.parse(["fm.plyr.track"])
        dec = Decompressor() if binary else None
        watched: set[str] = set()
        best = None
        for _ in range(repeat):
            meter = Meter()
            t = 0
            for f in frames:
                t += len(decode_jetstream(f, cols, decompress=dec, watched_dids=watched).events)  # tracks only: no DID watched
            r = meter.done(len(frames))
            best = r if best is None or r["cpu_s"] < best["cpu_s"] else best
            tracks = t
        return {**best, "tracks": tracks, "us_per_event": round(best["cpu_s"] / len(frames) * 1e6, 2)}
    from atproto_jetstream.compression import ZstdDecompression
    from atproto_jetstream.models import parse_frame, parse_subscribe_events_message

    from firehose_mod.ingest.jetstream import zstd_dictionary

    z = ZstdDecompression(32 * 1024 * 1024)
    z.load(zstd_dictionary().as_bytes())
    best = None
    for _ in range(repeat):
        meter = Meter()
        t = 0
        for f in frames:
            msg = parse_subscribe_events_message(parse_frame(z.decompress(f) if binary else f))
            if getattr(msg, "collection", None) == "fm.plyr.track":
                t += 1
        r = meter.done(len(frames))
        best = r if best is None or r["cpu_s"] < best["cpu_s"] else best
        tracks = t
    return {**best, "tracks": tracks, "us_per_event": round(best["cpu_s"] / len(frames) * 1e6, 2)}


def client_main(a) -> None:
    """Entry point of one peer's process: prints one JSON line."""
    import logging

    import structlog

    # The daemon logs at info; each commit with tracks logs a line. Keep that (it is part of the
    # path) but send it to stderr, which the orchestrator writes to a log file.
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))

    prof = None
    if a.profile_out:
        import cProfile

        prof = cProfile.Profile()
        prof.enable()
    peer = a.client
    if peer == "ours-js":
        res = client_ours_js(a.port, a.variant, a.n)
    elif peer == "ours-fh":
        res = client_ours_fh(a.port, a.n)
    elif peer == "sdk-js":
        res = client_sdk_js(a.port, a.variant, a.n, sync=False)
    elif peer == "sdk-js-sync":
        res = client_sdk_js(a.port, a.variant, a.n, sync=True)
    elif peer == "sdk-fh":
        res = client_sdk_fh(a.port, a.n)
    elif peer in ("decode-ours", "decode-sdk"):
        res = client_decode(peer.split("-")[1], a.variant, Path(a.js_dir), a.repeat)
    else:
        raise SystemExit(f"unknown client {peer}")
    if prof is not None:
        prof.disable()
        _write_profile(prof, Path(a.profile_out))
    print(json.dumps(res), flush=True)


def _write_profile(prof, out: Path) -> None:
    import io
    import pstats

    buf = io.StringIO()
    st = pstats.Stats(prof, stream=buf)
    st.strip_dirs()
    buf.write("=== top 35 by cumulative time ===\n")
    st.sort_stats("cumulative").print_stats(35)
    buf.write("\n=== top 30 by own (tottime) ===\n")
    st.sort_stats("tottime").print_stats(30)
    out.write_text(buf.getvalue())


# =========================================================================== orchestrator


def ensure_data(n: int, m: int) -> tuple[Path, Path | None]:
    from gen_jetstream import GEN_VERSION, generate_firehose, generate_jetstream

    js = CACHE / f"jetstream-{n}-g{GEN_VERSION}"
    fh = CACHE / f"firehose-{m}-g{GEN_VERSION}" if m else None
    jobs = []
    if not (js / "manifest.json").exists():
        print(f"generating {n:,} Jetstream events into {js} (cached for later runs) ...", file=sys.stderr, flush=True)
        jobs.append((generate_jetstream, js, n))
    if fh is not None and not (fh / "firehose.json").exists():
        print(f"generating {m:,} relay frames into {fh} ...", file=sys.stderr, flush=True)
        jobs.append((generate_firehose, fh, m))
    if len(jobs) == 2:  # one process each: the two cores
        import multiprocessing

        ps = [multiprocessing.Process(target=f, args=(d, k)) for f, d, k in jobs]
        for p in ps:
            p.start()
        for p in ps:
            p.join()
            if p.exitcode:
                raise SystemExit("data generation failed")
    else:
        for f, d, k in jobs:
            f(d, k)
    return js, fh


def _proc_cpu(pid: int) -> float:
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def run_peer(args: list[str], server_pid: int, log, timeout: float) -> dict:
    s0, w0, l0 = _proc_cpu(server_pid), time.perf_counter(), os.getloadavg()[0]
    p = subprocess.run([sys.executable, str(Path(__file__).resolve()), *args], capture_output=True, text=True,
                       timeout=timeout, cwd=REPO)
    wall = time.perf_counter() - w0
    log.write(f"\n=== {' '.join(args)} (rc={p.returncode}, {wall:.1f}s)\n{p.stderr[-20000:]}\n")
    log.flush()
    if p.returncode != 0:
        raise RuntimeError(f"peer {args} failed:\n{p.stderr[-3000:]}")
    res = json.loads(p.stdout.strip().splitlines()[-1])
    res["server_cpu_s"] = round(_proc_cpu(server_pid) - s0, 3)
    res["process_wall_s"] = round(wall, 2)
    res["loadavg_1m"] = [round(l0, 2), round(os.getloadavg()[0], 2)]  # other work on the machine inflates wall time
    return res


def machine_info() -> dict:
    cpu = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import importlib.metadata as md

    vers = {}
    for pkg in ("atproto", "websockets", "zstandard", "libipld", "aiosqlite", "anyio", "pydantic"):
        try:
            vers[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            vers[pkg] = None
    import sqlite3

    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "os": platform.platform(),
            "sqlite": sqlite3.sqlite_version, "packages": vers}


def fmt(n: float) -> str:
    return f"{n:,.0f}"


def render(report: dict) -> str:
    peak = report["network_peak_eps"]
    rows = report["rows"]
    out = [f"Jetstream replay: {report['jetstream']['events']:,} events, {report['jetstream']['tracks']:,} fm.plyr.track "
           f"({report['jetstream']['track_ops']}); relay replay: "
           + (f"{report['firehose']['frames']:,} frames, {report['firehose']['tracks']} tracks" if report.get("firehose") else "skipped"),
           "", "| peer | stream | events | wall s | CPU s | events/s (wall) | events/CPU-s | x network peak (CPU) | server CPU s |",
           "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        out.append(f"| {r['peer']} | {r['stream']} | {fmt(r['events'])} | {r['wall_s']:.2f} | {r['cpu_s']:.2f} | "
                   f"{fmt(r['eps_wall'])} | {fmt(r['eps_cpu'])} | {r['eps_cpu'] / peak:.0f}x | {r.get('server_cpu_s', '')} |")
    out += ["", "| comparison | ours events/CPU-s | SDK events/CPU-s | ours/SDK (CPU) | ours/SDK (wall) |", "|---|---:|---:|---:|---:|"]
    for c in report["ratios"]:
        out.append(f"| {c['what']} | {fmt(c['ours_eps_cpu'])} | {fmt(c['sdk_eps_cpu'])} | {c['cpu_ratio']:.2f}x | {c['wall_ratio']:.2f}x |")
    out += ["", f"Network peak assumed: {fmt(peak)} events/s (an assumption; see INGEST.md). Target: >= 20x on one core "
            f"= {fmt(20 * peak)} events per CPU-second."]
    return "\n".join(out)


def orchestrate(a) -> None:
    n = 100_000 if a.quick else a.events
    m = (20_000 if a.quick else a.firehose_frames) if "fh" in a.peers else 0
    RESULTS.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    js_dir, fh_dir = ensure_data(n, m)
    js_manifest = json.loads((js_dir / "manifest.json").read_text())
    fh_manifest = json.loads((fh_dir / "firehose.json").read_text()) if fh_dir else None
    t_gen = time.perf_counter() - t_start
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + ("-quick" if a.quick else "")
    log = open(RESULTS / f"ingest-{stamp}.log", "w")
    srv_args = [sys.executable, str(Path(__file__).resolve()), "--serve", "--js-dir", str(js_dir)]
    if fh_dir:
        srv_args += ["--fh-dir", str(fh_dir)]
    server = subprocess.Popen(srv_args, stdout=subprocess.PIPE, stderr=log, text=True, cwd=REPO)
    rows: list[dict] = []
    profiled: list[dict] = []
    try:
        port = json.loads(server.stdout.readline())["port"]
        variants = a.variants
        plan: list[tuple[str, str, list[str]]] = []
        for v in variants:
            if "js" in a.peers:
                plan.append(("ours JetstreamSource+pipeline+store", f"jetstream v1 {v}",
                             ["--client", "ours-js", "--variant", v, "--n", str(n)]))
                plan.append(("atproto AsyncJetstreamClient", f"jetstream v2 {v}",
                             ["--client", "sdk-js", "--variant", v, "--n", str(n)]))
                if a.sdk_sync:
                    plan.append(("atproto JetstreamClient (sync)", f"jetstream v2 {v}",
                                 ["--client", "sdk-js-sync", "--variant", v, "--n", str(n)]))
            if "decode" in a.peers:
                plan.append(("ours decode_jetstream only", f"v1 {v}, in memory",
                             ["--client", "decode-ours", "--variant", v, "--js-dir", str(js_dir), "--repeat", "2"]))
                plan.append(("atproto parse_frame+parse_message only", f"v2 {v}, in memory",
                             ["--client", "decode-sdk", "--variant", v, "--js-dir", str(js_dir), "--repeat", "1"]))
        if fh_dir:
            plan.append(("ours FirehoseSource+pipeline+store", "relay subscribeRepos", ["--client", "ours-fh", "--n", str(m)]))
            plan.append(("atproto AsyncFirehoseSubscribeReposClient", "relay subscribeRepos",
                         ["--client", "sdk-fh", "--n", str(m)]))
        for label, stream, args in plan:
            args = [*args, "--port", str(port)]
            print(f"running {label} on {stream} ...", file=sys.stderr, flush=True)
            res = run_peer(args, server.pid, log, a.timeout)
            res.update({"peer": label, "stream": stream, "client": args[1]})
            rows.append(res)
            print(f"  {res['events']:,} events, {res['wall_s']:.2f} s wall, {res['cpu_s']:.2f} s CPU, "
                  f"{fmt(res['eps_cpu'])} events/CPU-s", file=sys.stderr, flush=True)
        if a.profile:  # separate runs under cProfile (slower): never the measured ones above
            for label, stream, args in plan:
                if args[1] not in ("ours-js", "ours-fh"):
                    continue
                out = RESULTS / f"ingest-profile-{stamp}-{args[1]}-{args[3] if args[2] == '--variant' else 'fh'}.txt"
                print(f"profiling {label} on {stream} -> {out.name} ...", file=sys.stderr, flush=True)
                res = run_peer([*args, "--port", str(port), "--profile-out", str(out)], server.pid, log, a.timeout)
                profiled.append({"client": args[1], "stream": stream, "profile": out.name,
                                 "eps_cpu_under_cprofile": res["eps_cpu"]})
    finally:
        server.terminate()
        server.wait(5)
        log.close()

    def find(client, stream_part):
        for r in rows:
            if r["client"] == client and stream_part in r["stream"]:
                return r
        return None

    ratios = []
    for v in a.variants:
        for ours_c, sdk_c, what in (("ours-js", "sdk-js", f"Jetstream {v}: whole path vs AsyncJetstreamClient"),
                                    ("ours-js", "sdk-js-sync", f"Jetstream {v}: whole path vs JetstreamClient (sync)"),
                                    ("decode-ours", "decode-sdk", f"Jetstream {v}: decode only, in memory")):
            o, s = find(ours_c, v), find(sdk_c, v)
            if o and s:
                ratios.append({"what": what, "ours_eps_cpu": o["eps_cpu"], "sdk_eps_cpu": s["eps_cpu"],
                               "cpu_ratio": o["eps_cpu"] / s["eps_cpu"], "wall_ratio": o["eps_wall"] / s["eps_wall"]})
    o, s = find("ours-fh", "relay"), find("sdk-fh", "relay")
    if o and s:
        ratios.append({"what": "relay firehose: whole path vs AsyncFirehoseSubscribeReposClient",
                       "ours_eps_cpu": o["eps_cpu"], "sdk_eps_cpu": s["eps_cpu"],
                       "cpu_ratio": o["eps_cpu"] / s["eps_cpu"], "wall_ratio": o["eps_wall"] / s["eps_wall"]})
    checks = []
    for r in rows:
        if r["client"] == "ours-js":
            ok = (r["committed_cursor"] == js_manifest["last_time_us"] and r["source_stats"]["dead"] == 0
                  and r["scan_jobs"] == js_manifest["tracks"])
            checks.append({"peer": r["client"], "stream": r["stream"], "cursor_is_last": r["committed_cursor"] == js_manifest["last_time_us"],
                           "track_events": r["source_stats"]["events"], "enqueued": r["pipeline_stats"]["enqueued"],
                           "scan_jobs": r["scan_jobs"], "dead": r["source_stats"]["dead"], "ok": bool(ok)})
        elif r["client"] == "ours-fh":
            checks.append({"peer": r["client"], "cursor_is_last": r["committed_cursor"] == fh_manifest["last_seq"],
                           "events": r["source_stats"]["events"], "scan_jobs": r["scan_jobs"], "dead": r["source_stats"]["dead"],
                           "ok": r["committed_cursor"] == fh_manifest["last_seq"] and r["source_stats"]["dead"] == 0
                           and r["scan_jobs"] == fh_manifest["tracks"]})
        elif r["client"] in ("sdk-js", "sdk-js-sync", "decode-sdk", "decode-ours"):
            checks.append({"peer": r["client"], "stream": r["stream"], "tracks_seen": r.get("tracks")})
        elif r["client"] == "sdk-fh":
            checks.append({"peer": r["client"], "tracks_seen": r.get("tracks"), "records_found": r.get("records")})
    report = {
        "kind": "ingest", "stamp": stamp, "quick": a.quick, "machine": machine_info(),
        "network_peak_eps": a.network_peak, "target_eps_cpu": 20 * a.network_peak,
        "jetstream": {k: js_manifest[k] for k in ("events", "tracks", "track_ops", "artist_repo_events", "by_collection", "files", "last_time_us")},
        "firehose": ({k: fh_manifest[k] for k in ("frames", "tracks", "track_ops", "file", "last_seq")} if fh_manifest else None),
        "rows": rows, "ratios": ratios, "checks": checks, "profiled_runs": profiled,
        "seconds": {"generate_or_load": round(t_gen, 1), "total": round(time.perf_counter() - t_start, 1)},
    }
    md = render(report)
    (RESULTS / f"ingest-{stamp}.json").write_text(json.dumps(report, indent=1))
    (RESULTS / f"ingest-{stamp}.md").write_text(md + "\n")
    latest = "ingest-latest-quick" if a.quick else "ingest-latest"
    shutil.copy(RESULTS / f"ingest-{stamp}.json", RESULTS / f"{latest}.json")
    shutil.copy(RESULTS / f"ingest-{stamp}.md", RESULTS / f"{latest}.md")
    print(md)
    print(f"\nchecks: {json.dumps(checks)}")
    print(f"\nwrote {RESULTS / f'ingest-{stamp}.json'} (total {report['seconds']['total']} s)")


def main() -> None:
    ap = argparse.ArgumentParser(description="Ingest benchmark: ours vs the atproto SDK's Jetstream and firehose clients.")
    ap.add_argument("--events", type=int, default=1_000_000, help="Jetstream events in the replay (default 1,000,000)")
    ap.add_argument("--firehose-frames", type=int, default=200_000, help="relay subscribeRepos frames (default 200,000)")
    ap.add_argument("--quick", action="store_true", help="100k Jetstream events, 20k relay frames")
    ap.add_argument("--peers", default="js,decode,fh", help="comma list of js, decode, fh (default all)")
    ap.add_argument("--variants", default="json,zstd", help="Jetstream encodings: json, zstd (default both)")
    ap.add_argument("--sdk-sync", action="store_true", help="also run the SDK's synchronous JetstreamClient")
    ap.add_argument("--network-peak", type=float, default=NETWORK_PEAK_EPS,
                    help=f"assumed whole-network peak, events/s (default {NETWORK_PEAK_EPS:,})")
    ap.add_argument("--profile", action="store_true", help="cProfile our peers into bench/results/ingest-profile-*.txt")
    ap.add_argument("--timeout", type=float, default=300, help="per-peer timeout, seconds")
    # internal: server and client processes
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--js-dir", help=argparse.SUPPRESS)
    ap.add_argument("--fh-dir", help=argparse.SUPPRESS)
    ap.add_argument("--client", help=argparse.SUPPRESS)
    ap.add_argument("--variant", default="json", help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--repeat", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--profile-out", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.serve:
        asyncio.run(serve_main(Path(a.js_dir) if a.js_dir else None, Path(a.fh_dir) if a.fh_dir else None))
        return
    if a.client:
        client_main(a)
        return
    a.peers = {p.strip() for p in a.peers.split(",") if p.strip()}
    a.variants = [v.strip() for v in a.variants.split(",") if v.strip()]
    orchestrate(a)


if __name__ == "__main__":
    main()
