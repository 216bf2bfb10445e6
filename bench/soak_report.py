"""The soak's report: a table per minute, the checks against issue 22, and a plot.

    python3 bench/soak_report.py bench/results/soak-latest.json     # redraw the .md and .png from a run

matplotlib is a bench-only dependency (`pip install matplotlib`); without it the report is
written without the plot.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import sqlite3
import statistics
import subprocess
import sys
from pathlib import Path

MB = 1024 * 1024
LAG_LIMIT_S = 1.0
RSS_LIMIT_MB_PER_10MIN = 1.0
STOP_LIMIT_S = 5.0


def machine_meta(stamp: str, data: Path) -> dict:
    repo = Path(__file__).resolve().parent.parent
    git = lambda *a: subprocess.run(["git", *a], cwd=repo, capture_output=True, text=True).stdout.strip()  # noqa: E731
    import websockets

    return {"stamp": stamp, "commit": git("rev-parse", "--short", "HEAD"), "dirty": bool(git("status", "--porcelain",
            "firehose_mod")), "python": platform.python_version(), "cpus": os.cpu_count(),
            "sqlite": sqlite3.sqlite_version, "websockets": websockets.__version__, "kernel": platform.release(),
            "data_dir": str(data)}


def _in(rows: list[dict], lo: float, hi: float) -> list[dict]:
    return [r for r in rows if lo <= r["t"] < hi]


def _diff(rows: list[dict], key, scale: float = 1.0) -> float | None:
    vals = [(r["t"], key(r)) for r in rows if key(r) is not None]
    if len(vals) < 2 or vals[-1][0] == vals[0][0]:
        return None
    return (vals[-1][1] - vals[0][1]) / (vals[-1][0] - vals[0][0]) * scale


def _pct(vals: list[float], q: float) -> float | None:
    if not vals:
        return None
    vals = sorted(vals)
    return vals[min(len(vals) - 1, int(q * len(vals)))]


def _fmt(v, nd: int = 1) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:,.{nd}f}"
    return f"{v:,}"


def _metric(row: dict, name: str) -> float | None:
    return (row.get("m") or {}).get(name)


def per_minute(res: dict) -> list[dict]:
    samples = [s for s in res["samples"] if "vmrss" in s]
    end = max([s["t"] for s in samples] + [0])
    end = min(end, float(res["args"]["minutes"]) * 60 - 1)  # the catch-up and the stop are reported apart
    rows = []
    prev_rss = None
    for m in range(int(end // 60) + 1):
        lo, hi = m * 60, (m + 1) * 60
        sm = _in(samples, lo, hi + 1e-9)
        if not sm:
            continue
        st = [r for r in _in(res["status"], lo, hi)]
        lags = [r["lag_s"] for r in st if "lag_s" in r]
        mlags = [r["lag_s"] for r in _in(res["metrics"], lo, hi) if "lag_s" in r]
        lat = [r["latency_ms"] for r in st if "latency_ms" in r]
        ok = [r for r in st if "head" in r]
        mt = _in(res["metrics"], lo - 5, hi)
        rss = sm[-1]["vmrss"] / 1024
        harness = _diff(sm, lambda r: sum(v or 0 for v in r["harness_cpu_s"].values()), 100)
        rows.append({
            "minute": m + 1,
            "sent_eps": _diff(_in(res["jetstream"], lo - 5, hi), lambda r: r["events"]),
            "ingest_fps": _diff(mt, lambda r: _metric(r, 'firehose_mod_ingest_frames_total{source="jetstream"}')),
            "cpu_pct": _diff(sm, lambda r: r["cpu_s"], 100),
            "workers_cpu_pct": max(0.0, _diff(sm, lambda r: r["children_cpu_s"], 100) or 0.0),
            "rss_mb": rss, "rss_delta_mb": None if prev_rss is None else rss - prev_rss,
            "children_rss_mb": sm[-1]["children_rss"] / 1024, "children": sm[-1]["children"],
            "fds": f"{min(s['fds'] for s in sm)}–{max(s['fds'] for s in sm)}", "threads": sm[-1].get("threads"),
            "wal_mb": max(s["wal_bytes"] for s in sm) / MB, "wal_restarts": sm[-1]["wal_restarts"] - sm[0]["wal_restarts"],
            "lag_p50": _pct(lags, 0.5), "lag_max": max(lags + mlags) if lags or mlags else None,
            "status_ok": f"{len(ok)}/{len(st)}", "status_p50_ms": _pct(lat, 0.5), "status_max_ms": max(lat) if lat else None,
            "head": ok[-1]["head"] if ok else None, "pending": (ok[-1].get("queue") or {}).get("pending") if ok else None,
            "done": (ok[-1].get("queue") or {}).get("done") if ok else None, "subs": ok[-1].get("subscribers") if ok else None,
            "harness_pct": harness, "load1": statistics.fmean(s["load1"] for s in sm),
        })
        prev_rss = rss
    return rows


COLUMNS = [("minute", "min", 0), ("sent_eps", "sent ev/s", 0), ("ingest_fps", "ingested fr/s", 0),
           ("cpu_pct", "daemon CPU %", 0), ("workers_cpu_pct", "scan procs CPU %", 0), ("rss_mb", "RSS MB", 1),
           ("rss_delta_mb", "ΔRSS MB", 2), ("children_rss_mb", "scan procs RSS MB", 0), ("fds", "fds", 0),
           ("threads", "threads", 0), ("wal_mb", "WAL MB", 1), ("wal_restarts", "WAL restarts", 0),
           ("lag_p50", "lag p50 s", 2), ("lag_max", "lag max s", 2), ("status_ok", "status ok", 0),
           ("status_p50_ms", "status p50 ms", 0), ("status_max_ms", "status max ms", 0), ("head", "label head", 0),
           ("pending", "queue pending", 0), ("done", "jobs done", 0), ("subs", "subs", 0),
           ("harness_pct", "harness CPU %", 0), ("load1", "load", 1)]


def table(rows: list[dict]) -> str:
    out = ["| " + " | ".join(h for _, h, _ in COLUMNS) + " |", "|" + "---:|" * len(COLUMNS)]
    for r in rows:
        out.append("| " + " | ".join(_fmt(r[k], nd) if not isinstance(r[k], str) else r[k] for k, _, nd in COLUMNS) + " |")
    return "\n".join(out)


def _slope_mb_per_10min(points: list[tuple[float, float]]) -> float | None:
    if len(points) < 10 or points[-1][0] - points[0][0] < 60:
        return None
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    var = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var * 600 / 1024 if var else None


def _event(res: dict, what: str) -> dict | None:
    return next((e for e in res["events"] if e["what"] == what), None)


def checks(res: dict, warmup_min: float) -> list[tuple[str, str, str]]:
    """(aim, measured, verdict) for each of issue 22's aims."""
    out = []
    samples = [s for s in res["samples"] if "vmrss" in s]
    warm = warmup_min * 60
    died = res.get("daemon_died")
    end = samples[-1]["t"] if samples else 0
    minutes = float(res["args"].get("minutes", 0))
    out.append(("the daemon lives through the run",
                f"died at {died['t']:.0f} s, exit {died['returncode']}" if died else f"alive at {end / 60:.1f} min",
                "FAIL" if died else "pass"))
    b0, b1 = _event(res, "burst_start"), _event(res, "burst_end")
    after = [s for s in samples if s["t"] >= warm]
    segments = [("after warm-up", after)]
    if b0 and b1:
        segments = [("before the burst", [s for s in after if s["t"] < b0["t"] - 5]),
                    ("after the burst", [s for s in after if s["t"] > b1["t"] + 60])]
    parts, verdicts = [], []
    for name, seg in segments:
        slope = _slope_mb_per_10min([(s["t"], s["vmrss"]) for s in seg])
        if slope is None:
            parts.append(f"{name}: too short to fit")
            verdicts.append("n/a")
        else:
            parts.append(f"{name}: {slope:+.2f} MB/10 min ({seg[0]['vmrss'] / 1024:.1f} → {seg[-1]['vmrss'] / 1024:.1f} MB)")
            verdicts.append("pass" if slope < RSS_LIMIT_MB_PER_10MIN else "FAIL")
    if b0 and b1:
        pre = [s["vmrss"] for s in samples if s["t"] < b0["t"]]
        post = [s["vmrss"] for s in samples if s["t"] > b1["t"]]
        if pre and post:
            parts.append(f"burst step {(max(post) - pre[-1]) / 1024:+.1f} MB")
    out.append((f"RSS flat after warm-up ({warmup_min:g} min): < {RSS_LIMIT_MB_PER_10MIN} MB growth per 10 min",
                "; ".join(parts), _worst(verdicts)))
    if after:
        # Flat: the last third sets no new high (a scan process spawned once adds 3 fds for good).
        fds = [s["fds"] for s in after]
        last = [s["fds"] for s in after if s["t"] >= end * 2 / 3]
        before = [s["fds"] for s in after if s["t"] < end * 2 / 3] or fds
        out.append(("file descriptors flat",
                    f"after warm-up {fds[0]} → {fds[-1]} (min {min(fds)}, max {max(fds)}); last third max "
                    f"{max(last or [0])} vs {max(before)} before",
                    "pass" if max(last or [0]) <= max(before) + 1 else "FAIL"))
    if samples:
        out.append(_wal_check(samples, warm, end))
    lags = [(r["t"], r["lag_s"]) for r in res["status"] + res["metrics"] if "lag_s" in r and r["t"] > 10]
    st = res["status"]
    failed = [r for r in st if "head" not in r]
    if lags:
        worst = max(lags, key=lambda x: x[1])
        over = sum(1 for _, v in lags if v >= LAG_LIMIT_S)
        out.append((f"ingest lag < {LAG_LIMIT_S:g} s throughout",
                    f"max {worst[1]:.2f} s (at {worst[0]:.0f} s), p99 {_pct([v for _, v in lags], 0.99):.2f} s, "
                    f"{over} of {len(lags)} samples ≥ {LAG_LIMIT_S:g} s", "pass" if not over else "FAIL"))
    else:
        out.append((f"ingest lag < {LAG_LIMIT_S:g} s throughout", "no sample", "n/a"))
    lat = [r["latency_ms"] for r in st if "latency_ms" in r]
    out.append(("/admin/status polled every second",
                f"{len(st) - len(failed)} of {len(st)} answered; p50 {_fmt(_pct(lat, 0.5))} ms, p99 {_fmt(_pct(lat, 0.99))} ms, "
                f"max {_fmt(max(lat) if lat else None)} ms", "pass" if st and not failed else "FAIL"))
    d = res.get("delivery") or {}
    if "readers" in d:
        out.append(("every label delivered once, in order, to every reading subscriber",
                    f"{d['readers_exact']} of {d['readers']} readers got exactly the log's {d['expected_labels']:,} labels "
                    f"(seq {d['expected_first']}–{d['expected_last']}); {d['reconnects']} reconnects; "
                    f"{d['checked_frames']:,} frames fully decoded, {d['check_failures']} mismatches",
                    "n/a" if not d["expected_labels"] else "pass" if d["readers_exact"] == d["readers"] else "FAIL"))
    else:
        out.append(("every label delivered once to every reading subscriber", f"no report: {d}", "FAIL"))
    slow = res.get("slow") or {}
    last_m = next((r["m"] for r in reversed(res["metrics"]) if "m" in r), {})
    too_slow = last_m.get('firehose_mod_disconnects_total{reason="consumer_too_slow"}', 0)
    reasons = {k.split('"')[1]: int(v) for k, v in last_m.items() if k.startswith("firehose_mod_disconnects_total")}
    drain = slow.get("drain") or {}
    saw = (f"the client read {drain.get('label_frames', 0):,} label frames, error frames "
           f"{[e.get('error') for e in drain.get('error_frames', [])]}, close codes {drain.get('close_codes')}, "
           f"then {drain.get('ended')}") if drain else "not drained"
    cut = _event(res, "slow_gone_from_status")
    out.append(("the slow subscriber cut with ConsumerTooSlow",
                f"disconnects by reason {reasons}; gone from status "
                f"{'at ' + format(cut['t'], '.0f') + ' s' if cut else 'never'}; {saw}",
                # The server's counter, or (with --kill-at /metrics restarts from zero each life)
                # the client's own evidence: a ConsumerTooSlow error frame, then close 1008.
                "pass" if too_slow >= 1 or client_saw_cut(drain) else "FAIL" if slow.get("connect") else "n/a"))
    stop = res.get("stop") or {}
    out.append((f"stops within {STOP_LIMIT_S:g} s on SIGTERM (issue 22 item 3)",
                f"{stop.get('seconds')} s, exit {stop.get('returncode')}" if stop.get("seconds") is not None else str(stop),
                "pass" if stop.get("seconds") is not None and stop["seconds"] <= STOP_LIMIT_S and stop.get("returncode") == 0
                else ("n/a" if died else "FAIL")))
    if minutes and end < minutes * 60 * 0.95:
        out.append(("ran the whole time", f"{end / 60:.1f} of {minutes:g} min", "FAIL"))
    return out


