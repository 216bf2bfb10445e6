"""Transparency summaries: a batched public account of the desk's decisions, posted from the
labeler account (issue 15, item 5; `[transparency]`, off by default).

- `summarise(events)` (pure): from the moderation events of a stretch of the log, the decisions
  counted by label value and outcome: *labeled* (confirmed: the label applied or kept),
  *cleared* (rejected: the finding was wrong), *allowed* (right finding, allowed anyway),
  *overturned* (a confirmed label rejected or allowed later: negated); appeals *granted* (the
  label negated) and *upheld*; the labels applied and removed; and how many reports and
  appeals came in. Only decided outcomes: nothing about items still open, proposed or escalated
  (no suspicions), and no DID, handle or URI unless `name_uploaders` (then the accounts labeled,
  whose labels are public anyway).
- `render(summary)` (pure): the post's text, counts only, with the period covered, within
  Bluesky's 300 graphemes (values beyond the limit are folded into "+N more values").
- `TransparencyPoster`: every `poll` seconds, when `interval` has passed since the last post (or
  since the first decision, before any) and something was decided since, makes one batch (a
  row in `transparency_posts` with its text and the post's record key) and posts it as one
  `app.bsky.feed.post` through the atproto SDK, logged in as `declare --apply` logs in
  (`labels/account.py`). A batch covers the log up to its last event and the next starts there,
  so a restart never posts a stretch twice nor skips one; a failed post is logged, counted and
  retried with backoff (doubling, capped at the interval), and a retry first asks the PDS for the
  record key, so a post that landed before a crash is recorded, not posted again.
"""

from __future__ import annotations

import random
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime

import anyio
import structlog

from firehose_mod.config import Settings
from firehose_mod.ingest.lexicon import grapheme_count
from firehose_mod.labels.model import format_datetime, parse_datetime
from firehose_mod.review import states as st
from firehose_mod.store.open import open_transparency_store
from firehose_mod.store.pg.transparency import PgTransparencyStore
from firehose_mod.store.review import ModerationEvent
from firehose_mod.store.transparency import PostRow, TransparencyStore

log = structlog.get_logger(__name__)

COLLECTION = "app.bsky.feed.post"
MAX_GRAPHEMES = 300  # app.bsky.feed.post#text: maxGraphemes 300, maxLength 3000 (bytes)
MAX_BYTES = 3000
OUTCOMES = ("labeled", "cleared", "allowed", "overturned")
APPEAL_OUTCOMES = ("granted", "upheld")
COUNTED = frozenset({"confirm", "reject", "allow"})  # the decisions; `accept` is recorded as the one it accepted


# -- the summary (pure) -----------------------------------------------------------------------
@dataclass(frozen=True)
class Summary:
    start: str | None  # the period covered (atproto datetimes)
    end: str | None
    outcomes: dict[str, dict[str, int]] = field(default_factory=dict)  # value -> outcome -> count
    appeals: dict[str, int] = field(default_factory=dict)  # granted / upheld
    labels_applied: int = 0
    labels_removed: int = 0
    reports_received: int = 0
    appeals_received: int = 0
    first_event: int | None = None  # the stretch of the log read
    last_event: int | None = None
    uploaders: tuple[str, ...] = ()  # DIDs of the accounts labeled; only with name_uploaders

    @property
    def decisions(self) -> int:
        return sum(sum(o.values()) for o in self.outcomes.values()) + sum(self.appeals.values())

    def to_json(self) -> dict:
        return {"start": self.start, "end": self.end, "decisions": self.decisions, "outcomes": self.outcomes,
                "appeals": self.appeals, "labels_applied": self.labels_applied,
                "labels_removed": self.labels_removed, "reports_received": self.reports_received,
                "appeals_received": self.appeals_received, "first_event": self.first_event,
                "last_event": self.last_event, **({"uploaders": list(self.uploaders)} if self.uploaders else {})}


def outcome(event: ModerationEvent, kind: str | None = None) -> str | None:
    """What a decision event counts as (None: not a decision, so not counted)."""
    if event.action not in COUNTED:
        return None
    if kind == "appeal":
        return "upheld" if event.action == "confirm" else "granted"
    if event.action == "confirm":
        return "labeled"
    if event.state_before == st.CONFIRMED:
        return "overturned"
    return "cleared" if event.action == "reject" else "allowed"


