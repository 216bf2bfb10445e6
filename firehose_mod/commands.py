"""The operator commands behind the CLI; each returns the process exit code."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

import anyio
import httpx
import libipld
import websockets
from websockets.asyncio.client import connect

from firehose_mod.config import Settings
from firehose_mod.daemon import load_key, open_label_log, run_forever, serve_forever
from firehose_mod.labels.model import Label
from firehose_mod.server.app import SUBSCRIBE, did_document


class CommandError(Exception):
    """A command cannot proceed; the message says what to do."""


async def dispatch(args: argparse.Namespace, settings: Settings) -> int:
    match args.command:
        case "serve":
            await serve_forever(settings)
            return 0
        case "run":
            await run_forever(settings)
            return 0
        case "key":
            return key_show(settings, args.json)
        case "label" if args.label_command == "emit":
            return await label_emit(settings, args)
        case "label" if args.label_command == "tail":
            return await label_tail(settings, args)
        case "status":
            return await status(settings, args)
        case "replay":
            return await replay(settings, args)
        case "backfill":
            return await backfill(settings, args)
        case "catalogue":
            return await catalogue(settings, args)
        case "rescan":
            return await rescan(settings, args)
        case "explain":
            return await explain(settings, args)
        case "scan":
            return await scan(settings, args)
        case "ingest" if args.ingest_command == "dead-letters":
            return await dead_letters(settings, args)
    raise CommandError(f"unknown command {args.command}")


def _out(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def key_show(settings: Settings, as_json: bool) -> int:
    key = load_key(settings)
    if as_json:
        doc = did_document(settings.did, key.multibase, settings.public_url or settings.endpoint)
        _out(json.dumps({"did_key": key.did_key, "curve": key.curve, "did_document": doc}, indent=2))
    else:
        _out(key.did_key)
    return 0


async def label_emit(settings: Settings, args: argparse.Namespace) -> int:
    async with open_label_log(settings) as label_log:
        stored = await label_log.emit(args.uri, args.val, cid=args.cid, neg=args.neg, exp=args.exp)
    if stored is None:
        what = "not in force, so there is nothing to negate" if args.neg else "already in force"
        print(f"firehose-mod: {args.val} on {args.uri} is {what}; nothing written", file=sys.stderr)
        return 0
    _out(json.dumps({"seq": stored.seq, "label": stored.label.to_json()}))
    return 0


def _base_url(settings: Settings, url: str | None) -> str:
    return (url or settings.endpoint).rstrip("/")


async def label_tail(settings: Settings, args: argparse.Namespace) -> int:
    base = _base_url(settings, args.url)
    ws_url = base.replace("https://", "wss://", 1).replace("http://", "ws://", 1) + SUBSCRIBE
    if args.cursor is not None:
        ws_url += f"?cursor={args.cursor}"
    try:
        async with connect(ws_url, max_size=5 * 1024 * 1024, compression=None) as ws:
            while True:
                try:
                    if args.no_follow:
                        with anyio.fail_after(2):
                            frame = await ws.recv()
                    else:
                        frame = await ws.recv()
                except TimeoutError:
                    return 0
                if _print_frame(frame):
                    return 1
    except websockets.ConnectionClosed as exc:
        print(f"firehose-mod: stream closed: {exc}", file=sys.stderr)
        return 1
    except (OSError, websockets.InvalidHandshake) as exc:
        raise CommandError(
            f"cannot subscribe to {ws_url}: {exc}. Is `firehose-mod serve` running there? Pass --url for another labeler"
        ) from None


def _print_frame(frame: bytes | str) -> bool:
    """Print one stream frame; True when it was an error frame (the stream ends)."""
    if isinstance(frame, str):
        print(f"firehose-mod: ignoring a text frame (not the event-stream format): {frame[:80]!r}", file=sys.stderr)
        return False
    header, body = libipld.decode_dag_cbor_multi(frame)
    if header.get("op") == -1:
        print(f"firehose-mod: error frame: {body.get('error')}: {body.get('message', '')}", file=sys.stderr)
        return True
    if header.get("t") == "#labels":
        for d in body["labels"]:
            _out(json.dumps({"seq": body["seq"], "label": Label.from_wire(d).to_json()}))
    else:
        print(f"firehose-mod: {header.get('t')}: {json.dumps(body, default=str)}", file=sys.stderr)
    return False


async def status(settings: Settings, args: argparse.Namespace) -> int:
    base = _base_url(settings, args.url)
    try:
        async with httpx.AsyncClient(timeout=5) as client:
            response = await client.get(base + "/admin/status")
        response.raise_for_status()
        body = response.json()
    except httpx.HTTPError as exc:
        print(f"firehose-mod: the server at {base} did not answer ({exc}). Is `firehose-mod serve` running?", file=sys.stderr)
        if settings.db_path.exists():
            async with open_label_log(settings) as label_log:
                print(f"database {settings.db_path}: head seq {await label_log.head()}", file=sys.stderr)
        return 1
    if args.json:
        _out(json.dumps(body, indent=2))
        return 0
    _out(f"labeler  {body['did']}  (key {body['key']}, firehose-mod {body['version']})")
    _out(f"head     seq {body['head']}")
    subs = body["subscribers"]
    _out(f"subscribers: {len(subs)}")
    if subs:
        _out(f"  {'id':>5} {'remote':<22} {'cursor':>10} {'lag':>8} {'state':<9} {'frames':>8} {'connected':>10}  user-agent")
        for s in subs:
            _out(
                f"  {s['id']:>5} {s['remote']:<22} {s['cursor']:>10} {s['lag']:>8} {s['state']:<9}"
                f" {s['frames_sent']:>8} {s['connected_seconds']:>9}s  {s['user_agent'][:40]}"
            )
    else:
        _out("  nobody is subscribed: consumers (appviews, plyr.fm) must connect to /xrpc/com.atproto.label.subscribeLabels")
    if "ingest" in body:
        ing, queue = body["ingest"], body["queue"]
        if ing["source"]:
            st = ing["stats"]
            _out(f"ingest   {ing['source']} at cursor {ing['cursor']} via {ing['endpoint']}: {st.get('frames', 0)} frames,"
                 f" {st.get('events', 0)} events, {st.get('dead', 0)} rejected, {st.get('reconnects', 0)} reconnects")
        else:
            _out("ingest   off ([ingest] source = none)")
        _out(f"queue    {queue['pending']} pending, {queue['running']} running, {queue['done']} done,"
             f" {queue['failed']} failed; {queue['tracks']} tracks; {queue['dead_letters']} dead letters"
             + ("  (see: firehose-mod ingest dead-letters)" if queue["dead_letters"] else ""))
    return 0


class ProgressLine:
    """A progress bar on a terminal, a line every few seconds elsewhere (journald, CI)."""

    def __init__(self, every: float = 5.0):
        import time

        self._clock = time.monotonic
        self._tty = sys.stderr.isatty()
        self._every = 0.2 if self._tty else every
        self._last = 0.0

    def show(self, fraction: float, text: str, *, force: bool = False) -> None:
        now = self._clock()
        if not force and now - self._last < self._every:
            return
        self._last = now
        if self._tty:
            bar = "#" * int(30 * fraction)
            print(f"\r[{bar:<30}] {fraction:6.1%} {text}", end="", file=sys.stderr, flush=True)
        else:
            print(f"{fraction:6.1%} {text}", file=sys.stderr, flush=True)

    def done(self) -> None:
        if self._tty:
            print("", file=sys.stderr)


async def backfill(settings: Settings, args: argparse.Namespace) -> int:
    from firehose_mod.ingest.backfill import run_backfill

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
    from dataclasses import replace

    from firehose_mod.ingest.replay import run_replay

    if args.source:
        settings = replace(settings, ingest_source=args.source)
    bar = ProgressLine()

    def progress(cursor: int, target: int) -> None:
        done = max(0.0, min(1.0, (cursor - args.cursor) / max(1, target - args.cursor)))
        bar.show(done, f"cursor {cursor} of {target}")

    try:
        report = await run_replay(settings, args.cursor, until=args.until, progress=progress)
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    bar.done()
    _out(json.dumps(report.__dict__))
    return 0


async def scan(settings: Settings, args: argparse.Namespace) -> int:
    """Exit 0: nothing would change; 1: something would be labeled, negated or reviewed; 2: errors."""
    from firehose_mod.ops.dryrun import dry_run, exit_code, render_summary, render_text
    from firehose_mod.scan.cover import BlocklistError
    from firehose_mod.scan.policy import PolicyError

    bar = ProgressLine()

    def show(result) -> None:
        _out(json.dumps(result.to_json()) if args.json else render_text(result))

    try:
        report = await dry_run(settings, args.targets, concurrency=args.concurrency, on_result=show,
                               progress=lambda done, total, target, status: bar.show(done / max(1, total),
                                                                                    f"{done}/{total} {status}"))
    except (PolicyError, BlocklistError, ValueError) as exc:
        raise CommandError(str(exc)) from None
    bar.done()
    print(render_summary(report), file=sys.stderr)
    return exit_code(report)


async def explain(settings: Settings, args: argparse.Namespace) -> int:
    from firehose_mod.ops.explain import ExplainError, explain as run_explain, render_text
    from firehose_mod.store.decisions import DecisionStore

    if not settings.db_path.exists():
        raise CommandError(f"no database at {settings.db_path}: nothing labelled or scanned yet")
    async with open_label_log(settings) as label_log:
        decisions = await DecisionStore.open(settings.db_path, synchronous=settings.db_synchronous)
        try:
            expl = await run_explain(label_log, decisions, args.subject)
        except ExplainError as exc:
            raise CommandError(str(exc)) from None
        finally:
            await decisions.close()
    _out(json.dumps(expl.to_json(), indent=2) if args.json else render_text(expl))
    if expl.empty:
        print(f"firehose-mod: nothing recorded for {args.subject}: never labelled or scanned by this labeler",
              file=sys.stderr)
        return 1
    return 0


async def rescan(settings: Settings, args: argparse.Namespace) -> int:
    from firehose_mod.daemon import open_engine
    from firehose_mod.ops.rescan import RescanReport, rescan as run_rescan
    from firehose_mod.store.ingest import IngestStore

    if args.since:
        try:
            from firehose_mod.labels.model import format_datetime, parse_datetime

            since = format_datetime(parse_datetime(args.since))
        except ValueError as exc:
            raise CommandError(f"--since: {exc}") from None
    else:
        since = None
    report = RescanReport(applied=args.apply)
    bar = ProgressLine()
    async with open_label_log(settings) as label_log, open_engine(settings, label_log) as engine:
        if engine.catalogue is not None:
            engine.catalogue.scanner().index_uploads = args.apply  # a dry run writes nothing, not even the index
        store = await IngestStore.open(settings.db_path, synchronous=settings.db_synchronous)
        try:
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
        finally:
            await store.close()
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


async def catalogue(settings: Settings, args: argparse.Namespace) -> int:
    from firehose_mod.scan import copyright as cr
    from firehose_mod.scan.fingerprint import FingerprintIndex
    from firehose_mod.store.catalogue import CatalogueStore

    store = await CatalogueStore.open(settings.db_path, synchronous=settings.db_synchronous)
    try:
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
                        _out("new uploads are checked against them now; to check earlier ones, replay: firehose-mod replay --cursor T")
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
                _out(json.dumps(stats) if args.json else "  ".join(f"{k} {v}" for k, v in stats.items()))
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
    finally:
        await store.close()
    raise CommandError(f"unknown catalogue command {args.catalogue_command}")


async def dead_letters(settings: Settings, args: argparse.Namespace) -> int:
    from firehose_mod.store.ingest import IngestStore

    if not settings.db_path.exists():
        raise CommandError(f"no database at {settings.db_path}: nothing ingested yet")
    store = await IngestStore.open(settings.db_path)
    try:
        rows = await store.dead_letters(args.limit)
    finally:
        await store.close()
    for row in rows:
        if args.json:
            _out(json.dumps(row))
        else:
            _out(f"{row['created']}  {row['source']:<10} {row['reason']:<16} {row['uri'] or row['did'] or '-'}\n"
                 f"    {row['detail'][:300]}")
    if not rows and not args.json:
        _out("no dead letters")
    return 0
