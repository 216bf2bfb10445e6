"""The soak: the real daemon under realistic load for a long time; does it die, grow or fall behind?

    python3 bench/soak.py                              # issue 22's soak: 30 min, 4,000 events/s
    python3 bench/soak.py --minutes 2 --rate 1000      # a smoke run of the harness (~3 min)

Starts, each in its own process: a live Jetstream (bench/soak_jetstream.py) sending the whole
network's mix at `--rate` events/s, with fm.plyr.track events some of which point at covers and
audio on a local media host (bench/soak_media.py); the real daemon, `python -m firehose_mod run
--config DATA_DIR/soak.toml` (every scanner on, `--workers` scan workers, Jetstream zstd as by
default); `--subscribers` - 1 subscribeLabels readers in one process (bench/soak_subscribers.py).
Then, for `--minutes`: /admin/status every `--status-interval` s, /metrics every
`--metrics-interval` s, and every `--sample-interval` s the daemon's RSS, descriptors, threads,
CPU, its worker processes and the WAL (size, and the checkpoint counter in its header). Half-way
(`--burst-at`) a separate process writes `--burst` labels into the log (bench/soak_burst.py), and
`--slow-lead` s before that one more subscriber connects and never reads.

`--kill-at 0.33,0.66` SIGKILLs the daemon at those fractions of the run and restarts it (readers
reconnect from their last seq, the Jetstream replays from the daemon's cursor); `--llm` turns the
triage agent on against a local fake OpenAI server. Their checks: bench/soak_restarts.py.

At the end: readers get time to catch up, the traffic stops, the daemon gets SIGTERM (the time to
exit is measured), and every reader's seqs are compared with the label log. A daemon that dies
ends the run early: its exit code and the tail of its stderr go into the report.

Output (`--out`, default bench/results/): soak-<UTC>.json (every sample), soak-<UTC>.md (a table
per minute and the checks against issue 22) and soak-<UTC>.png (bench/soak_report.py, which can
redraw them from the JSON), soak-<UTC>-daemon.log; soak-latest.* copies.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
for p in (str(REPO), str(HERE)):
    if p not in sys.path:
        sys.path.insert(0, p)

import httpx  # noqa: E402
from firehose_mod.server.admin import auth_header  # noqa: E402

import soak_media  # noqa: E402
import soak_report  # noqa: E402
import soak_restarts  # noqa: E402
from soak_procs import Child, ProcSampler, daemon_log_tail, db_summary, free_port, parse_metrics  # noqa: E402

SLOW_AGENT = "soak-slow"


def write_config(a: argparse.Namespace, data: Path, port: int, js_port: int, blocklist: Path) -> Path:
    scanners = ", ".join(f'"{s}"' for s in a.scanners.split(","))
    cfg = data / "soak.toml"
    cfg.write_text(f"""data_dir = "{data}"