def _wal_check(samples: list[dict], warm: float, end: float) -> tuple[str, str, str]:
    """The WAL file keeps its high-water size; bounded means it keeps restarting (a checkpoint got
    through) and its size stops growing: the last third sets no new high-water mark worth a name."""
    wal = [s["wal_bytes"] for s in samples]
    last = [s["wal_bytes"] for s in samples if s["t"] >= end * 2 / 3]
    before = [s["wal_bytes"] for s in samples if s["t"] < end * 2 / 3]
    times = [b["t"] for a, b in zip(samples, samples[1:]) if b["wal_restarts"] > a["wal_restarts"] and b["t"] >= warm]
    gaps = [b - a for a, b in zip([warm] + times, times + [end])]
    grew = bool(last and before and max(last) > max(before) * 1.1 + MB)
    measured = (f"max {max(wal) / MB:.1f} MB; {samples[-1]['wal_restarts']} restarts ({len(times)} after warm-up, "
                f"longest stretch without one {max(gaps):.0f} s); last third max {max(last or [0]) / MB:.1f} MB "
                f"vs {max(before or [0]) / MB:.1f} MB before")
    verdict = "pass" if times and not grew else "FAIL" if end - warm >= 120 else "n/a"
    return "the WAL bounded by checkpoints", measured, verdict