def summarise(events: Iterable[ModerationEvent], kinds: Mapping[int, str] | None = None, *,
              name_uploaders: bool = False, start: str | None = None, end: str | None = None) -> Summary:
    """The decided outcomes among `events` (each item's kind from `kinds`, by item id: an appeal
    item's decisions are appeals granted or upheld). `start`/`end` default to the first and last
    event's time."""
    kinds = kinds or {}
    outcomes: dict[str, dict[str, int]] = {}
    appeals = {k: 0 for k in APPEAL_OUTCOMES}
    applied = removed = reports = appeals_in = 0
    uploaders: dict[str, None] = {}
    labeled: dict[tuple[str, str], None] = {}  # (uri, value) labeled in this stretch, in order
    first = last = None
    first_time = last_time = None
    for e in events:
        first = e.id if first is None else first
        last, last_time = e.id, e.created
        first_time = first_time or e.created
        joined = e.payload.get("joined") if e.action == "comment" else None
        received = e.payload.get("source") if e.action == "open" else joined
        reports += received == "report"
        appeals_in += received == "appeal"
        what = outcome(e, kinds.get(e.item_id))
        if what is None:
            continue
        applied += sum(1 for x in e.labels if not x.get("neg"))
        removed += sum(1 for x in e.labels if x.get("neg"))
        if what == "labeled":
            labeled[(e.uri, e.value)] = None
        elif what != "upheld":  # cleared, allowed, overturned, an appeal granted: no label stands
            labeled.pop((e.uri, e.value), None)
        if what in APPEAL_OUTCOMES:
            appeals[what] += 1
            continue
        counts = outcomes.setdefault(e.value, {k: 0 for k in OUTCOMES})
        counts[what] += 1
    if name_uploaders:  # the accounts whose label stands at the end: not one overturned or appealed away
        uploaders = {u.removeprefix("at://").split("/", 1)[0]: None for u, _ in labeled}
    return Summary(start or first_time, end or last_time, outcomes, appeals if any(appeals.values()) else {},
                   applied, removed, reports, appeals_in, first, last, tuple(uploaders))


def _when(a: str | None, b: str | None) -> str:
    """`2026-12-01 04:12 – 2026-12-02 04:12 UTC`, or `2026-12-01 04:12–18:30 UTC` within a day."""
    if not a or not b:
        return ""
    x, y = parse_datetime(a).astimezone(UTC), parse_datetime(b).astimezone(UTC)
    left = x.strftime("%Y-%m-%d %H:%M")
    if x.date() == y.date():
        return f"{left}–{y:%H:%M} UTC"
    return f"{left} – {y:%Y-%m-%d %H:%M} UTC"


def _plural(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else (many or one + 's')}"


def fits(text: str, limit: int = MAX_GRAPHEMES) -> bool:
    return grapheme_count(text) <= limit and len(text.encode()) <= MAX_BYTES


def render(summary: Summary, handles: Mapping[str, str] | None = None, *, limit: int = MAX_GRAPHEMES) -> str:
    """The post: the period, the decisions by value and outcome, appeals, reports received, and
    (only when the summary names them) the accounts labeled; at most `limit` graphemes."""
    handles = handles or {}
    head = [f"Moderation summary, {_when(summary.start, summary.end)}".rstrip(", "),
            f"{_plural(summary.decisions, 'decision')} ({_plural(summary.labels_applied, 'label')} applied,"
            f" {summary.labels_removed} removed)" + (":" if summary.outcomes else "")]
    values = []
    for value, counts in sorted(summary.outcomes.items(), key=lambda kv: (-sum(kv[1].values()), kv[0])):
        values.append((f"{value}: " + ", ".join(f"{n} {k}" for k, n in counts.items() if n), sum(counts.values())))
    tail = []
    if summary.appeals:
        tail.append("Appeals: " + ", ".join(f"{summary.appeals.get(k, 0)} {k}" for k in APPEAL_OUTCOMES))
    if summary.reports_received or summary.appeals_received:
        tail.append(f"Received: {_plural(summary.reports_received, 'report')},"
                    f" {_plural(summary.appeals_received, 'appeal')}")
    text = ""
    for shown in range(len(values), -1, -1):  # as many value lines as fit, the biggest first
        rest = values[shown:]
        more = [f"+{_plural(len(rest), 'more value')} ({_plural(sum(n for _, n in rest), 'decision')})"] if rest else []
        text = "\n".join(head + [line for line, _ in values[:shown]] + more + tail)
        if fits(text, limit):
            break
    names = [handles.get(did, did) for did in summary.uploaders]
    for shown in range(len(names), 0, -1):  # then as many names as fit
        rest = len(names) - shown
        line = "Labeled: " + ", ".join(names[:shown]) + (f" (+{rest} more)" if rest else "")
        if fits(f"{text}\n{line}", limit):
            return f"{text}\n{line}"
    if names and fits(f"{text}\nLabeled: {_plural(len(names), 'account')}", limit):
        return f"{text}\nLabeled: {_plural(len(names), 'account')}"
    return text if fits(text, limit) else _cut(text, limit)


