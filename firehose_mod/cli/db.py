"""`firehose-mod db backup DEST`: an online, consistent copy of the database (see ops/backup.py);
`firehose-mod db migrate`: bring the schema up to this version's (store/schema.py)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from firehose_mod.cli.common import CommandError, ProgressLine, _out
from firehose_mod.config import Settings

# Below this many pages (about 40 MB at 4 KiB) the copy takes a moment: no progress line.
PROGRESS_MIN_PAGES = 10_000


def add_parser(sub) -> None:
    db = sub.add_parser("db", help="the SQLite database").add_subparsers(dest="db_command", required=True)
    backup = db.add_parser("backup", help="an online, consistent copy of the database (safe while the daemon runs)")
    backup.add_argument("dest", type=Path, metavar="DEST", help="the copy to write (a new file)")
    backup.add_argument("--force", action="store_true", help="replace DEST if it exists")
    backup.add_argument("--json", action="store_true", help="print the report as JSON")
    backup.add_argument("--pages-per-step", type=int, default=256,
                        help="pages copied per step; the daemon writes between steps (default 256)")
    migrate = db.add_parser("migrate", help="apply this version's schema migrations (the daemon also does at start)",
                            description="Apply the schema migrations this version of firehose-mod knows, once, "
                            "before new daemons start. Refuses a database whose schema is newer than this code "
                            "(exit 2): upgrade firehose-mod instead. Take a `db backup` first.")
    migrate.add_argument("--check", action="store_true",
                         help="change nothing; exit 1 if migrations are pending, 0 if the schema is current")
    migrate.add_argument("--json", action="store_true", help="print the status as JSON")


async def db_migrate(settings: Settings, args: argparse.Namespace) -> int:
    from firehose_mod.store.db import SchemaError
    from firehose_mod.store.schema import migrate_sqlite, sqlite_status

    try:
        before = sqlite_status(settings.db_path)
        after = before if args.check or not before.pending else await migrate_sqlite(
            settings.db_path, synchronous=settings.db_synchronous)
    except SchemaError as exc:
        raise CommandError(str(exc)) from None
    if args.json:
        _out(json.dumps({**after.as_dict(), "from": before.version, "checked_only": args.check}))
    elif args.check:
        _out(f"{before.where}: schema {before.version} of {before.known}"
             + (f": {before.pending} migration(s) pending (run `firehose-mod db migrate`)" if before.pending
                else ": current"))
    else:
        _out(f"{after.where}: schema {before.version} -> {after.version}" if before.pending
             else f"{after.where}: schema {after.version}, current: nothing to do")
    return 1 if args.check and before.pending else 0


async def db_command(settings: Settings, args: argparse.Namespace) -> int:
    if args.db_command == "migrate":
        return await db_migrate(settings, args)
    from firehose_mod.ops.backup import BackupError, backup_database

    bar = ProgressLine()
    shown = False

    def progress(copied: int, total: int, restarts: int) -> None:
        nonlocal shown
        if total >= PROGRESS_MIN_PAGES:
            shown = True
            note = f", restarted {restarts}x (the daemon wrote meanwhile)" if restarts else ""
            bar.show(copied / total if total else 1.0, f"{copied}/{total} pages{note}")

    try:
        report = backup_database(settings.db_path, args.dest, force=args.force,
                                 step_pages=max(1, args.pages_per_step), progress=progress)
    except BackupError as exc:
        raise CommandError(str(exc)) from None
    finally:
        if shown:
            bar.done()
    if args.json:
        _out(json.dumps(report.as_dict()))
        return 0
    _out(f"backup {report.dest}: {report.pages} pages, {report.bytes} bytes in {report.seconds:.2f} s")
    _out(f"label log: head seq {report.head_seq}, {report.labels} labels; integrity_check ok")
    if report.restarts or report.one_step:
        how = ("the rest was copied in one step (a single snapshot)" if report.one_step
               else "each restart began a fresh snapshot")
        _out(f"the daemon wrote during the copy: SQLite restarted it {report.restarts} time(s); {how}")
    return 0
