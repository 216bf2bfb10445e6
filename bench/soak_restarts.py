"""The soak's kill-and-restart checks (issue 16, item 5): `soak.py --kill-at 0.33,0.66 --llm`.

The orchestrator (bench/soak.py) SIGKILLs the daemon at each `--kill-at` fraction of the run and
starts it again at once on the same data directory; readers reconnect with their last seq as the
cursor (bench/soak_subscribers.py does this for any dropped connection), and the Jetstream keeps
`--replay-window` seconds of events so it can honour the daemon's resume cursor as Jetstream does.
With `--llm` the triage agent is on, against `CyclingOpenAI` below: tests/fakes/llm.py's OpenAI
stand-in in a thread of the orchestrator, answering FALSE_POSITIVE, VIOLATION and NEEDS_HUMAN in turn.

What this module judges at the end, from the database and the Jetstream's log of what it sent
(`soak-<UTC>-sent.jsonl`: every track, identity and account event):

- ingest exactly-once per commit: the tracks table holds every track created (one row per uri),
  each at the last version sent (cid), deleted exactly when a delete was sent; repo_events holds
  no event that was not sent, none twice, and every identity/account event of a watched artist;
- the review queue after the run: items by status and kind, and what is still open;
- RSS per life after `--life-warmup` seconds.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import sqlite3
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
for p in (str(HERE.parent), str(HERE)):
    if p not in sys.path:
        sys.path.insert(0, p)

from tests.fakes.llm import FakeOpenAI, openai_verdict  # noqa: E402

TRACK = "fm.plyr.track"
VERDICTS = [openai_verdict("FALSE_POSITIVE", "a cover by the same artist"),
            openai_verdict("VIOLATION", "the title is abusive"),
            openai_verdict("NEEDS_HUMAN", "cannot tell from the text alone")]


class CyclingOpenAI(FakeOpenAI):
    """FakeOpenAI answering the three verdicts in turn, counting them."""

    def __init__(self):
        super().__init__()
        self._cycle = itertools.cycle(range(len(VERDICTS)))
        self.answered = {"FALSE_POSITIVE": 0, "VIOLATION": 0, "NEEDS_HUMAN": 0}

    def handle(self, h, method: str) -> None:
        with self._lock:
            i = next(self._cycle)
            self.default = VERDICTS[i]
            self.answered[list(self.answered)[i]] += 1
        super().handle(h, method)


def _ro(db: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)


def db_at_kill(db: Path) -> dict:
    """What the killed daemon had committed: the ingest cursor, the label head, counts."""
    conn = _ro(db)
    try:
        q = lambda sql: conn.execute(sql).fetchone()  # noqa: E731
        cur = q("SELECT cursor FROM source_cursors WHERE source = 'jetstream'")
        return {"cursor": cur[0] if cur else None, "head": q("SELECT max(seq) FROM labels")[0],
                "tracks": q("SELECT count(*) FROM tracks")[0], "repo_events": q("SELECT count(*) FROM repo_events")[0],
                "scan_jobs_running": q("SELECT count(*) FROM scan_jobs WHERE state = 'running'")[0],
                "review_items": q("SELECT count(*) FROM review_items")[0]}
    finally:
        conn.close()


def review_counts(db: Path) -> dict:
    conn = _ro(db)
    try:
        return {"by_status": {f"{k}/{s}": n for k, s, n in conn.execute(
                    "SELECT kind, status, count(*) FROM review_items GROUP BY 1, 2 ORDER BY 1, 2")},
                "open": [dict(zip(("id", "kind", "value", "created", "source"), r)) for r in conn.execute(
                    "SELECT id, kind, value, created, source FROM review_items WHERE status = 'open' ORDER BY id")],
                "triage_calls": dict(conn.execute("SELECT outcome, count(*) FROM triage_calls GROUP BY 1")),
                "triage_calls_per_item_max": conn.execute(
                    "SELECT max(n) FROM (SELECT count(*) n FROM triage_calls GROUP BY item_id)").fetchone()[0],
                "scan_jobs": dict(conn.execute("SELECT state, count(*) FROM scan_jobs GROUP BY 1"))}
    finally:
        conn.close()


async def wait_quiet(s, timeout: float) -> dict:
    """After the traffic stops: wait for the scan queue to drain and no open item of a triage kind."""
    t0 = time.monotonic()
    rc = {}
    while time.monotonic() - t0 < timeout:
        rc = review_counts(s.db)
        pending = rc["scan_jobs"].get("pending", 0) + rc["scan_jobs"].get("running", 0)
        open_triage = [i for i in rc["open"] if i["kind"] in ("copyright", "cover-art", "text")]
        if not pending and not open_triage:
            break
        await asyncio.sleep(1)
    out = {"waited_s": round(time.monotonic() - t0, 1), "scan_pending": rc.get("scan_jobs"),
           "open": len(rc.get("open", []))}
    s.event("review_wait", **out)
    return out


def ingest_check(db: Path, sent_log: Path) -> dict:
    """Exactly-once per commit: the database against what the Jetstream sent."""
    last: dict[str, dict] = {}
    created, deleted, ops = set(), set(), {"create": 0, "update": 0, "delete": 0}
    first_track_t: dict[str, int] = {}
    repo_sent: list[tuple[int, str, str]] = []
    with open(sent_log) as f:
        for line in f:
            try:
                e = json.loads(line)
            except ValueError:
                continue
            if e["kind"] == "commit":
                uri = f"at://{e['did']}/{TRACK}/{e['rkey']}"
                ops[e["op"]] += 1
                first_track_t.setdefault(e["did"], e["t"])
                if e["op"] == "create":
                    created.add(uri)
                if e["op"] == "delete":
                    deleted.add(uri)
                else:
                    last[uri] = e
            else:
                repo_sent.append((e["t"], e["did"], e["kind"]))
    conn = _ro(db)
    try:
        rows = {u: (cid, d) for u, cid, d in conn.execute("SELECT uri, cid, deleted FROM tracks")}
        db_repo = conn.execute("SELECT cursor, did, kind FROM repo_events WHERE source = 'jetstream'").fetchall()
        jobs = conn.execute("SELECT count(*), count(DISTINCT uri || ' ' || cid || ' ' || operation) FROM scan_jobs"
                            " WHERE operation != 'rescan'").fetchone()
        labels_dup = conn.execute("SELECT count(*) FROM (SELECT uri, cid, val, neg, count(*) n FROM labels"
                                  " GROUP BY 1, 2, 3, 4 HAVING n > 1)").fetchone()[0]
    finally:
        conn.close()
    db_uris = set(rows)
    wrong_cid = [u for u in db_uris & set(last) if u not in deleted and rows[u][0] != last[u].get("cid")]
    wrong_deleted = [u for u in db_uris if bool(rows[u][1]) != (u in deleted)]
    sent_set = set(repo_sent)
    db_set = set(db_repo)
    watched = set(first_track_t)
    # the artist must be known before its identity/account event counts: 1 s of slack after its first track
    expected_repo = {e for e in sent_set if e[1] in watched and e[0] > first_track_t[e[1]] + 1_000_000}
    return {"track_events_sent": ops, "tracks_created_sent": len(created), "tracks_in_db": len(rows),
            "tracks_missing": len(created - db_uris), "tracks_unexpected": len(db_uris - created),
            "tracks_wrong_version": len(wrong_cid), "tracks_wrong_deleted": len(wrong_deleted),
            "examples": {"missing": sorted(created - db_uris)[:3], "wrong_version": wrong_cid[:3]},
            "repo_events_sent": len(repo_sent), "repo_events_sent_watched": len(expected_repo),
            "repo_events_in_db": len(db_repo), "repo_events_distinct": len(db_set),
            "repo_events_not_sent": len(db_set - sent_set), "repo_events_missing": len(expected_repo - db_set),
            "scan_jobs": jobs[0], "scan_jobs_distinct": jobs[1], "label_rows_repeated": labels_dup}


def life_rss(samples: list[dict], lives: list[dict], warmup: float) -> list[dict]:
    out = []
    for life in lives:
        start = life.get("healthy", life["start"])
        end = life.get("end", samples[-1]["t"] if samples else start)
        pts = [(r["t"] - start, r["vmrss"] / 1024) for r in samples
               if "vmrss" in r and start + warmup <= r["t"] <= end]
        row = {"life": life["life"], "pid": life["pid"], "start_s": round(start, 1), "end_s": round(end, 1),
               "ended": life.get("ended"), "samples": len(pts)}
        if len(pts) >= 5:
            xs, ys = [p[0] for p in pts], [p[1] for p in pts]
            mx, my = statistics.fmean(xs), statistics.fmean(ys)
            den = sum((x - mx) ** 2 for x in xs) or 1
            slope = sum((x - mx) * (y - my) for x, y in pts) / den
            at = lambda age: min(pts, key=lambda p: abs(p[0] - age))[1]  # noqa: E731
            row.update(rss_after_warmup=round(ys[0], 1), rss_at_90s=round(at(90), 1), rss_end=round(ys[-1], 1),
                       rss_max=round(max(ys), 1), rss_median=round(statistics.median(ys), 1),
                       slope_mb_per_10min=round(slope * 600, 2))
        out.append(row)
    return out


def checks(s, sent_log: Path, llm) -> dict:
    res = s.res
    out: dict = {"lives": life_rss(res["samples"], s.lives, s.a.life_warmup), "kills": s.lives[:-1]}
    try:
        out["ingest"] = ingest_check(s.db, sent_log)
    except Exception as exc:  # noqa: BLE001 - a harness failure is reported, not fatal
        out["ingest"] = {"error": repr(exc)}
    out["review"] = review_counts(s.db)
    out["llm"] = {"requests": len(llm.requests), "answered": llm.answered} if llm is not None else None
    out["replays"] = [e["detail"]["replay"] for e in res["events"]
                      if e["what"] == "jetstream_event" and isinstance(e.get("detail"), dict) and "replay" in e["detail"]]
    return out


def markdown(res: dict) -> str:
    r = res["restarts"]
    d = res.get("delivery") or {}
    ing = r["ingest"]
    rv = r["review"]
    L = ["", "## Killed and restarted", ""]
    L.append("| life | pid | from (s) | to (s) | ended | RSS after warm-up | at 90 s | end | max | slope MB/10 min |")
    L.append("|---|---|---|---|---|---|---|---|---|---|")
    for x in r["lives"]:
        L.append(f"| {x['life']} | {x['pid']} | {x['start_s']} | {x['end_s']} | {x['ended']} | "
                 f"{x.get('rss_after_warmup')} | {x.get('rss_at_90s')} | {x.get('rss_end')} | {x.get('rss_max')} | "
                 f"{x.get('slope_mb_per_10min')} |")
    L += ["", "Kills (what the database held just after each SIGKILL):", ""]
    for k in r["kills"]:
        L.append(f"- life {k['life']} killed at {k['end']} s: {json.dumps(k.get('db_at_kill'))}; "
                 f"last status {json.dumps(k.get('last_status'))}")
    L += ["", "Jetstream replays on the daemon's reconnects:", ""]
    for x in r["replays"]:
        L.append(f"- {json.dumps(x)}")
    L += ["", f"Delivery: {d.get('readers_exact')} of {d.get('readers')} readers exact "
          f"(seq {d.get('expected_first')}–{d.get('expected_last')}, {d.get('expected_labels')} labels), "
          f"{d.get('reconnects')} reconnects, failing: {json.dumps(d.get('failing'))[:1500]}", ""]
    L += ["Ingest (database vs what the Jetstream sent):", "", "```", json.dumps(ing, indent=1), "```", ""]
    L += ["Review queue at the end:", "", "```", json.dumps({**rv, "open": rv["open"][:20]}, indent=1), "```", ""]
    L += [f"LLM fake: {json.dumps(r['llm'])}", f"Review wait at the end: {json.dumps(res.get('review_wait'))}", ""]
    return "\n".join(L) + "\n"
