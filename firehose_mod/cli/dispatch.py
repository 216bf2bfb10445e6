"""Which function runs which command."""

from __future__ import annotations

import argparse

from firehose_mod.cli.common import CommandError
from firehose_mod.cli.declare import declare
from firehose_mod.cli.ingest import backfill, dead_letters, replay
from firehose_mod.cli.labels import key_create, key_show, label_emit, label_seq_floor, label_tail, status
from firehose_mod.cli.policy import catalogue, explain, rescan, scan
from firehose_mod.cli.review import operator, review
from firehose_mod.config import Settings
from firehose_mod.daemon import run_forever, serve_forever


async def dispatch(args: argparse.Namespace, settings: Settings) -> int:
    match args.command:
        case "serve":
            await serve_forever(settings)
            return 0
        case "run":
            await run_forever(settings)
            return 0
        case "key" if args.key_command == "show":
            return key_show(settings, args.json)
        case "key" if args.key_command == "create":
            return key_create(settings, args.json)
        case "label" if args.label_command == "emit":
            return await label_emit(settings, args)
        case "label" if args.label_command == "tail":
            return await label_tail(settings, args)
        case "label" if args.label_command == "seq-floor":
            return await label_seq_floor(settings, args)
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
        case "review":
            return await review(settings, args)
        case "operator":
            return await operator(settings, args)
        case "declare":
            return await declare(settings, args)
        case "import":
            from firehose_mod.cli.import_labels import import_labels

            return await import_labels(settings, args)
        case "transparency" if args.transparency_command == "preview":
            from firehose_mod.cli.transparency import transparency

            return await transparency(settings, args)
        case "db":
            from firehose_mod.cli.db import db_command

            return await db_command(settings, args)
        case "ingest" if args.ingest_command == "dead-letters":
            return await dead_letters(settings, args)
    raise CommandError(f"unknown command {args.command}")
