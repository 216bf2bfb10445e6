"""The review desk and the operators from the command line: `review ...`, `operator ...`.

A command acts as a named operator: `--as NAME` (or `[review] operator`), recorded with
via=local, since whoever can read the database can act as anyone; the API's bearer tokens are
the authenticated path. While no admin exists, `operator add` may create the first one.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from firehose_mod.cli.common import CommandError, _out, require_database
from firehose_mod.config import Settings
from firehose_mod.ops.explain import summarise
from firehose_mod.review import states as st
from firehose_mod.review.actors import Actor, Forbidden, Unauthenticated
from firehose_mod.review.desk import DeskBusy, ItemView, Outcome, item_json
from firehose_mod.review.service import ReviewServices, open_review, review_link
from firehose_mod.store.review import ItemQuery, ReviewItem
from firehose_mod.syntax import check_at_uri, check_did

ACTIONS = ("confirm", "reject", "allow", "escalate", "accept")


def add_parsers(sub) -> None:
    """`review` and `operator` under the top-level command parser."""
    review = sub.add_parser("review", help="the review queue: list, show, decide, propose (acting as an operator)")
    cmds = review.add_subparsers(dest="review_command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--as", dest="as_name", metavar="NAME", help="act as this operator (default [review] operator)")
    common.add_argument("--json", action="store_true", help="JSON output")
    listing = cmds.add_parser("list", parents=[common], help="waiting items, oldest first (filters combine)")
    listing.add_argument("--state", action="append", choices=[*st.STATUSES, "waiting", "all"],
                         help="open, proposed, escalated (= waiting, the default), confirmed, ... or all")
    listing.add_argument("--kind", action="append", choices=st.KINDS)
    listing.add_argument("--value", action="append", help="label value, e.g. copyright-violation")
    listing.add_argument("--uploader", metavar="DID")
    listing.add_argument("--newest", action="store_true", help="newest first")
    listing.add_argument("--limit", type=int, default=50)
    listing.add_argument("--batch", metavar="ID", help="the items of a shared batch")
    show = cmds.add_parser("show", parents=[common], help="one item: evidence, history, proposal, triage cost")
    show.add_argument("id", type=int)
    help_ = {"confirm": "emit the item's label", "reject": "the finding is wrong: negate if in force",
             "allow": "right finding, allowed anyway: negate if in force", "escalate": "for a senior moderator",
             "accept": "apply each item's pending proposal"}
    for name in ACTIONS:
        p = cmds.add_parser(name, parents=[common], help=help_[name])
        p.add_argument("ids", nargs="+", type=int, metavar="ID")
        p.add_argument("--reason", help="why (recorded in the event log)")
        p.add_argument("--dry-run", action="store_true", help="print what it would emit or negate; write nothing")
    propose = cmds.add_parser("propose", parents=[common], help="suggest a decision with a reason (agents do this)")
    propose.add_argument("ids", nargs="+", type=int, metavar="ID")
    propose.add_argument("--decision", required=True, choices=st.DECISIONS)
    propose.add_argument("--reason", required=True)
    propose.add_argument("--dry-run", action="store_true")
    comment = cmds.add_parser("comment", parents=[common], help="add a note to items (changes no state)")
    comment.add_argument("ids", nargs="+", type=int, metavar="ID")
    comment.add_argument("--reason", required=True, help="the note")
    opening = cmds.add_parser("open", parents=[common], help="open an item by hand")
    opening.add_argument("uri", help="the track's at:// URI")
    opening.add_argument("value", help="the label value in question")
    opening.add_argument("--reason", required=True)
    opening.add_argument("--cid", help="the record version (default: the one ingest saw last)")
    opening.add_argument("--dry-run", action="store_true")
    batch = cmds.add_parser("batch", parents=[common], help="a shareable link to these items")
    batch.add_argument("ids", nargs="+", type=int, metavar="ID")
    triage = cmds.add_parser("triage", parents=[common], help="run one LLM triage pass now ([triage] settings)")
    triage.add_argument("--limit", type=int, help="items at most (default [triage] batch_size)")
    _operator_parsers(sub, common)


def _operator_parsers(sub, common: argparse.ArgumentParser) -> None:
    operator = sub.add_parser("operator", help="operators and agents: add (prints a token once), list, revoke")
    ops = operator.add_subparsers(dest="operator_command", required=True)
    add = ops.add_parser("add", parents=[common], help="create an operator and print its token (shown once)")
    add.add_argument("name")
    add.add_argument("--role", required=True, choices=st.ROLES)
    ops.add_parser("list", parents=[common], help="every operator, revoked ones included")
    revoke = ops.add_parser("revoke", parents=[common], help="revoke an operator's token for good")
    revoke.add_argument("name")


@asynccontextmanager
async def _services(settings: Settings, *, create: bool = False) -> AsyncIterator[ReviewServices]:
    from firehose_mod.daemon import open_label_log

    if not create:
        require_database(settings, "nothing scanned yet")
    async with open_label_log(settings) as label_log, open_review(settings, label_log) as services:
        yield services


async def _actor(settings: Settings, services: ReviewServices, args, *, bootstrap: bool = False) -> Actor:
    name = args.as_name or settings.review_operator
    try:
        if name:
            return await services.operators.local(name)
        if bootstrap and (root := await services.operators.bootstrap(getpass.getuser())):
            return root
    except Unauthenticated as exc:
        raise CommandError(str(exc)) from None
    raise CommandError("say who acts: --as NAME (see `firehose-mod operator list`) or [review] operator"
                       + (" (operators exist, so an admin adds the next)" if bootstrap else ""))


async def review(settings: Settings, args: argparse.Namespace) -> int:
    async with _services(settings) as services:
        actor = await _actor(settings, services, args)
        try:
            return await _review(settings, services, actor, args)
        except (Forbidden, Unauthenticated, LookupError, ValueError, DeskBusy) as exc:
            raise CommandError(str(exc).strip("'\"")) from None


async def _review(settings: Settings, services: ReviewServices, actor: Actor, args) -> int:
    desk, cmd = services.desk, args.review_command
    if cmd == "list":
        items = await desk.batch(actor, args.batch) if args.batch else await desk.list(actor, _query(args))
        for item in items:
            _out(json.dumps(item_json(item)) if args.json else _item_line(item))
        if not items and not args.json:
            print("firehose-mod: no items match", file=sys.stderr)
        return 0
    if cmd == "show":
        view = await desk.show(actor, args.id)
        _out(json.dumps(view.to_json(), indent=2) if args.json else render_view(view))
        return 0
    if cmd == "batch":
        batch = await desk.create_batch(actor, args.ids)
        link = review_link(settings, batch.id)
        _out(json.dumps({"batch": batch.id, "url": link, "items": batch.items}) if args.json else link)
        return 0
    if cmd == "triage":
        return await _triage(settings, services, args)
    if cmd == "open":
        check_at_uri(args.uri, record=True, what="the item's subject")
        outcome = await desk.open(actor, args.uri, args.value, reason=args.reason, cid=args.cid, dry_run=args.dry_run)
    elif cmd == "propose":
        outcome = await desk.propose(actor, args.ids, args.decision, reason=args.reason, dry_run=args.dry_run)
    elif cmd == "comment":
        outcome = await desk.comment(actor, args.ids, reason=args.reason)
    else:
        outcome = await desk.act(actor, cmd, args.ids, reason=args.reason, dry_run=args.dry_run)
    _out(json.dumps(outcome.to_json()) if args.json else render_outcome(outcome))
    return 1 if outcome.errors else 0


async def _triage(settings: Settings, services: ReviewServices, args) -> int:
    if services.triage is None:
        raise CommandError("LLM triage is off: set [triage] enabled = true, provider, model and api_key")
    report = await services.triage.run_once(limit=args.limit)
    if args.json:
        _out(json.dumps(report.to_json()))
    else:
        outcomes = ", ".join(f"{n} {k}" for k, n in sorted(report.outcomes.items())) or "nothing to do"
        _out(f"{report.candidates} items: {outcomes}; this pass cost ${report.cost_usd:.4f},"
             f" today ${report.spent_today_usd:.4f} of ${settings.triage_daily_budget_usd:.2f}")
    return 0


def _query(args) -> ItemQuery:
    states = set(args.state or ["waiting"])
    if "all" in states:
        statuses = st.STATUSES
    else:
        statuses = tuple(sorted((states - {"waiting"}) | (set(st.WAITING) if "waiting" in states else set())))
    if args.uploader:
        check_did(args.uploader, what="--uploader")
    return ItemQuery(statuses=statuses, kinds=tuple(args.kind or ()), values=tuple(args.value or ()),
                     uploader=args.uploader, newest_first=args.newest, limit=args.limit)


def _item_line(item: ReviewItem) -> str:
    return (f"#{item.id:<5} {item.status:<15} {item.kind:<9} {item.value:<20} {item.uri}  {item.created[:19]}"
            f"  {item.reason}")


def render_view(view: ItemView) -> str:
    item = view.item
    lines = [f"#{item.id} {item.value} on {item.uri}", f"  {item.status} ({item.review_state}), {item.kind},"
             f" opened by {item.source} {item.created}: {item.reason}", f"  cid {item.cid or '-'}",
             f"  in force now: {', '.join(view.in_force) or 'nothing'}",
             f"  uploader {item.did}: " + ", ".join(f"{n} {s}" for s, n in sorted(view.uploader_items.items()))]
    lines.append("evidence:")
    lines += [f"  - {f.get('scanner')}: {summarise(f.get('kind', ''), f.get('score'), f.get('evidence') or {})}"
              for f in item.evidence if isinstance(f, dict)]
    if view.proposal:
        p = view.proposal
        lines.append(f"proposal: {p.payload.get('decision')} by {p.actor_kind} {p.actor_name}: {p.reason}")
    lines.append("history:")
    for e in view.events:
        labels = " ".join(f"{'-' if x['neg'] else '+'}{x['val']} (seq {x['seq']})" for x in e.labels)
        lines.append(f"  {e.created} {e.event_type:<19} {e.action:<8} {e.actor_kind} {e.actor_name} ({e.actor_via})"
                     f" {e.state_before or '-'} -> {e.state_after}" + (f" {labels}" if labels else "")
                     + (f": {e.reason}" if e.reason else ""))
    for c in view.triage_calls:
        lines.append(f"  triage {c.created} {c.provider}/{c.model}: {c.outcome} {c.verdict or ''}"
                     f" {c.input_tokens}+{c.output_tokens} tokens ${c.cost_usd:.5f}"
                     + (f" ({c.error})" if c.error else ""))
    return "\n".join(lines)


def render_outcome(outcome: Outcome) -> str:
    verb = "would write" if outcome.dry_run else "wrote"
    lines = []
    for s in outcome.steps:
        if s.error:
            lines.append(f"#{s.item_id}: not done: {s.error}")
            continue
        labels = [f"+{v}" for v in s.emit] + [f"-{v}" for v in s.negate]
        where = f" on {s.uri}" if labels else ""
        lines.append(f"#{s.item_id} {s.action}: {s.before or 'new'} -> {s.after}"
                     + (f", {verb} {' '.join(labels)}{where}" if labels else ", no label change")
                     + (f" (event {s.event_id})" if s.event_id else ""))
    return "\n".join(lines)


async def operator(settings: Settings, args: argparse.Namespace) -> int:
    adding = args.operator_command == "add"  # the first admin may come before anything else
    async with _services(settings, create=adding) as services:
        actor = await _actor(settings, services, args, bootstrap=adding)
        ops = services.operators
        try:
            if args.operator_command == "add":
                row, token = await ops.add(actor, args.name, args.role)
                if args.json:
                    _out(json.dumps({**row.to_json(), "token": token}))
                else:
                    _out(token)
                    print(f"firehose-mod: {row.role} {row.name!r} created; the token above is shown only this once",
                          file=sys.stderr)
            elif args.operator_command == "list":
                for row in await ops.list(actor):
                    _out(json.dumps(row.to_json()) if args.json else
                         f"{row.name:<20} {row.role:<10} added {row.created[:19]} by {row.created_by}"
                         + (f"  REVOKED {row.revoked[:19]} by {row.revoked_by}" if row.revoked else ""))
            else:
                row = await ops.revoke(actor, args.name)
                _out(json.dumps(row.to_json()) if args.json else f"revoked {row.name}")
        except (Forbidden, ValueError) as exc:
            raise CommandError(str(exc)) from None
    return 0
