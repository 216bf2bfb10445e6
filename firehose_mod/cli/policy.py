"""Policy operations: scan (dry run), explain, rescan, the catalogue."""

from __future__ import annotations

import argparse
import json
import sys

from firehose_mod.cli.common import CommandError, ProgressLine, _out, require_database
from firehose_mod.config import Settings
from firehose_mod.daemon import open_label_log
from firehose_mod.labels.model import format_datetime, parse_datetime
from firehose_mod.ops import dryrun
from firehose_mod.ops import explain as explaining
from firehose_mod.ops.rescan import RescanReport
from firehose_mod.ops.rescan import rescan as run_rescan
from firehose_mod.scan import copyright as cr
from firehose_mod.scan.catalogue import index_dir, index_summary
from firehose_mod.scan.cover import BlocklistError
from firehose_mod.scan.fingerprint import FingerprintIndex
from firehose_mod.scan.policy import PolicyError
from firehose_mod.scan.registry import open_engine
from firehose_mod.store.open import open_catalogue_store, open_decision_store, open_ingest_store
from firehose_mod.syntax import check_at_uri, check_subject

async def scan(settings: Settings, args: argparse.Namespace) -> int:
    """Exit 0: nothing would change; 1: something would be labeled, negated or reviewed; 2: errors."""
    for target in args.targets:
        if target.startswith("at://"):
            check_at_uri(target, record=True, what="target")
    bar = ProgressLine()

    def show(result) -> None:
        _out(json.dumps(result.to_json()) if args.json else dryrun.render_text(result))

    try:
        report = await dryrun.dry_run(settings, args.targets, concurrency=args.concurrency, on_result=show,
                               progress=lambda done, total, target, status: bar.show(done / max(1, total),
                                                                                    f"{done}/{total} {status}"))
    except (PolicyError, BlocklistError, ValueError) as exc:
        raise CommandError(str(exc)) from None
    bar.done()
    print(dryrun.render_summary(report), file=sys.stderr)
    return dryrun.exit_code(report)

async def explain(settings: Settings, args: argparse.Namespace) -> int:
    check_subject(args.subject)
    require_database(settings, "nothing labelled or scanned yet")
    async with open_label_log(settings) as label_log, open_decision_store(settings) as decisions:
        try:
            expl = await explaining.explain(label_log, decisions, args.subject)
        except explaining.ExplainError as exc:
            raise CommandError(str(exc)) from None
    _out(json.dumps(expl.to_json(), indent=2) if args.json else explaining.render_text(expl))
    if expl.empty:
        print(f"firehose-mod: nothing recorded for {args.subject}: never labelled or scanned by this labeler",
              file=sys.stderr)
        return 1
    return 0

async def rescan(settings: Settings, args: argparse.Namespace) -> int:
    if args.since:
        try:
            since = format_datetime(parse_datetime(args.since))
        except ValueError as exc:
            raise CommandError(f"--since: {exc}") from None
    else:
        since = None
    for uri in args.uri or ():
        check_at_uri(uri, record=True, what="--uri")
    require_database(settings, "no tracks stored yet")
    report = RescanReport(applied=args.apply)
    bar = ProgressLine()
    async with (open_label_log(settings) as label_log, open_engine(settings, label_log) as scanning,
                open_ingest_store(settings) as store):
        engine = scanning.engine  # without --apply nothing is written: apply() and perform_effects() are not called
        try:
            if args.uri and (missing := await _unknown_tracks(store, args.uri)):
                raise CommandError(f"no stored track {missing[0]} (of {len(missing)} --uri not stored): rescan"
                                   " re-checks tracks ingest has seen; see `firehose-mod explain URI`")
            async for change in run_rescan(settings, engine, store, uris=args.uri, since=since,
                                           scanner=args.scanner, apply=args.apply, rate=args.rate, report=report,
                                           progress=lambda r: bar.show(0.0, f"checked {r.checked}, changed {r.changed}")):
                if args.json:
                    _out(json.dumps(change.to_json()))
                else:
                    _out(change.uri)
                    for e in change.emit:
                        _out(f"  + label {e['value']}  ({e['rule']})")
                    for v in change.negate:
                        _out(f"  - negate {v}  (no longer found)")
                    for r in change.review:
                        _out(f"  ? review {r['value']}  ({r['rule']})")
        except ValueError as exc:
            raise CommandError(str(exc)) from None
    bar.done()
    summary = {"summary": report.__dict__}
    if args.json:
        _out(json.dumps(summary))
    else:
        verb = "changed" if args.apply else "would change"
        _out(f"checked {report.checked} tracks: {report.changed} {verb} (+{report.labels} labels,"
             f" -{report.negations} negations, ?{report.reviews} reviews), {report.failures} with scanner failures"
             + ("" if args.apply or not report.changed else "; run again with --apply to write this"))
    return 0

