"""`firehose-mod db backup DEST`: an online, consistent copy of the database (see ops/backup.py);
`firehose-mod db migrate`: bring the schema up to this version's (store/schema.py);
`firehose-mod db copy`: the SQLite deployment onto PostgreSQL, resumable and verified (ops/db_copy.py,
ops/db_copy_tables.py)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from firehose_mod.cli.common import CommandError, ProgressLine, _out
from firehose_mod.config import Settings
from firehose_mod.store.pg.label_log import server_of

# Below this many pages (about 40 MB at 4 KiB) the copy takes a moment: no progress line.
PROGRESS_MIN_PAGES = 10_000
PROGRESS_MIN_ROWS = 10_000  # `db copy`: below this many labels (or decisions) a phase takes a moment


def add_parser(sub) -> None:
    db = sub.add_parser("db", help="the database: backup, migrate, copy onto PostgreSQL").add_subparsers(dest="db_command", required=True)
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
    add_copy_parser(db)


COPY_DESCRIPTION = """\
Copy a SQLite deployment onto PostgreSQL, so firehose-mod processes on other machines
share it ([store] database_url). Every label keeps its seq, fields, signature and wire
CBOR byte for byte; label_state is rebuilt, the head and a raised seq floor carry over
(the next label on PostgreSQL gets the seq SQLite would have given it), and the decision
rows follow with their ids.

Then every other table both databases have, with its ids: the source cursors (ingest
resumes where it stopped), tracks, the scan queue, dead letters, repo events, rescans,
operators and admin-page sessions, service-auth nonces, reports, the review desk (items,
moderation events, triage calls, batches, seen marks), transparency posts, the plyr.fm
tables, backfill and label-import progress. Values take PostgreSQL's column types (0/1
become booleans); each id sequence is set past the source's ids. A table PostgreSQL does
not have (yet) is listed as "not on PostgreSQL": its rows stay in SQLite only.

The SQLite file is only read (mode=ro), in one snapshot taken at start. Stop the daemon
first (or copy a `db backup`): a daemon still writing is not blocked (its WAL just grows
until the copy ends), but what it writes after the snapshot is not copied; the report says
how many seqs were left behind, and running the command again (after stopping it) copies
just those.

Resumable: batches are committed one transaction each under the label log's write lock;
after a kill, run the same command again and it goes on from the highest seq already on
PostgreSQL; the other tables are merged by primary key (what is missing is inserted, what
changed since, such as a cursor, is updated; append-only tables only ever get inserts).
A PostgreSQL database holding labels or rows that are not this source's is refused before
anything is written.

Verified at the end: counts and heads, every label's columns per range of 10,000 seqs
(count, first, last, digest), label_state and decisions the same way, the signatures
of a random sample read back from PostgreSQL, and every other table's count and rows
compared after the same conversion. Exit 0: copied and verified; 1: the
verification found a difference (listed); 2: nothing or only part copied (the error says why).
"""

COPY_EPILOG = """\
a move, step by step:
  firehose-mod db copy --to postgresql://fm:PASS@db.internal/firehose   the bulk (the daemon may still run)
  systemctl stop firehose-mod                                           nothing writes to SQLite any more
  firehose-mod db copy --to postgresql://fm:PASS@db.internal/firehose   only the rest, then the verification
  then set [store] database_url and start `firehose-mod serve` on each machine
