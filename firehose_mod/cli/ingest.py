"""Commands on ingest: backfill, replay, dead letters."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from dataclasses import replace

from firehose_mod.cli.common import CommandError, ProgressLine, _out, require_database
from firehose_mod.config import Settings
from firehose_mod.ingest.backfill import run_backfill
from firehose_mod.ingest.replay import run_replay
from firehose_mod.store.open import open_ingest_store
from firehose_mod.syntax import check_did


async def backfill(settings: Settings, args: argparse.Namespace) -> int:
    for did in args.dids or ():
        check_did(did, what="--did")
    bar = ProgressLine()

    def progress(p) -> None:
        finished = p.repos_done + p.repos_failed
        bar.show(finished / max(1, p.repos_total),
                 f"repos {finished}/{p.repos_total} ({p.repos_failed} failed)  records {p.records_seen}"
                 f"  queued {p.enqueued}  rejected {p.dead_letters}  {p.elapsed:.0f}s")

    try:
        report = await run_backfill(settings, dids=args.dids, relay_url=args.relay, progress=progress,
                                    concurrency=args.concurrency, retry_failed=args.retry_failed,
                                    restart=args.restart, plc_url=settings.plc_url)
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    bar.done()
    out = {k: v for k, v in dataclasses.asdict(report).items() if k != "failures"}
    out["failures"] = [{"did": d, "error": e} for d, e in report.failures[:50]]
    _out(json.dumps(out))
    if report.repos_failed or report.discovery_error:
        print(f"firehose-mod: {report.repos_failed} repos failed"
              + (f"; discovery: {report.discovery_error}" if report.discovery_error else "")
              + ". Fix or wait, then: firehose-mod backfill --retry-failed", file=sys.stderr)
        return 1
    return 0

async def replay(settings: Settings, args: argparse.Namespace) -> int:
    if args.source:
        settings = replace(settings, ingest_source=args.source)
    bar = ProgressLine()

    def progress(cursor: int, target: int) -> None:
        done = max(0.0, min(1.0, (cursor - args.cursor) / max(1, target - args.cursor)))
        bar.show(done, f"cursor {cursor} of {target}")

    try:
        report = await run_replay(settings, args.cursor, until=args.until, progress=progress,
                                  restart=args.restart, notice=lambda m: print(f"firehose-mod: {m}", file=sys.stderr))
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    bar.done()
    _out(json.dumps(report.__dict__))
    return 0

async def dead_letters(settings: Settings, args: argparse.Namespace) -> int:
    require_database(settings, "nothing ingested yet")
    async with open_ingest_store(settings) as store:
        rows = await store.dead_letters(args.limit)
    for row in rows:
        if args.json:
            _out(json.dumps(row))
        else:
            _out(f"{row['created']}  {row['source']:<10} {row['reason']:<16} {row['uri'] or row['did'] or '-'}\n"
                 f"    {row['detail'][:300]}")
    if not rows and not args.json:
        _out("no dead letters")
    return 0
