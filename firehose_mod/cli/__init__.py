"""Command-line interface: argument parsing here, one module per area of operator commands."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import anyio
import structlog

from firehose_mod import __version__
from firehose_mod.config import ConfigError, load_settings
from firehose_mod.logs import configure_logging

DESCRIPTION = """\
firehose-mod: a moderation labeler for plyr.fm on ATProto.

It keeps a signed, append-only label log in SQLite and serves it as a standard label
stream (com.atproto.label.subscribeLabels and queryLabels). With no configuration it
keeps its state in ./var, listens on 127.0.0.1:8080 and generates a signing key.

Configuration: --config FILE (TOML, see config/example.toml) and FIREHOSE_MOD_*
environment variables (FIREHOSE_MOD_DATA_DIR, FIREHOSE_MOD_HOST, FIREHOSE_MOD_PORT,
FIREHOSE_MOD_DID, ...); the environment wins over the file.
"""

EPILOG = """\
examples:
  firehose-mod run                                     the daemon: ingest + scan + label server
  firehose-mod serve                                   the label server alone
  firehose-mod key show                                the did:key for your DID document
  firehose-mod status --config /etc/firehose-mod/config.toml   global options go before or after the command
  firehose-mod label emit at://did:plc:x/fm.plyr.track/3k porn
  firehose-mod label emit at://did:plc:x/fm.plyr.track/3k porn --neg
  firehose-mod label tail --cursor 0                   replay everything, then follow
  firehose-mod status                                  head seq and each subscriber's lag