"""


def add_copy_parser(db) -> None:
    copy = db.add_parser("copy", help="copy the SQLite database (label log, cursors, queue, desk, ...) onto"
                         " PostgreSQL (resumable, verified)",
                         description=COPY_DESCRIPTION, epilog=COPY_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    copy.add_argument("--from", dest="copy_from", metavar="sqlite:PATH",
                      help="the SQLite database to read (default: this data directory's database)")
    copy.add_argument("--to", dest="copy_to", metavar="postgresql://USER:PASSWORD@HOST:PORT/DB",
                      help="the PostgreSQL database to fill (default: [store] database_url, FIREHOSE_MOD_DATABASE_URL)")
    copy.add_argument("--batch", type=int, default=5000,
                      help="labels (or rows of the other tables) per PostgreSQL transaction (default 5000)")
    copy.add_argument("--sample", type=int, default=1000,
                      help="labels whose signatures are checked on PostgreSQL at the end (default 1000; all if fewer)")
    copy.add_argument("--no-verify", action="store_true", help="skip the verification (it reads both sides again)")
    copy.add_argument("--json", action="store_true", help="print the report as JSON")


async def db_migrate(settings: Settings, args: argparse.Namespace) -> int:
    from firehose_mod.store.db import SchemaError
    from firehose_mod.store.schema import migrate_schema, schema_status

    try:
        before = await schema_status(settings)
        after = before if args.check or not before.pending else await migrate_schema(settings)
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
    if args.db_command == "copy":
        return await db_copy(settings, args)
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


def _copy_endpoints(settings: Settings, args: argparse.Namespace) -> tuple[Path, str]:
    source = args.copy_from or f"sqlite:{settings.db_path}"
    if not source.startswith("sqlite:") or source == "sqlite:":
        raise CommandError(f"--from {source!r}: give the SQLite database as sqlite:PATH,"
                           " e.g. --from sqlite:/var/lib/firehose-mod/firehose-mod.sqlite3")
    target = args.copy_to or settings.database_url
    if not target:
        raise CommandError("no PostgreSQL to copy to: give --to postgresql://USER:PASSWORD@HOST:PORT/DB"
                           " (or set [store] database_url / FIREHOSE_MOD_DATABASE_URL)")
    if not target.startswith(("postgresql://", "postgres://")):
        raise CommandError(f"--to must be a postgresql://USER:PASSWORD@HOST:PORT/DB URL, not {server_of(target)!r}")
    if args.batch < 1 or args.sample < 0:
        raise CommandError("--batch must be at least 1 and --sample at least 0")
    return Path(source.removeprefix("sqlite:")).expanduser(), target


async def db_copy(settings: Settings, args: argparse.Namespace) -> int:
    import sqlite3

    import asyncpg

    from firehose_mod.ops.db_copy import CopyRefused, copy_label_log
    from firehose_mod.store.label_export import SourceError, SqliteLabelSource
    from firehose_mod.store.pg.copy import CopyConflict, PgCopyTarget

    path, url = _copy_endpoints(settings, args)
    bar = ProgressLine()
    shown = False

    def progress(phase: str, done: int, total: int) -> None:
        nonlocal shown
        if total < PROGRESS_MIN_ROWS:
            return
        shown = True
        bar.show(done / total if total else 1.0, f"{phase}: {done}/{total}", force=done == total)

    resume = "what was committed is kept: run the same command again to resume"
    try:
        source = await SqliteLabelSource.open(path)
        try:
            target = await PgCopyTarget.open(url, busy_wait=settings.db_busy_wait)
            try:
                report = await copy_label_log(source, target, source_name=str(source.path), target_name=server_of(url),
                                              batch=args.batch, sample=args.sample, verify=not args.no_verify,
                                              progress=progress)
            finally:
                await target.close()
        finally:
            await source.close()
    except (SourceError, CopyRefused) as exc:
        raise CommandError(str(exc)) from None
    except CopyConflict as exc:
        raise CommandError(f"{exc}; stop every other firehose-mod (or copy) using {server_of(url)} and run the same"
                           " command again: it resumes if what is there is this source's, and refuses otherwise") from None
    except sqlite3.Error as exc:
        raise CommandError(f"reading {path} failed: {exc}; {resume}") from None
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise CommandError(f"the copy to {server_of(url)} stopped: {type(exc).__name__}: {exc}; {resume}") from None
    finally:
        if shown:
            bar.done()
    v = report.verification
    if args.json:
        _out(json.dumps(report.as_dict()))
    else:
        _render_copy(report)
    return 1 if v is not None and not v.ok else 0


def _render_copy(r) -> None:
    _out(f"source   {r.source}: head {r.source_head}, {r.source_labels} labels, {r.source_decisions} decisions")
    _out(f"target   {r.target}" + (f": resumed after seq {r.resumed_from}" if r.resumed_from else ""))
    _out(f"copied   {r.copied_labels} labels, {r.copied_decisions} decisions, {r.copied_rows} rows of other tables in"
         f" {r.batches} batches, {r.seconds:.1f} s; the next label on PostgreSQL gets seq {r.source_head + 1}")
    for t in r.tables:
        if t["status"] == "not on PostgreSQL":
            continue
        if t["status"] == "copied":
            what = f"{t['source_rows']} rows: +{t['inserted']} inserted, ~{t['updated']} updated, -{t['deleted']} deleted"
        else:
            what = "empty" if t["status"] == "unchanged" and not t["source_rows"] else f"{t['source_rows']} rows, {t['status']}"
        notes = []
        if t["unfit"] or t["refused"]:
            notes.append(f"{t['unfit'] + t['refused']} rows PostgreSQL cannot take, left out")
        if t["dropped_columns"]:
            notes.append(f"columns not on PostgreSQL: {', '.join(t['dropped_columns'])}")
        if t["next_ids"]:
            notes.append("next " + ", ".join(f"{c} {n}" for c, n in t["next_ids"].items()))
        _out(f"  {t['table']:<24} {what}" + (f" ({'; '.join(notes)})" if notes else ""))
    if r.not_on_postgresql:
        _out("not on PostgreSQL (left in SQLite only): "
             + ", ".join(f"{name} ({n} rows)" for name, n in sorted(r.not_on_postgresql.items())))
    v = r.verification
    if v is not None:
        _out(f"compared {v.labels} labels and head {v.head} with the source's, in {v.seconds:.1f} s:")
        _out(f"         {v.ranges} ranges of 10,000 seqs: count, first, last and a digest of every column")
        _out(f"         label_state ({v.state_rows} rows) and decisions ({v.decisions} rows) the same way")
        if v.tables:
            _out(f"         {v.tables} other tables ({v.table_rows} rows): counts and every row")
        _out(f"         signatures of {v.sampled} random labels read back from PostgreSQL, checked against"
             f" {', '.join(v.keys) or '-'}")
        _out("result   OK: PostgreSQL holds exactly the source's label log and tables" if v.ok
             else f"result   {len(v.problems)} problem(s):")
        for p in v.problems:
            _out(f"  {p}")
    if r.left_behind:
        _out(f"note     the source gave out {r.left_behind} more seqs after the snapshot (a daemon still writes):"
             " stop it and run the same command again to copy them")