[server]
port = {port}
[labeler]
did = "did:web:soak.localhost"
[ingest]
source = "jetstream"
jetstream_endpoints = ["ws://127.0.0.1:{js_port}"]
jetstream_compress = {"false" if a.no_compress else "true"}
[scan]
workers = {a.workers}
scanners = [{scanners}]
pdq_blocklist = "{blocklist}"
[media]
allow_networks = ["127.0.0.1/32"]
allow_http = true
[log]
level = "info"
format = "json"
""" + (f"""[triage]
enabled = true
provider = "openai"
endpoint = "{a.llm_url}"
model = "gpt-4o-mini"
api_key = "sk-test-key"
interval = {a.llm_interval}
batch_size = 20
concurrency = 2
""" if getattr(a, "llm_url", None) else ""))
    return cfg


class Soak:
    def __init__(self, a: argparse.Namespace, data: Path, stamp: str):
        self.a, self.data, self.stamp = a, data, stamp
        self.db = data / "firehose-mod.sqlite3"
        self.log_path = a.out / f"soak-{stamp}-daemon.log"
        self.t0 = 0.0
        self.res: dict = {"args": {k: str(v) for k, v in vars(a).items()}, "events": [], "samples": [], "status": [],
                          "metrics": [], "jetstream": [], "subscribers": []}
        self.daemon: asyncio.subprocess.Process | None = None
        self.log_file = None
        self.cfg: Path | None = None
        self.stopping = False
        self.died = asyncio.Event()
        self.slow_listed: bool | None = None
        self.last_status: dict = {}
        self.last_metrics: dict = {}
        self.restarting = False
        self.lives: list[dict] = []  # one per daemon process: pid, start, healthy, end, how it ended

    def now(self) -> float:
        return round(time.time() - self.t0, 3)

    def event(self, what: str, **kw) -> None:
        row = {"t": self.now(), "what": what, **kw}
        self.res["events"].append(row)
        print(json.dumps(row)[:400], file=sys.stderr, flush=True)

    # -- the processes ---------------------------------------------------------------------------
    async def start(self, env: dict, cfg: Path, port: int) -> None:
        self.port = port
        if not self.t0:
            self.t0 = time.time()
        if self.log_file is None:
            self.log_file = open(self.log_path, "wb")
        self.daemon = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "firehose_mod", "--config", str(cfg), "run", env=env,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=self.log_file)
        self.event("daemon_started", pid=self.daemon.pid)
        self.lives.append({"life": len(self.lives) + 1, "pid": self.daemon.pid, "start": self.now()})
        async with httpx.AsyncClient(timeout=2) as client:
            for _ in range(600):
                if self.daemon.returncode is not None:
                    break
                try:
                    if (await client.get(f"http://127.0.0.1:{port}/xrpc/_health")).status_code == 200:
                        self.event("daemon_healthy")
                        self.lives[-1]["healthy"] = self.now()
                        return
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.1)
        raise RuntimeError(f"the daemon did not become healthy:\n{daemon_log_tail(self.log_path)}")

    async def watch_daemon(self) -> None:
        while True:
            code = await self.daemon.wait()
            if not self.restarting:
                break
            while self.restarting:  # killed on purpose (--kill-at): watch the next one
                await asyncio.sleep(0.05)
        if not self.stopping:
            self.event("daemon_died", returncode=code, stderr_tail=daemon_log_tail(self.log_path))
            self.res["daemon_died"] = {"t": self.now(), "returncode": code, "stderr_tail": daemon_log_tail(self.log_path)}
            self.died.set()

    # -- what runs during the soak ---------------------------------------------------------------
    async def every(self, interval: float, fn) -> None:
        if interval <= 0:
            return
        nxt = time.monotonic()
        while not self.died.is_set():
            try:
                await fn()
            except Exception as exc:  # noqa: BLE001 - a harness bug must not end the soak unrecorded
                self.event("harness_error", task=getattr(fn, "__name__", "?"), error=repr(exc)[:300])
            nxt = max(nxt + interval, time.monotonic())
            await asyncio.sleep(nxt - time.monotonic())

    async def poll_status(self, client: httpx.AsyncClient) -> None:
        t = self.now()
        row: dict = {"t": t}
        try:
            r = await client.get(f"http://127.0.0.1:{self.port}/admin/status", timeout=10,
                                 headers=auth_header(self.data))
            row["latency_ms"] = round((self.now() - t) * 1000, 1)
            row["http"] = r.status_code
            body = r.json()
            ingest = body.get("ingest") or {}
            cursor = ingest.get("cursor")
            row.update(head=body.get("head"), cursor=cursor, queue=body.get("queue"), workers=body.get("workers"),
                       subscribers=len(body.get("subscribers", [])))
            if cursor:
                row["lag_s"] = round(time.time() - cursor / 1e6, 3)
            slow = [s for s in body.get("subscribers", []) if s.get("user_agent") == SLOW_AGENT]
            self.slow_listed = bool(slow)
            if slow:
                row["slow"] = {k: slow[0].get(k) for k in ("state", "cursor", "lag", "frames_sent")}
            self.last_status = row
        except (httpx.HTTPError, ValueError) as exc:
            row["error"] = repr(exc)[:200]
        self.res["status"].append(row)

    async def scrape_metrics(self, client: httpx.AsyncClient) -> None:
        t = self.now()
        row: dict = {"t": t}
        try:
            r = await client.get(f"http://127.0.0.1:{self.port}/metrics", timeout=10)
            row["latency_ms"] = round((self.now() - t) * 1000, 1)
            row["m"] = parse_metrics(r.text)
            cursor = row["m"].get('firehose_mod_ingest_cursor{source="jetstream"}')
            if cursor:
                row["lag_s"] = round(time.time() - cursor / 1e6, 3)
            self.last_metrics = row["m"]
        except httpx.HTTPError as exc:
            row["error"] = repr(exc)[:200]
        self.res["metrics"].append(row)

    async def sample(self) -> None:
        self.res["samples"].append({"t": self.now(), **self.sampler.sample()})

    async def schedule(self, subs: Child) -> None:
        """The slow subscriber, the burst, and draining the slow one once the daemon has cut it."""
        a = self.a
        burst_at = a.minutes * 60 * a.burst_at
        slow_at = 0.0 if a.slow_at_start else max(0.0, burst_at - a.slow_lead)
        await asyncio.sleep(max(0.0, slow_at - self.now()))
        subs.send("slow 0")
        self.event("slow_connect_sent")
        await asyncio.sleep(max(0.0, burst_at - self.now()))
        if not a.burst:
            return
        self.event("burst_start", n=a.burst)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(HERE / "soak_burst.py"), "--config", str(self.cfg), "--n", str(a.burst),
            "--batch", str(a.burst_batch),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await proc.communicate()
        try:
            self.res["burst"] = json.loads(out.decode().strip().splitlines()[-1])
        except (ValueError, IndexError):
            self.res["burst"] = {"failed": proc.returncode, "stderr": err.decode()[-3000:]}
        self.event("burst_end", **self.res["burst"])
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and self.slow_listed is not False and not self.died.is_set():
            await asyncio.sleep(0.5)
        self.event("slow_gone_from_status" if self.slow_listed is False else "slow_still_listed")
        subs.send("slow-drain")

    async def kill_and_restart(self) -> None:
        """--kill-at: SIGKILL the daemon at each fraction of the run and start it again at once."""
        for frac in self.a.kill_at:
            await asyncio.sleep(max(0.0, self.a.minutes * 60 * frac - self.now()))
            if self.died.is_set():
                return
            before = dict(self.last_status)
            self.restarting = True
            old = self.daemon
            old.send_signal(signal.SIGKILL)
            code = await old.wait()
            life = self.lives[-1]
            life.update(end=self.now(), ended="SIGKILL", returncode=code,
                        last_status={k: before.get(k) for k in ("t", "head", "cursor", "queue", "subscribers")})
            life["db_at_kill"] = soak_restarts.db_at_kill(self.db)
            self.event("daemon_killed", pid=old.pid, returncode=code, **life["db_at_kill"])
            try:
                await self.start(self.env, self.cfg, self.port)
            finally:
                self.sampler.pid = self.daemon.pid
                self.restarting = False
            self.lives[-1]["db_at_start"] = life["db_at_kill"]

    # -- the end ----------------------------------------------------------------------------------
    async def catch_up(self, subs: Child, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self.died.is_set():
            head = self.last_metrics.get("firehose_mod_label_head_seq") or self.last_status.get("head") or 0
            subs.send("stats")
            await asyncio.sleep(1)
            st = subs.last("stats") or {}
            if st.get("min_last", -1) >= head:
                self.event("readers_caught_up", head=head, min_last=st.get("min_last"))
                return
        self.event("readers_not_caught_up", stats=subs.last("stats"))

    async def stop_daemon(self) -> None:
        self.stopping = True
        if self.daemon.returncode is not None:
            return
        t = time.monotonic()
        self.daemon.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.wait_for(self.daemon.wait(), 30)
            self.res["stop"] = {"seconds": round(time.monotonic() - t, 2), "returncode": code}
        except asyncio.TimeoutError:
            self.daemon.kill()
            await self.daemon.wait()
            self.res["stop"] = {"seconds": None, "killed_after_s": 30}
        self.event("daemon_stopped", **self.res["stop"])


async def run(a: argparse.Namespace) -> dict:
    a.out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    data = a.data_dir or Path(tempfile.mkdtemp(prefix="soak-"))
    data.mkdir(parents=True, exist_ok=True)
    s = Soak(a, data, stamp)
    files = soak_media.make_media(a.out / "soak-media", a.covers, a.clips)
    media = soak_media.media_server(files)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FIREHOSE_MOD_")}
    daemon_env = dict(env)
    for item in a.set:
        name, _, value = item.partition("=")
        daemon_env["FIREHOSE_MOD_" + name.upper()] = value
    port = free_port()
    llm = None
    if a.llm:
        llm = soak_restarts.CyclingOpenAI().start()
        a.llm_url = llm.url
    sent_log = a.out / f"soak-{stamp}-sent.jsonl"
    js = await Child.start("jetstream", [sys.executable, str(HERE / "soak_jetstream.py"), "--rate", str(a.rate),
                                         "--replay-window", str(a.replay_window), "--sent-log", str(sent_log),
                                         "--track-every", str(a.track_every), "--media-base", f"http://127.0.0.1:{media.port}",
                                         "--cover-fraction", str(a.cover_fraction), "--audio-fraction", str(a.audio_fraction),
                                         "--covers", str(a.covers), "--clips", str(a.clips)], s)
    children = [js]
    try:
        hello = await js.first_line(timeout=120)
        blocklist = soak_media.pdq_blocklist(files["/cover/0.jpg"], data / "pdq.txt")
        s.cfg = write_config(a, data, port, hello["port"], blocklist)
        if "copyright" in a.scanners and a.clips:
            s.res["catalogue"] = soak_media.import_reference(s.cfg, files["/audio/0.mp3"], env)
        s.env = daemon_env
        await s.start(daemon_env, s.cfg, port)
        subs = await Child.start("subscribers", [sys.executable, str(HERE / "soak_subscribers.py"), "--port", str(port),
                                                 "--readers", str(a.subscribers - 1)], s)
        children.append(subs)
        s.event("subscribers_ready", **(await subs.first_line(timeout=60)))
        s.sampler = ProcSampler(s.daemon.pid, s.db, {"orchestrator": os.getpid(), "jetstream": js.pid,
                                                     "subscribers": subs.pid})
        async with httpx.AsyncClient(headers={"Connection": "close"}) as client:
            tasks = [asyncio.create_task(c) for c in (
                s.watch_daemon(), s.every(a.sample_interval, s.sample),
                s.every(a.status_interval, lambda: s.poll_status(client)),
                s.every(a.metrics_interval, lambda: s.scrape_metrics(client)), s.schedule(subs),
                s.kill_and_restart())]
            try:
                await asyncio.wait_for(s.died.wait(), a.minutes * 60 - s.now())
            except asyncio.TimeoutError:
                s.event("soak_done")
            for t in tasks[1:]:
                t.cancel()
            if not s.died.is_set():
                await s.catch_up(subs)
                await s.scrape_metrics(client)
        if subs.last("slow") and not subs.last("slow_drain"):  # a short run: the burst did not get this far
            s.event("slow_listed_at_end" if s.slow_listed else "slow_gone_at_end")
            subs.send("slow-drain")
            await subs.wait_for("slow_drain", timeout=30)
        js.send("stop")
        if a.llm or a.kill_at:  # let the scan queue drain and one more triage pass run before the end
            s.res["review_wait"] = await soak_restarts.wait_quiet(s, a.llm_interval * 2 + 10 if a.llm else 15)
        subs.send("hold")
        await s.sample()
        await s.stop_daemon()
        if s.lives:
            s.lives[-1].update(end=s.now(), ended="SIGTERM")
        tasks[0].cancel()
        subs.send(f"report {s.db}")
        rep = await subs.wait_for("report", timeout=300)
        s.res["delivery"] = rep
        s.res["slow"] = {"connect": subs.last("slow"), "drain": subs.last("slow_drain")}
        s.res["final_db"] = db_summary(s.db)
        s.res["lives"] = s.lives
        if a.kill_at or a.llm:
            s.res["restarts"] = soak_restarts.checks(s, sent_log, llm)
    finally:
        for c in children:
            await c.close()
        media.stop()
        if llm is not None:
            llm.stop()
        if s.log_file is not None:
            s.log_file.close()
        if s.daemon is not None and s.daemon.returncode is None:
            s.daemon.kill()
            await s.daemon.wait()
    s.res["meta"] = soak_report.machine_meta(stamp, data)
    if not a.keep_data and a.data_dir is None:
        shutil.rmtree(data, ignore_errors=True)
    return s.res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=30)
    ap.add_argument("--rate", type=float, default=4000, help="Jetstream events per second (whole network mix)")
    ap.add_argument("--subscribers", type=int, default=50, help="subscribeLabels clients, the slow one included")
    ap.add_argument("--burst", type=int, default=25_000, help="labels written half-way by another process")
    ap.add_argument("--burst-batch", type=int, default=500, help="labels per transaction in the burst")
    ap.add_argument("--burst-at", type=float, default=0.5, help="when the burst starts, as a fraction of the run")
    ap.add_argument("--slow-lead", type=float, default=5.0, help="the slow subscriber connects this long before the burst")
    ap.add_argument("--slow-at-start", action="store_true",
                    help="connect the slow subscriber at the start instead (the keepalive ping cuts it first)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--scanners", default="self-labels,text,cover-art,copyright")
    ap.add_argument("--track-every", type=int, default=1000, help="one fm.plyr.track event every N events")
    ap.add_argument("--cover-fraction", type=float, default=0.1, help="tracks with an imageUrl")
    ap.add_argument("--audio-fraction", type=float, default=0.005, help="tracks with an audioUrl")
    ap.add_argument("--covers", type=int, default=6)
    ap.add_argument("--clips", type=int, default=3)
    ap.add_argument("--no-compress", action="store_true", help="JSON Jetstream frames instead of zstd")
    ap.add_argument("--status-interval", type=float, default=1.0, help="0: never poll /admin/status")
    ap.add_argument("--metrics-interval", type=float, default=5.0)
    ap.add_argument("--sample-interval", type=float, default=1.0)
    ap.add_argument("--warmup", type=float, default=None, help="minutes excluded from the flatness checks "
                    "(default: 5, or a fifth of a shorter run)")
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                    help="a daemon setting as FIREHOSE_MOD_NAME=VALUE (wins over soak.toml), e.g. stream_send_timeout=5")
    ap.add_argument("--kill-at", type=lambda v: [float(x) for x in v.split(",") if x], default=[],
                    help="SIGKILL the daemon at these fractions of the run and restart it, e.g. 0.33,0.66")
    ap.add_argument("--llm", action="store_true", help="triage on, against a local fake OpenAI server"
                    " (tests/fakes/llm.py) answering FALSE_POSITIVE, VIOLATION and NEEDS_HUMAN in turn")
    ap.add_argument("--llm-interval", type=float, default=10.0, help="[triage] interval with --llm")
    ap.add_argument("--replay-window", type=float, default=None,
                    help="seconds of events the Jetstream keeps to honour the daemon's cursor on reconnect"
                    " (default: 60 with --kill-at, else 0: cursors ignored)")
    ap.add_argument("--life-warmup", type=float, default=45.0,
                    help="seconds after each start left out of that life's RSS figures")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    ap.add_argument("--data-dir", type=Path, default=None, help="default: a temporary directory, removed after")
    ap.add_argument("--keep-data", action="store_true")
    a = ap.parse_args()
    if a.warmup is None:
        a.warmup = min(5.0, a.minutes / 5)
    if a.replay_window is None:
        a.replay_window = 60.0 if a.kill_at else 0.0
    res = asyncio.run(run(a))
    paths = soak_report.write(res, a.out, res["meta"]["stamp"], warmup_min=a.warmup)
    if "restarts" in res:
        with open(paths["md"], "a") as f:
            f.write(soak_restarts.markdown(res))
    print(paths["md"].read_text())
    print("\n".join(f"{k}: {v}" for k, v in paths.items()), file=sys.stderr)


if __name__ == "__main__":
    main()