def _cut(text: str, limit: int) -> str:
    import regex

    clusters = regex.findall(r"\X", text)[:limit - 1]
    while clusters and not fits("".join(clusters) + "…", limit):
        clusters.pop()
    return "".join(clusters) + "…"


# -- record keys ------------------------------------------------------------------------------
_S32 = "234567abcdefghijklmnopqrstuvwxyz"


def make_tid(micros: int, clock_id: int) -> str:
    """A TID (atproto's timestamp identifier): 53 bits of microseconds, 10 of clock id, base32-sortable."""
    n = ((micros & ((1 << 53) - 1)) << 10) | (clock_id & 1023)
    return "".join(_S32[(n >> (5 * i)) & 31] for i in range(12, -1, -1))


# -- posting ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class PosterConfig:
    interval: float = 86400.0  # seconds between posts at most
    name_uploaders: bool = False
    dry_run: bool = False
    poll: float = 60.0  # seconds between looks at the log
    backoff: float = 30.0  # seconds before the first retry of a failed post
    langs: tuple[str, ...] = ("en",)

    @classmethod
    def from_settings(cls, s: Settings) -> PosterConfig:
        return cls(s.transparency_interval, s.transparency_name_uploaders, s.transparency_dry_run)


@dataclass(frozen=True)
class Draft:
    """The next batch as it stands: its summary and text, the stretch of the log, and when it is due."""

    summary: Summary
    text: str
    after_event: int
    last_event: int
    due_at: float  # unix time


