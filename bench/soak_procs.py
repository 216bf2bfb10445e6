"""The soak's plumbing: helper processes that talk JSON lines, /proc sampling, metrics and the database."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sqlite3
import time
from pathlib import Path

PAGE = os.sysconf("SC_PAGE_SIZE")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Child:
    """A helper process: commands on stdin, one JSON object a line on stdout, stderr to a file.

    Every object is kept under each of its keys (`last(key)`); `stats` objects are also
    appended, with the soak's clock, to `soak.res[name]`; `event` and `connection` objects go
    to the soak's event list.
    """

    def __init__(self, name: str, proc: asyncio.subprocess.Process, soak):
        self.name, self.proc, self.soak = name, proc, soak
        self.pid = proc.pid
        self.latest: dict[str, object] = {}
        self.seen: dict[str, int] = {}
        self.lines = 0
        self.changed = asyncio.Event()
        self.reader = asyncio.create_task(self._read())

    @classmethod
    async def start(cls, name: str, argv: list[str], soak) -> Child:
        err = open(soak.a.out / f"soak-{soak.stamp}-{name}.log", "wb")
        proc = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.PIPE,
                                                    stdout=asyncio.subprocess.PIPE, stderr=err, limit=1 << 24)
        err.close()
        return cls(name, proc, soak)

    async def _read(self) -> None:
        while line := await self.proc.stdout.readline():
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            self.lines += 1
            for key, value in obj.items():
                self.latest[key] = value
                self.seen[key] = self.seen.get(key, 0) + 1
            if "stats" in obj and self.soak.t0:
                self.soak.res[self.name].append({**obj["stats"], "clock": obj["stats"].get("t"), "t": self.soak.now()})
            for key in ("event", "connection"):
                if key in obj and self.soak.t0:
                    self.soak.event(f"{self.name}_{key}", detail=obj[key])
            self.changed.set()
            self.changed = asyncio.Event()

    async def first_line(self, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while not self.lines:
            if self.proc.returncode is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not start (exit {self.proc.returncode}); see its log")
            await asyncio.sleep(0.05)
        return dict(self.latest)

    async def wait_for(self, key: str, timeout: float):
        before = self.seen.get(key, 0)
        deadline = time.monotonic() + timeout
        while self.seen.get(key, 0) == before:
            if self.proc.returncode is not None or time.monotonic() > deadline:
                return {"missing": key, "exit": self.proc.returncode}
            try:
                await asyncio.wait_for(self.changed.wait(), 1)
            except asyncio.TimeoutError:
                pass
        return self.latest[key]

    def last(self, key: str):
        return self.latest.get(key)

    def send(self, command: str) -> None:
        if self.proc.returncode is None and self.proc.stdin is not None and not self.proc.stdin.is_closing():
            self.proc.stdin.write(command.encode() + b"\n")

    async def close(self) -> None:
        if self.proc.returncode is None:
            self.proc.stdin.close()  # EOF: the helper exits by itself
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except asyncio.TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        self.reader.cancel()


# -- /proc ----------------------------------------------------------------------------------------------
def _stat(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rfind(")") + 2:].split()  # fields from 3 (state) on: index = field number - 3


def cpu_seconds(pid: int, with_reaped_children: bool = False) -> float | None:
    f = _stat(pid)
    if f is None:
        return None
    ticks = int(f[11]) + int(f[12]) + ((int(f[13]) + int(f[14])) if with_reaped_children else 0)
    return round(ticks / os.sysconf("SC_CLK_TCK"), 2)


def children_of(pid: int) -> list[int]:
    out = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            f = _stat(int(entry.name))
            if f is not None and int(f[1]) == pid:
                out.append(int(entry.name))
    return out


def wal_header(path: Path) -> tuple[int, int] | None:
    """(checkpoint sequence, salt-1) from a WAL file's header: both change each time the WAL restarts."""
    try:
        with open(path, "rb") as f:
            head = f.read(32)
    except OSError:
        return None
    if len(head) < 32:
        return None
    return int.from_bytes(head[12:16], "big"), int.from_bytes(head[16:20], "big")