async def _unknown_tracks(store, uris: list[str]) -> list[str]:
    known = {uri for uri, _cid, _record in await store.tracks_page("", len(uris) + 1, uris=uris)}
    return [u for u in uris if u not in known]

async def catalogue(settings: Settings, args: argparse.Namespace) -> int:
    async with open_catalogue_store(settings) as store:
        match args.catalogue_command:
            case "add":
                index = FingerprintIndex()  # the running daemon reloads its own within 30 s
                bar = ProgressLine()
                report = await cr.import_paths(
                    args.paths, store, index,
                    progress=lambda done, total, path, status: bar.show(done / max(1, total), f"{done}/{total} {status} {path[-60:]}"),
                )
                bar.done()
                body = {"added": report.added, "skipped": [{"path": p, "why": w} for p, w in report.skipped],
                        "failed": [{"path": p, "error": e} for p, e in report.failed],
                        "seconds_of_audio": round(report.seconds_of_audio, 1)}
                if args.json:
                    _out(json.dumps(body))
                else:
                    _out(f"added {len(report.added)} references ({report.seconds_of_audio / 60:.1f} audio-minutes),"
                         f" skipped {len(report.skipped)}, failed {len(report.failed)}")
                    for p, why in report.skipped[:20] + report.failed[:20]:
                        _out(f"  {p}: {why}")
                    if report.added:
                        _out("new uploads are checked against them now; to check stored ones: firehose-mod rescan --all"
                             " (then --apply)")
                return 1 if report.failed else 0
            case "list":
                refs = await store.list(kind=args.kind)
                for r in refs:
                    row = {"ref": r.ref, "kind": r.kind, "title": r.title, "artist": r.artist,
                           "duration": r.duration, "added": r.added, "entries": r.entries}
                    _out(json.dumps(row) if args.json else
                         f"{r.ref}  {r.title or '-'} / {r.artist or '-'}  {r.duration or 0:.0f}s  added {r.added}")
                if not refs and not args.json:
                    _out(f"no {args.kind}s in the catalogue (add some: firehose-mod catalogue add PATH...)")
                return 0
            case "stats":
                stats = await store.stats()
                index = index_summary(index_dir(settings.db_path))
                if args.json:
                    _out(json.dumps({**stats, "index": index}))
                else:
                    _out("  ".join(f"{k} {v}" for k, v in stats.items()))
                    _out(f"index: {index['segments']} segments, {index['index_bytes'] / 2**30:.2f} GiB on disk"
                         + (" (a merge is due: the running daemon merges them in the background)"
                            if index["merge_pending"] else ""))
                return 0
            case "remove":
                removed = await cr.remove_reference(args.ref, store, FingerprintIndex())
                if args.json:
                    _out(json.dumps({"ref": args.ref, "removed": removed}))
                elif removed:
                    _out(f"removed {args.ref}; labels that rested on it stay until a rescan negates them")
                else:
                    raise CommandError(f"no reference {args.ref!r} in the catalogue (see: firehose-mod catalogue list)")
                return 0 if removed else 1
    raise CommandError(f"unknown catalogue command {args.catalogue_command}")