def _worst(verdicts: list[str]) -> str:
    return "FAIL" if "FAIL" in verdicts else ("n/a" if "n/a" in verdicts else "pass")


def markdown(res: dict, warmup_min: float) -> str:
    a, meta = res["args"], res.get("meta", {})
    rows = per_minute(res)
    lines = [f"# Soak {meta.get('stamp', '')}: {a['minutes']} min at {a['rate']} events/s, {a['subscribers']} subscribers, "
             f"burst {a['burst']}", "",
             f"Commit {meta.get('commit')}{' (firehose_mod/ modified)' if meta.get('dirty') else ''}, Python {meta.get('python')}, "
             f"SQLite {meta.get('sqlite')}, websockets {meta.get('websockets')}, {meta.get('cpus')} CPUs, "
             f"Linux {meta.get('kernel')}.", "", "## Checks", "", "| aim | measured | verdict |", "|---|---|---|"]
    lines += [f"| {aim} | {measured} | **{v}** |" for aim, measured, v in checks(res, warmup_min)]
    lines += ["", "## Per minute", "", table(rows), ""]
    js = res["jetstream"][-1] if res["jetstream"] else {}
    lines += ["## Traffic, burst and database", "",
              f"- Jetstream: {js.get('events', 0):,} events sent, tracks {js.get('track_create', 0)} created / "
              f"{js.get('track_update', 0)} updated / {js.get('track_delete', 0)} deleted, {js.get('with_cover', 0)} with a cover, "
              f"{js.get('with_audio', 0)} with audio; {js.get('connections', 0)} connection(s), writer behind schedule at most "
              f"{js.get('behind_max_s')} s, largest send buffer {_fmt(js.get('write_buffer_max'))} bytes.",
              f"- Burst: {json.dumps(res.get('burst'))}",
              f"- Database after the run: {json.dumps(res.get('final_db'))}"]
    if res.get("daemon_died"):
        lines += ["", "## The daemon died", "", f"Exit code {res['daemon_died']['returncode']} at "
                  f"{res['daemon_died']['t']:.0f} s. Tail of its stderr:", "", "```", res["daemon_died"]["stderr_tail"], "```"]
    lines += ["", "## Events", "", "| t s | what | detail |", "|---:|---|---|"]
    for e in res["events"][:200]:
        detail = {k: v for k, v in e.items() if k not in ("t", "what", "stderr_tail")}
        lines.append(f"| {e['t']:.1f} | {e['what']} | {json.dumps(detail)[:300] if detail else ''} |")
    return "\n".join(lines) + "\n"