class ProcSampler:
    """RSS, descriptors, threads and CPU of the daemon and its worker processes; the WAL's size."""

    def __init__(self, pid: int, db: Path, harness: dict[str, int] | None = None):
        self.pid, self.db = pid, db
        self.wal = Path(str(db) + "-wal")
        self.harness = harness or {}
        self.wal_restarts = 0
        self._wal_last: tuple[int, int] | None = None

    def sample(self) -> dict:
        row: dict = {}
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM", "Threads"):
                    row[key.lower()] = int(value.split()[0])
            row["fds"] = len(os.listdir(f"/proc/{self.pid}/fd"))
        except OSError:
            row["gone"] = True
            return row
        row["cpu_s"] = cpu_seconds(self.pid, with_reaped_children=True)
        kids = children_of(self.pid)
        rss = cpu = 0.0
        for k in kids:
            f = _stat(k)
            if f is not None:
                rss += int(f[21]) * PAGE / 1024
                cpu += (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
        row.update(children=len(kids), children_rss=int(rss), children_cpu_s=round(cpu, 2))
        try:
            row["wal_bytes"] = self.wal.stat().st_size
        except OSError:
            row["wal_bytes"] = 0
        head = wal_header(self.wal)
        if head is not None and self._wal_last is not None and head != self._wal_last:
            self.wal_restarts += 1
        self._wal_last = head or self._wal_last
        row["wal_restarts"] = self.wal_restarts
        try:
            row["db_bytes"] = self.db.stat().st_size
        except OSError:
            pass
        row["load1"] = os.getloadavg()[0]
        row["harness_cpu_s"] = {name: cpu_seconds(pid) for name, pid in self.harness.items()}
        return row


def daemon_log_tail(path: Path, budget: int = 6000) -> str:
    """What a dead daemon said last: lines that are not JSON (tracebacks), errors, the last events."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, 2) - 400_000))
            lines = f.read().decode("utf-8", "replace").splitlines()
    except OSError as exc:
        return f"(no log: {exc})"
    raw, errors = [], []
    for line in lines:
        try:
            obj = json.loads(line)
        except ValueError:
            raw.append(line)
            continue
        if isinstance(obj, dict) and obj.get("level") in ("error", "critical", "exception"):
            errors.append(line)
    text = "\n".join(["-- not JSON (last 60):", *raw[-60:], "-- errors (last 10):", *errors[-10:],
                      "-- last 5 lines:", *lines[-5:]])
    return text[-budget:]


def parse_metrics(text: str) -> dict[str, float]:
    """The daemon's own series from a Prometheus exposition, per-subscriber ones left out."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line.startswith("firehose_mod_") or "subscriber=" in line:
            continue
        name, _, value = line.rpartition(" ")
        if name.split("{")[0].endswith("_created"):
            continue
        try:
            out[name] = float(value)
        except ValueError:
            pass
    return out


def db_summary(db: Path) -> dict:
    """Counts from the database after the run (read-only)."""
    out: dict = {"db_bytes": db.stat().st_size if db.exists() else None}
    wal = Path(str(db) + "-wal")
    out["wal_bytes"] = wal.stat().st_size if wal.exists() else 0
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    except sqlite3.Error as exc:
        return {**out, "error": repr(exc)}
    try:
        q = lambda sql: conn.execute(sql).fetchall()  # noqa: E731
        out["labels"], out["max_seq"], out["negations"] = q("SELECT count(*), max(seq), sum(neg) FROM labels")[0]
        out["label_vals"] = dict(q("SELECT val || CASE neg WHEN 1 THEN ' (neg)' ELSE '' END, count(*) FROM labels"
                                   " GROUP BY 1 ORDER BY 2 DESC LIMIT 12"))
        out["scan_jobs"] = dict(q("SELECT state, count(*) FROM scan_jobs GROUP BY state"))
        out["scan_errors"] = [e for (e,) in q("SELECT DISTINCT substr(error, 1, 200) FROM scan_jobs"
                                               " WHERE error IS NOT NULL LIMIT 5")]
        out["tracks"] = q("SELECT count(*) FROM tracks")[0][0]
        out["repo_events"] = q("SELECT count(*) FROM repo_events")[0][0]
        out["dead_letters"] = dict(q("SELECT reason, count(*) FROM dead_letters GROUP BY reason"))
        out["decisions"] = dict(q("SELECT action, count(*) FROM decisions GROUP BY action"))
        out["review_open"] = q("SELECT count(*) FROM review_items WHERE state = 'open'")[0][0]
        out["catalogue"] = dict(q("SELECT kind, count(*) FROM catalogue_refs GROUP BY kind"))
    except sqlite3.Error as exc:
        out["error"] = repr(exc)
    finally:
        conn.close()
    return out
