"""`firehose-mod transparency preview`: what the next transparency summary would say, now.

Reads the moderation event log (writes nothing, posts nothing); works with `[transparency]`
off too, to see what enabling it would post. A batch waiting to be posted (a failed post being
retried) is shown as it will be sent.
"""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime

from firehose_mod.cli.common import CommandError, _out
from firehose_mod.config import Settings
from firehose_mod.ingest.lexicon import grapheme_count
from firehose_mod.review.transparency import (
    MAX_GRAPHEMES,
    PosterConfig,
    TransparencyPoster,
)
from firehose_mod.store.open import open_transparency_store


def add_parser(sub) -> None:
    t = sub.add_parser("transparency", help="public summaries of decisions ([transparency])").add_subparsers(
        dest="transparency_command", required=True)
    preview = t.add_parser("preview", help="print what the next summary post would say (posts nothing)")
    preview.add_argument("--json", action="store_true", help="the post, its counts and the stretch of the log")


async def transparency(settings: Settings, args: argparse.Namespace) -> int:
    if not settings.database_url and not settings.db_path.exists():
        raise CommandError(f"no database at {settings.db_path}: nothing decided yet (wrong --data-dir?)")
    async with open_transparency_store(settings, busy_wait=settings.db_busy_wait) as store:
        poster = TransparencyPoster(store, PosterConfig.from_settings(settings))
        pending = await store.pending()
        draft = None if pending is not None else await poster.draft()
        last = await store.last()
    posted = last if last is not None and last.posted else None
    if args.json:
        _out(json.dumps({
            "enabled": settings.transparency_enabled, "dry_run": settings.transparency_dry_run,
            "pending": pending.to_json() if pending else None,
            "next": None if draft is None else {
                "text": draft.text, "summary": draft.summary.to_json(), "after_event": draft.after_event,
                "last_event": draft.last_event, "due": _iso(draft.due_at)},
            "last_posted": posted.to_json() if posted else None}, indent=2))
        return 0
    if not settings.transparency_enabled:
        _out("[transparency] is off: nothing is posted (this is what enabling it would post)")
    if pending is not None:
        _out(f"batch {pending.id} waits to be posted (attempts {pending.attempts}"
             + (f", last error: {pending.last_error}" if pending.last_error else "") + "):")
        _text(pending.text)
    elif draft is None:
        _out("nothing decided since the last summary: no post")
    else:
        _out(f"next summary (due {_iso(draft.due_at)}; moderation events {draft.after_event + 1}-"
             f"{draft.last_event}):")
        _text(draft.text)
    if posted is not None:
        _out(f"last posted {posted.posted}: {posted.uri}")
    return 0


def _text(text: str) -> None:
    _out("")
    _out(text)
    _out("")
    _out(f"({grapheme_count(text)}/{MAX_GRAPHEMES} graphemes)")


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M UTC")