class PdsPublisher:
    """Posts a batch to the labeler account's repo: its PDS from its DID document, a session as
    `declare --apply` opens one, `createRecord` with the batch's own record key. Before a retry it
    asks for that key first (`getRecord`): a post that landed before a crash is not posted again."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._pds: str | None = None

    async def pds(self) -> str:
        if self._pds is None:
            from firehose_mod.ingest.resolve import DidResolver
            from firehose_mod.scan.netguard import outbound_client

            async with outbound_client(self.settings) as client:
                self._pds = await DidResolver(client, self.settings.plc_url).resolve_pds(self.settings.did)
        return self._pds

    async def publish(self, row: PostRow, record: dict, *, retry: bool) -> tuple[str, str | None]:
        """Post `record` under the batch's record key; (uri, cid). On a `retry`, a record already
        there under that key is the post an earlier attempt made."""
        import json

        from atproto_client import models
        from atproto_client.exceptions import RequestErrorBase
        from atproto_client.models.utils import get_response_model

        from firehose_mod.labels.account import labeler_client, sdk_error, sdk_status

        did = self.settings.did
        try:
            pds = await self.pds()
            async with labeler_client(self.settings, pds, needed_by="[transparency] enabled",
                                      nothing="nothing was posted") as client:
                if retry:
                    try:
                        found = await client.com.atproto.repo.get_record(models.ComAtprotoRepoGetRecord.Params(
                            repo=did, collection=COLLECTION, rkey=row.rkey))
                        return found.uri, found.cid
                    except RequestErrorBase as exc:
                        if "RecordNotFound" not in sdk_error(exc) and sdk_status(exc) != 404:
                            raise
                body = {"repo": did, "collection": COLLECTION, "rkey": row.rkey, "record": record}
                # The record as built, byte for byte (as declare writes its record).
                response = await client.invoke_procedure("com.atproto.repo.createRecord",
                                                         content=json.dumps(body).encode(),
                                                         input_encoding="application/json",
                                                         output_encoding="application/json")
                result = get_response_model(response, models.ComAtprotoRepoCreateRecord.Response)
                return result.uri, result.cid
        except RequestErrorBase as exc:
            self._pds = None  # resolve again next time: the account may have moved
            raise RuntimeError(f"the PDS refused the post: {sdk_error(exc)}") from None
        except Exception:
            self._pds = None
            raise


class TransparencyPoster:
    def __init__(self, store: TransparencyStore | PgTransparencyStore, config: PosterConfig, *, publisher=None,
                 clock=time.time):
        self.store, self.config, self.clock = store, config, clock
        self.publisher = publisher
        self.metrics = {"batches": 0, "posts": 0, "posts_failed": 0, "decisions_posted": 0, "dry_runs": 0}
        self._failures = 0
        self._next_try = 0.0
        self._dry_last: float | None = None

    async def run(self) -> None:
        """Look every `poll` seconds, for ever; failures are logged, never raised."""
        while True:
            try:
                await self.tick()
            except Exception as exc:  # noqa: BLE001 (a summary is never worth stopping the daemon)
                log.warning("transparency.failed", error=f"{type(exc).__name__}: {exc}"[:300])
            await anyio.sleep(min(self.config.poll, self.config.interval))

    async def due_at(self) -> float | None:
        """When the next batch is due (unix time): `interval` after the last post, or before any,
        after the first decision; None while nothing was decided since the last batch."""
        last = await self.store.last()
        first = await self.store.first_decision_after(await self.store.covered())
        if first is None:
            return None
        since = parse_datetime(last.period_end if last is not None else first[1]).timestamp()
        if self.config.dry_run and self._dry_last is not None:
            since = self._dry_last
        return since + self.config.interval

    async def draft(self) -> Draft | None:
        """The next batch as it would be made now (None: nothing decided since the last one)."""
        due_at = await self.due_at()
        if due_at is None:
            return None
        last = await self.store.last()
        after = await self.store.covered()
        rows = await self.store.events_after(after)
        if not rows:
            return None
        start = last.period_end if last is not None else rows[0][0].created
        summary = summarise([e for e, _ in rows], {e.item_id: kind for e, kind in rows},
                            name_uploaders=self.config.name_uploaders, start=start,
                            end=format_datetime(datetime.fromtimestamp(self.clock(), UTC)))
        handles = await self.store.handles(summary.uploaders) if summary.uploaders else {}
        return Draft(summary, render(summary, handles), after, rows[-1][0].id, due_at)

    async def tick(self) -> PostRow | None:
        """Retry a batch not posted yet when its backoff is over, else make and post a new batch if
        one is due. Returns the batch in hand (None: nothing to do)."""
        pending = await self.store.pending()
        if pending is not None:
            if self.clock() >= self._next_try:
                await self._deliver(pending)
            return pending
        due_at = await self.due_at()  # cheap: reads the whole stretch only once it is due
        if due_at is None or self.clock() < due_at:
            return None
        draft = await self.draft()
        if draft is None:
            return None
        if self.config.dry_run:
            self._dry_last = self.clock()
            self.metrics["dry_runs"] += 1
            log.info("transparency.dry_run", text=draft.text, decisions=draft.summary.decisions,
                     events=[draft.after_event + 1, draft.last_event])
            return None
        rkey = make_tid(int(self.clock() * 1_000_000), random.randrange(1024))
        row = await self.store.create(draft.after_event, draft.last_event, draft.summary.start or "",
                                      draft.summary.end or "", draft.summary.to_json(), draft.text, rkey)
        self.metrics["batches"] += 1
        await self._deliver(row)
        return row

    def record(self, row: PostRow) -> dict:
        """The post exactly as written: text, the batch's creation time, languages."""
        return {"$type": COLLECTION, "text": row.text, "createdAt": row.created, "langs": list(self.config.langs)}

    async def _deliver(self, row: PostRow) -> None:
        await self.store.attempt(row.id)  # before it is made: a crash mid-attempt still makes the next one check
        try:
            uri, cid = await self.publisher.publish(row, self.record(row), retry=row.attempts > 0)
        except Exception as exc:  # noqa: BLE001 (logged, retried with backoff)
            error = f"{type(exc).__name__}: {exc}"[:400]
            self._failures += 1
            self.metrics["posts_failed"] += 1
            delay = min(self.config.interval, self.config.backoff * 2 ** (self._failures - 1))
            self._next_try = self.clock() + delay
            await self.store.failed(row.id, error)
            log.warning("transparency.undelivered", batch=row.id, error=error, retry_in_seconds=delay)
            return
        self._failures = 0
        await self.store.posted(row.id, uri, cid)
        self.metrics["posts"] += 1
        self.metrics["decisions_posted"] += int(row.summary.get("decisions", 0))
        log.info("transparency.posted", batch=row.id, uri=uri, decisions=row.summary.get("decisions"),
                 events=[row.after_event + 1, row.last_event])


class TransparencyCollector:
    """Prometheus: summary batches made, posted, failed, dry runs."""

    def __init__(self, poster: TransparencyPoster):
        self.poster = poster

    def collect(self):
        from prometheus_client.core import CounterMetricFamily

        family = CounterMetricFamily("firehose_mod_transparency", "Transparency summaries: batches, posts, failures.",
                                     labels=["what"])
        for what, n in sorted(self.poster.metrics.items()):
            family.add_metric([what], n)
        yield family


@asynccontextmanager
async def open_poster(settings: Settings, *, daemon: bool = True) -> AsyncIterator[TransparencyPoster | None]:
    """The poster over `settings`' database (None unless `[transparency] enabled`)."""
    if not settings.transparency_enabled:
        yield None
        return
    async with open_transparency_store(settings, busy_wait=None if daemon else settings.db_busy_wait) as store:
        yield TransparencyPoster(store, PosterConfig.from_settings(settings), publisher=PdsPublisher(settings))