def plot(res: dict, path: Path) -> bool:
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib)", file=sys.stderr)
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = [x for x in res["samples"] if "vmrss" in x]
    t = [x["t"] / 60 for x in s]
    fig, ax = plt.subplots(3, 2, figsize=(14, 10), sharex=True)
    ax = ax.ravel()
    ax[0].plot(t, [x["vmrss"] / 1024 for x in s], label="daemon RSS")
    ax[0].set_ylabel("MB")
    ax0b = ax[0].twinx()
    ax0b.plot(t, [x["children_rss"] / 1024 for x in s], color="tab:orange", alpha=0.6, label="scan processes RSS (right)")
    ax0b.set_ylabel("MB (scan processes)")
    ax0b.legend(fontsize=7, loc="lower right")
    ax[0].set_title("memory")
    ax[1].plot(t, [x["fds"] for x in s], label="open fds")
    ax[1].plot(t, [x.get("threads") for x in s], label="threads")
    ax[1].set_title("descriptors and threads")
    ax[2].plot(t, [x["wal_bytes"] / MB for x in s], label="WAL file")
    ax[2].set_ylabel("MB")
    restarts = [x["t"] / 60 for a, x in zip(s, s[1:]) if x["wal_restarts"] > a["wal_restarts"]]
    if restarts:
        ax[2].plot(restarts, [0] * len(restarts), "|", color="tab:green", markersize=12, label="WAL restarted")
    ax[2].set_title("WAL")
    st = [r for r in res["status"] if "lag_s" in r]
    ax[3].plot([r["t"] / 60 for r in st], [r["lag_s"] for r in st], ".", markersize=2, label="ingest lag (status)")
    mt = [r for r in res["metrics"] if "lag_s" in r]
    ax[3].plot([r["t"] / 60 for r in mt], [r["lag_s"] for r in mt], "x", markersize=4, label="ingest lag (metrics)")
    ax[3].axhline(LAG_LIMIT_S, color="red", lw=0.8, ls="--")
    ax[3].set_ylabel("s")
    ax[3].set_title("ingest lag: clock minus committed time_us")
    ok = [r for r in res["status"] if "head" in r]
    ax[4].plot([r["t"] / 60 for r in ok], [r["head"] for r in ok], label="label head")
    subs = res["subscribers"]
    ax[4].plot([r["t"] / 60 for r in subs], [r["min_last"] for r in subs], "--", label="slowest reader's last seq")
    ax[4].set_title("labels")
    cpu = [(b["t"] / 60, (b["cpu_s"] - a_["cpu_s"]) / max(1e-9, b["t"] - a_["t"]) * 100) for a_, b in zip(s, s[1:])]
    ax[5].plot([c[0] for c in cpu], [c[1] for c in cpu], lw=0.6, label="daemon")
    hcpu = [(b["t"] / 60, (sum(v or 0 for v in b["harness_cpu_s"].values()) - sum(v or 0 for v in a_["harness_cpu_s"].values()))
             / max(1e-9, b["t"] - a_["t"]) * 100) for a_, b in zip(s, s[1:])]
    ax[5].plot([c[0] for c in hcpu], [c[1] for c in hcpu], lw=0.6, label="harness")
    ax[5].set_ylabel("% of one core")
    ax[5].set_title("CPU")
    b0, b1 = _event(res, "burst_start"), _event(res, "burst_end")
    died = res.get("daemon_died")
    for a_ in ax:
        if b0 and b1:
            a_.axvspan(b0["t"] / 60, b1["t"] / 60, color="grey", alpha=0.2)
        if died:
            a_.axvline(died["t"] / 60, color="red")
        a_.legend(fontsize=7, loc="upper left")
        a_.grid(alpha=0.3)
    ax[4].set_xlabel("minutes")
    ax[5].set_xlabel("minutes")
    a = res["args"]
    fig.suptitle(f"soak {res.get('meta', {}).get('stamp', '')}: {a['rate']} events/s, {a['subscribers']} subscribers, "
                 f"burst {a['burst']} (grey){', daemon died (red)' if died else ''}")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def write(res: dict, out: Path, stamp: str, warmup_min: float) -> dict[str, Path]:
    base = out / f"soak-{stamp}"
    paths = {"json": base.with_suffix(".json"), "md": base.with_suffix(".md"), "png": base.with_suffix(".png")}
    paths["json"].write_text(json.dumps(res))
    paths["md"].write_text(markdown(res, warmup_min))
    if not plot(res, paths["png"]):
        del paths["png"]
    for kind, p in list(paths.items()):
        shutil.copyfile(p, out / f"soak-latest{p.suffix}")
    return paths


def main() -> None:
    src = Path(sys.argv[1])
    res = json.loads(src.read_text())
    warmup = float(sys.argv[2]) if len(sys.argv) > 2 else min(5.0, float(res["args"]["minutes"]) / 5)
    md = src.with_suffix(".md")
    md.write_text(markdown(res, warmup))
    plot(res, src.with_suffix(".png"))
    print(md.read_text())



def client_saw_cut(drain: dict) -> bool:
    """The slow client itself got `ConsumerTooSlow` and the policy-violation close (1008)."""
    errors = [e.get("error") for e in drain.get("error_frames", [])]
    return "ConsumerTooSlow" in errors and 1008 in (drain.get("close_codes") or [])


if __name__ == "__main__":
    main()
