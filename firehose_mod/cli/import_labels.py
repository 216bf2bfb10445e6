"""`firehose-mod import --from URL`: take over the labels another labeler issued.

The logic is `firehose_mod/ops/import_labels.py`; this parses, shows progress on stderr and
prints the answer on stdout (`--json`: one object), with the `label seq-floor` advice.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from firehose_mod.cli.common import CommandError, _out
from firehose_mod.config import Settings
from firehose_mod.daemon import open_label_log
from firehose_mod.ops.import_labels import ImportReport, SourceError, run_import
from firehose_mod.store.open import open_import_store
from firehose_mod.syntax import check_did


def add_parser(sub) -> None:
    p = sub.add_parser(
        "import", help="import the labels another labeler issued (re-signed as ours, cts kept; resumable)",
        description="Read another labeler's labels (queryLabels, or its subscribeLabels stream with --stream) and"
                    " append them to our label log: each keeps its cts, is signed by our key with our DID as src,"
                    " and gets a decision saying where it came from. A (uri, val) ends as the source's last word"
                    " on it (by cts). Interrupted runs resume; a second run writes nothing new. Prints the"
                    " `label seq-floor` to set before the old labeler's consumers switch to this one.",
    )
    p.add_argument("--from", dest="from_url", required=True, metavar="URL",
                   help="the source labeler's base URL, e.g. https://moderation.plyr.fm")
    p.add_argument("--did", help="only labels whose src is this DID (sent as sources=DID)")
    p.add_argument("--stream", action="store_true",
                   help="read subscribeLabels from cursor 0 until caught up (the whole history, from any labeler)"
                        " instead of paging queryLabels")
    p.add_argument("--restart", action="store_true",
                   help="read the source again from the start (labels already imported are not written twice)")
    p.add_argument("--no-verify", action="store_true",
                   help="do not fetch the source's DID document to check its labels' signatures")
    p.add_argument("--limit", type=int, default=250, help="labels per queryLabels page (1-250, default 250)")
    p.add_argument("--json", action="store_true", help="the summary as one JSON object")


class _Progress:
    """Count and rate on stderr: rewritten in place on a terminal, a line every few seconds elsewhere."""

    def __init__(self, every: float = 5.0):
        self._tty = sys.stderr.isatty()
        self._every = 0.2 if self._tty else every
        self._last = 0.0
        self._shown = False

    def __call__(self, r: ImportReport) -> None:
        now = time.monotonic()
        if now - self._last < self._every:
            return
        self._last = now
        if r.phase == "read":
            text = (f"read {r.read} labels ({r.rate(r.read):.0f}/s), {r.new} new, {r.pages} pages"
                    f" from {r.source} ({r.mode})")
        else:
            text = f"{r.phase}: wrote {r.written} ({r.rate(r.written):.0f}/s), {r.unchanged} unchanged"
        self._shown = True
        print(("\r" + text + "\x1b[K") if self._tty else text, end="" if self._tty else "\n",
              file=sys.stderr, flush=True)

    def done(self) -> None:
        if self._tty and self._shown:
            print(file=sys.stderr)


async def import_labels(settings: Settings, args: argparse.Namespace) -> int:
    if args.did:
        check_did(args.did, what="--did")
    progress = _Progress()
    async with open_label_log(settings) as label_log, \
            open_import_store(settings, busy_wait=settings.db_busy_wait) as store:
        try:
            report = await run_import(settings, label_log, store, args.from_url, did=args.did, stream=args.stream,
                                      restart=args.restart, verify=not args.no_verify, limit=args.limit,
                                      progress=progress)
        except SourceError as exc:
            progress.done()
            raise CommandError(f"{exc}. What was read so far is kept: run the same command again to resume"
                               ) from None
        except ValueError as exc:
            raise CommandError(str(exc)) from None
    progress.done()
    if args.json:
        _out(json.dumps(report.to_json()))
        print(f"firehose-mod: {report.seq_floor_advice}", file=sys.stderr)
    else:
        _render(report)
    if report.failed:
        print(f"firehose-mod: {report.failed} labels did not verify with their src's key (imported anyway: see the"
              " decisions' evidence, sig_verified false)", file=sys.stderr)
    return 0


def _render(r: ImportReport) -> None:
    _out(f"source   {r.source} ({r.mode}{', src ' + r.did if r.did else ''})"
         + (f", resumed after cursor {r.resumed_from}" if r.resumed_from else ""))
    _out(f"read     {r.read} labels in {r.pages} pages, {r.new} new; stored for this source: {r.stored}"
         + (f"; {r.malformed} malformed" if r.malformed else "") + (f"; {r.other_src} of other srcs" if r.other_src else ""))
    for src, n in sorted(r.srcs.items()):
        key = r.keys.get(src)
        _out(f"  src {src}: {n} labels, key {key or '-'}" + (f" ({r.key_errors[src]})" if src in r.key_errors else ""))
    _out(f"signatures  {r.verified} verified, {r.failed} failed, {r.unchecked} not checked")
    _out(f"wrote    {r.written} ({r.labels} labels, {r.negations} negations), {r.unchanged} changed nothing,"
         f" {r.invalid} invalid")
    for e in r.invalid_examples:
        _out(f"  invalid: {e['val']} on {e['uri']}: {e['why']}")
    _out(f"state    {r.subjects} (uri, val) imported, {r.in_force} in force here, {r.state_differs} differ from the source")
    for e in r.state_examples:
        _out(f"  {e['val']} on {e['uri']}: source {'in force' if e['source'] else 'not in force'},"
             f" here {'in force' if e['ours'] else 'not in force'}")
    if r.order_disagreements:
        _out(f"order    {r.order_disagreements} (uri, val) end differently by cts than by the source's seq order;"
             " the import follows cts")
    _out(f"seq      source head {r.source_head if r.source_head is not None else '?'}"
         f"{'' if r.source_head_exact else ' (lower bound)'}, our head {r.our_head}")
    _out(f"seq floor: {r.seq_floor_advice}")