"""


def _global_options(p: argparse.ArgumentParser, default) -> None:
    p.add_argument("--config", type=Path, default=default, help="TOML config file (also FIREHOSE_MOD_CONFIG)")
    p.add_argument("--data-dir", type=Path, default=default,
                   help="state directory (default ./var; FIREHOSE_MOD_DATA_DIR)")
    p.add_argument("--log-level", default=default, help="debug, info, warning or error")
    p.add_argument("--log-format", choices=["auto", "json", "console"], default=default,
                   help="log format on stderr (default auto: console on a terminal, else JSON)")


class _CommandParser(argparse.ArgumentParser):
    """A command's parser: the global options work after the command too (`status --config x.toml`)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        _global_options(self, argparse.SUPPRESS)  # SUPPRESS: an option given before the command stays


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="firehose-mod", description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"firehose-mod {__version__}")
    _global_options(p, None)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_CommandParser)

    run = sub.add_parser("run", help="the daemon: ingest from the network, scan workers and the label server")
    serve = sub.add_parser("serve", help="the label server only (subscribeLabels, queryLabels, metrics)")
    for p_ in (run, serve):
        p_.add_argument("--host", help="listen address (default 127.0.0.1)")
        p_.add_argument("--port", type=int, help="listen port (default 8080)")
    run.add_argument("--source", choices=["jetstream", "firehose", "none"], help="ingest source (default jetstream)")
    run.add_argument("--role", metavar="ROLE", help=(
        "what this process runs when several share the database (default all: everything): ingest (the"
        " source; one holds it, others wait as hot standbys), scan (workers sharing the queue by leases),"
        " serve (the front door only); -NAME names an instance, e.g. scan-2 (FIREHOSE_MOD_ROLE)"))

    key = sub.add_parser("key", help="the labeler's signing key").add_subparsers(dest="key_command", required=True)
    show = key.add_parser("show", help="print the public key as did:key (for #atproto_label); never creates one")
    show.add_argument("--json", action="store_true", help="also print the DID document fragment as JSON")
    create = key.add_parser("create", help="make the signing key in the data directory (run makes one at first start)")
    create.add_argument("--json", action="store_true", help="also print the DID document fragment as JSON")

    label = sub.add_parser("label", help="write or read labels").add_subparsers(dest="label_command", required=True)
    emit = label.add_parser("emit", help="sign and append one label (or a negation) to the log")
    emit.add_argument("uri", help="subject: an at:// URI or a DID")
    emit.add_argument("val", help="label value: lowercase a-z, 0-9 and '-' (e.g. porn, copyright-violation)")
    emit.add_argument("--cid", help="pin the label to this record version (CID)")
    emit.add_argument("--neg", action="store_true", help="negate (withdraw) a label in force")
    emit.add_argument("--exp", help="expiry, RFC 3339 (e.g. 2027-01-01T00:00:00.000Z)")
    floor = label.add_parser("seq-floor", help="start new labels above N (after restoring an older or lost database)")
    floor.add_argument("floor", type=int, help="the next label gets seq N+1; pick N above every cursor a subscriber may hold")
    tail = label.add_parser("tail", help="replay the stream from a cursor as JSON lines, then follow it")
    tail.add_argument("--cursor", type=int, help="replay labels after this seq (0 = all; omit = live only)")
    tail.add_argument("--url", help="labeler base URL (default this server: http://HOST:PORT)")
    tail.add_argument("--no-follow", action="store_true",
                      help="stop at the head seq the labeler had when tail connected (its /admin/status; for"
                           " another labeler, after 2 s without a label)")

    backfill = sub.add_parser("backfill", help="queue every fm.plyr.track that already exists (resumable)")
    backfill.add_argument("--relay", help="relay for listReposByCollection (default https://relay1.us-east.bsky.network)")
    backfill.add_argument("--did", action="append", dest="dids", metavar="DID",
                          help="only these repos (repeatable); no relay is asked")
    backfill.add_argument("--retry-failed", action="store_true", help="retry repos that failed in an earlier run")
    backfill.add_argument("--restart", action="store_true", help="forget saved progress and read the repos again")
    backfill.add_argument("--concurrency", type=int, default=4, help="repos read at once (default 4)")

    replay = sub.add_parser("replay", help="re-read the source from a past cursor and queue every track for a rescan")
    replay.add_argument("--cursor", type=int, required=True,
                        help="start here (Jetstream: unix microseconds; firehose: relay seq)")
    replay.add_argument("--until", type=int,
                        help="stop here, inclusive: an event exactly at UNTIL is replayed, none after it"
                             " (default: the live cursor saved now)")
    replay.add_argument("--restart", action="store_true",
                        help="start over: a rerun of an interrupted replay over the same window resumes from"
                             " where it stopped unless this is given")
    replay.add_argument("--source", choices=["jetstream", "firehose"], help="source to replay (default: configured)")

    scan = sub.add_parser("scan", help="dry run: what would the scanners and the policy do with these? (writes nothing)")
    scan.add_argument("targets", nargs="+", metavar="TARGET",
                      help="an audio or image file, a directory, an http(s) URL, or a track's at:// URI")
    scan.add_argument("--json", action="store_true", help="one JSON object per target")
    scan.add_argument("--concurrency", type=int, help="targets scanned at once (default: the number of cores)")

    explain = sub.add_parser("explain", help="every label on a track or account, with the decision and evidence behind it")
    explain.add_argument("subject", help="an at:// URI of a track, or a DID")
    explain.add_argument("--json", action="store_true", help="the whole explanation as JSON")

    rescan = sub.add_parser("rescan", help="re-evaluate stored tracks against today's scanners, policy and catalogue")
    which = rescan.add_mutually_exclusive_group(required=True)
    which.add_argument("--all", action="store_true", help="every stored track")
    which.add_argument("--since", metavar="T", help="tracks created or updated since T (e.g. 2026-11-01T00:00:00Z)")
    which.add_argument("--uri", action="append", metavar="URI", help="this track (repeatable)")
    rescan.add_argument("--scanner", metavar="NAME", help="re-run only this scanner (the others' labels are kept)")
    rescan.add_argument("--apply", action="store_true", help="write the difference (default: show it, write nothing)")
    rescan.add_argument("--json", action="store_true", help="one JSON object per changed track, then a summary")
    rescan.add_argument("--rate", type=float, default=20.0, help="tracks per second at most (default 20)")

    catalogue = sub.add_parser("catalogue", help="the copyright fingerprint catalogue").add_subparsers(
        dest="catalogue_command", required=True)
    cat_add = catalogue.add_parser("add", help="fingerprint reference audio (files or directories) into the catalogue")
    cat_add.add_argument("paths", nargs="+", metavar="PATH")
    cat_add.add_argument("--json", action="store_true", help="print the report as JSON")
    cat_list = catalogue.add_parser("list", help="references (and indexed uploads with --kind upload)")
    cat_list.add_argument("--kind", choices=["reference", "upload"], default="reference")
    cat_list.add_argument("--json", action="store_true", help="one JSON object per line")
    cat_stats = catalogue.add_parser("stats", help="how many references, uploads and index entries")
    cat_stats.add_argument("--json", action="store_true")
    cat_remove = catalogue.add_parser("remove", help="take a reference out of the catalogue (then run a rescan)")
    cat_remove.add_argument("ref", help="the ref as 'catalogue list' shows it")
    cat_remove.add_argument("--json", action="store_true")

    ingest = sub.add_parser("ingest", help="inspect ingest").add_subparsers(dest="ingest_command", required=True)
    dead = ingest.add_parser("dead-letters", help="frames and records that were rejected, newest first, with why")
    dead.add_argument("--limit", type=int, default=20)
    dead.add_argument("--json", action="store_true", help="one JSON object per line")

    from firehose_mod.cli.review import add_parsers as add_review_parsers

    add_review_parsers(sub)

    from firehose_mod.cli.declare import add_parser as add_declare_parser

    add_declare_parser(sub)

    from firehose_mod.cli.import_labels import add_parser as add_import_parser

    add_import_parser(sub)

    from firehose_mod.cli.transparency import add_parser as add_transparency_parser

    add_transparency_parser(sub)

    from firehose_mod.cli.db import add_parser as add_db_parser

    add_db_parser(sub)

    status = sub.add_parser("status", help="head seq, key, and each live subscriber with its cursor and lag")
    status.add_argument("--json", action="store_true", help="print the raw status JSON")
    status.add_argument("--url", help="labeler base URL (default this server: http://HOST:PORT)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings(
            args.config,
            data_dir=args.data_dir,
            log_level=args.log_level,
            log_format=args.log_format,
            host=getattr(args, "host", None),
            port=getattr(args, "port", None),
            ingest_source=getattr(args, "source", None),
            role=args.role if args.command == "run" else None,  # `operator add --role` is another role
        )
    except ConfigError as exc:
        print(f"firehose-mod: configuration error: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    from firehose_mod.cli.dispatch import dispatch
    from firehose_mod.cli.errors import describe, leaves

    try:
        code = anyio.run(dispatch, args, settings)
        sys.stdout.flush()
        return code
    except Exception as exc:  # noqa: BLE001 (re-raised unless it is one an operator can fix)
        if any(isinstance(e, BrokenPipeError) for e in leaves(exc)):
            # The reader went away (`firehose-mod status | head -1`): as the Python docs advise,
            # point stdout at devnull so the flush at exit does not fail again, and exit 1.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 1
        if (message := describe(exc, settings, args.command)) is None:
            if args.command in ("run", "serve"):  # the one failure that stops the daemon: say so in its log
                structlog.get_logger("firehose_mod.daemon").critical(
                    "daemon.failed", error=f"{type(exc).__name__}: {exc}"[:500], exc_info=exc)
            raise
        print(f"firehose-mod: {message}", file=sys.stderr)
        return 2
    except BaseException as exc:
        if any(isinstance(e, KeyboardInterrupt) for e in leaves(exc)):
            return 130
        raise
