"""Import the labels another labeler issued (`firehose-mod import --from URL`).

Two ways to read the source, both resumable (the position is saved with each page, see
`store/label_import.py`):

- `query` (default): page `com.atproto.label.queryLabels?uriPatterns=*` (`sources=DID` with
  `--did`). `*` alone is sent because it means "everything" both to a spec-correct labeler (a
  prefix glob) and to plyr.fm's labeler, which turns `*` into SQL LIKE's `%` (so `_` and `%`
  inside a longer pattern would be wildcards there: we never send one). A spec-correct labeler
  answers each (uri, val, src)'s current label; plyr.fm's answers every historical row.
- `stream`: read `com.atproto.label.subscribeLabels` from cursor 0 until caught up: binary
  DAG-CBOR frames per the spec, or the JSON text messages plyr.fm's labeler sends
  (`{"seq": N, "labels": [label]}`). plyr.fm's sends at most 1000 stored labels per connection
  and then only live ones, so we reconnect from the last seq until a connection brings nothing
  new within `idle` seconds.

Labels arrive in JSON (`sig` as `{"$bytes": base64}` per the lexicon, or as plyr.fm's array of
byte values) or CBOR. Each is checked against its src's `#atproto_label` key when that DID
document can be fetched, then stored once. When the source is read to its head, the stored labels
are applied to our label log in (cts, source order): each keeps its cts, is signed by our key with
our DID as src (the labels are ours now), and comes with a decision saying where it came from.
The label log's rules make the replay faithful to the final state: a negation is written only for
a label in force, a repeat of a label in force is a no-op, so each (uri, val) ends as the source's
last word on it; an imported label older than our own latest label on (uri, val) is skipped, and
one already in the log (same uri, val, neg, cts) is never written again.

Last, the seq-floor advice: consumers of the old labeler hold its cursors (plyr.fm's backend keeps
its subscribeLabels cursor in Redis). Our seq must start above the highest seq the source gave out,
or such a consumer gets `FutureCursor`, skips our new labels, or replays; `firehose-mod label
seq-floor N` does that, and this module computes N.
"""

from __future__ import annotations

import base64
import json
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx
import libipld
import structlog
import websockets
from websockets.asyncio.client import connect

from firehose_mod.config import Settings
from firehose_mod.ingest.resolve import (
    DidResolver,
    ResolveError,
    check_did,
    document_entries,
)
from firehose_mod.labels.model import (
    Label,
    LabelError,
    parse_datetime,
    validate_label_fields,
)
from firehose_mod.labels.signing import KeyError_, parse_did_key, verify_label
from firehose_mod.scan.netguard import USER_AGENT, outbound_client
from firehose_mod.store import EmitRequest, LabelLog
from firehose_mod.store.decisions import DecisionRow, DecisionWriter
from firehose_mod.store.label_import import ImportRow, ImportRun, ImportStore
from firehose_mod.syntax import check_did as check_syntax_did

log = structlog.get_logger(__name__)

QUERY = "/xrpc/com.atproto.label.queryLabels"
SUBSCRIBE = "/xrpc/com.atproto.label.subscribeLabels"
APPLY_BATCH = 2000
STREAM_PAGE = 500  # labels from the stream committed together
MAX_LABELS_PER_PAGE = 10_000  # a queryLabels answer larger than this is refused
MAX_KEY_LOOKUPS = 20  # DID documents fetched per run: a source naming more srcs leaves the rest unchecked
MAX_CURSOR = 1024


class SourceError(Exception):
    """The source cannot be read (after retries); what was read so far is kept for the next run."""


@dataclass
class ImportReport:
    source: str
    mode: str
    did: str | None
    resumed_from: str | None = None
    pages: int = 0  # pages (or stream batches) read in this run
    read: int = 0  # labels read in this run
    new: int = 0  # of which not stored before
    malformed: int = 0  # labels the source sent that are not labels (kept out)
    other_src: int = 0  # labels of another src than --did (a source ignoring `sources`)
    stored: int = 0  # labels stored for this import, all runs
    srcs: dict[str, int] = field(default_factory=dict)
    keys: dict[str, str | None] = field(default_factory=dict)  # src -> its #atproto_label did:key, None: unknown
    key_errors: dict[str, str] = field(default_factory=dict)
    verified: int = 0
    failed: int = 0
    unchecked: int = 0
    written: int = 0  # labels this run wrote to our log
    labels: int = 0
    negations: int = 0
    unchanged: int = 0  # applied rows that changed nothing (repeats, negations of nothing, older ones)
    invalid: int = 0
    invalid_examples: list[dict] = field(default_factory=list)
    order_disagreements: int = 0  # (uri, val) whose last word by cts is not the last by source order
    disagreement_examples: list[dict] = field(default_factory=list)
    subjects: int = 0  # (uri, val) pairs imported
    in_force: int = 0  # of which in force in our log now
    state_differs: int = 0  # whose state in our log is not the source's (ours newer, or invalid)
    state_examples: list[dict] = field(default_factory=list)
    source_head: int | None = None  # the source's highest seq
    source_head_exact: bool = False  # read from its stream (else a lower bound from queryLabels cursors)
    our_head: int = 0
    seq_floor: int | None = None  # the N for `firehose-mod label seq-floor N`
    seq_floor_advice: str = ""
    phase: str = "read"
    started: float = field(default_factory=time.monotonic)
    seconds: float = 0.0

    def rate(self, n: int) -> float:
        return n / max(1e-6, time.monotonic() - self.started)

    def to_json(self) -> dict:
        out = {k: v for k, v in self.__dict__.items() if k not in ("started", "phase")}
        return out


Progress = Callable[[ImportReport], None]


# ----------------------------------------------------------------------------- parsing

def _sig_bytes(raw: Any) -> bytes | None:
    """A signature as the source sent it: bytes (CBOR), `{"$bytes": b64}` (lexicon JSON), a list
    of byte values (plyr.fm: serde_bytes through serde_json) or a base64 string."""
    if raw is None:
        return None
    if isinstance(raw, (bytes, bytearray)):
        return bytes(raw)
    if isinstance(raw, dict) and isinstance(raw.get("$bytes"), str):
        raw = raw["$bytes"]
    if isinstance(raw, str):
        text = raw.strip()
        pad = "=" * (-len(text) % 4)
        try:
            return base64.b64decode(text + pad, altchars=b"-_" if ("-" in text or "_" in text) else None,
                                    validate=True)
        except ValueError:
            raise ValueError("sig is not base64") from None
    if isinstance(raw, list) and all(isinstance(b, int) and 0 <= b < 256 for b in raw):
        return bytes(raw)
    raise ValueError(f"sig of type {type(raw).__name__} is not bytes")


def parse_label(d: Any) -> Label:
    """A label from a queryLabels answer or a stream frame; ValueError when it is not one."""
    if not isinstance(d, dict):
        raise ValueError("not an object")  # noqa: TRY004 (malformed input, as the other checks)
    for name in ("src", "uri", "val", "cts"):
        if not isinstance(d.get(name), str) or not d[name]:
            raise ValueError(f"no {name}")
    if not d["src"].startswith("did:") or len(d["src"]) > 2048:
        raise ValueError("src is not a DID")
    for name in ("cid", "exp"):
        if d.get(name) is not None and not isinstance(d[name], str):
            raise ValueError(f"{name} is not a string")
    neg = d.get("neg", False)
    if neg is None:
        neg = False
    if not isinstance(neg, bool):
        raise ValueError("neg is not a boolean")  # noqa: TRY004
    ver = d.get("ver", 1)
    if ver is not None and (not isinstance(ver, int) or isinstance(ver, bool)):
        raise ValueError("ver is not an integer")
    parse_datetime(d["cts"])  # LabelError is a ValueError
    return Label(src=d["src"], uri=d["uri"], val=d["val"], cts=d["cts"], cid=d.get("cid"), neg=neg,
                 exp=d.get("exp"), ver=1 if ver is None else ver, sig=_sig_bytes(d.get("sig")))


def cts_key(cts: str) -> str:
    """A cts as a sortable UTC string with microseconds (sources differ in precision and offset)."""
    return parse_datetime(cts).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")


def normalize_source(url: str) -> str:
    """The source's base URL: http(s) (ws(s) is taken as its http(s) twin), no path, no slash."""
    url = url.strip()
    parts = urlsplit(url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    if scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"--from {url[:200]!r}: give the source labeler's base URL, e.g. https://moderation.plyr.fm")
    path = parts.path.rstrip("/")
    for suffix in (QUERY, SUBSCRIBE, "/xrpc"):
        path = path.removesuffix(suffix)
    return f"{scheme}://{parts.netloc}{path}"


def _ws_base(base: str) -> str:
    return "ws" + base.removeprefix("http")


# ----------------------------------------------------------------------------- keys

def label_key_from_document(did: str, doc: object) -> str:
    """The `#atproto_label` verification method of a DID document as a did:key (ResolveError)."""
    for method in document_entries(did, doc, "verificationMethod", "#atproto_label"):
        mb = method.get("publicKeyMultibase")
        if not isinstance(mb, str) or not mb.startswith("z"):
            raise ResolveError(f"{did}: #atproto_label has no base58 publicKeyMultibase")
        try:
            parse_did_key("did:key:" + mb)
        except KeyError_ as exc:
            raise ResolveError(f"{did}: #atproto_label key is unusable: {exc}"[:300]) from None
        return "did:key:" + mb
    raise ResolveError(f"{did}: the DID document has no #atproto_label key")


class SourceKeys:
    """Each src's `#atproto_label` key, fetched once per run over the vetted client."""

    def __init__(self, resolver: DidResolver | None, report: ImportReport):
        self._resolver = resolver
        self._report = report

    async def key(self, src: str) -> str | None:
        report = self._report
        if src in report.keys:
            return report.keys[src]
        key = None
        if self._resolver is None:
            report.key_errors[src] = "not checked (--no-verify)"
        elif len(report.keys) >= MAX_KEY_LOOKUPS:
            report.key_errors[src] = f"not checked (more than {MAX_KEY_LOOKUPS} srcs)"
        else:
            try:
                check_did(src)
                key = label_key_from_document(src, await self._resolver._document(src))
            except ResolveError as exc:
                report.key_errors[src] = str(exc)[:300]
                log.warning("import.key_unavailable", src=src, error=str(exc)[:300])
        report.keys[src] = key
        return key

    async def verify(self, label: Label) -> bool | None:
        key = await self.key(label.src)
        if key is None or label.sig is None:
            return None
        try:
            return verify_label(key, label)
        except (KeyError_, ValueError):
            return False


# ----------------------------------------------------------------------------- the run

@dataclass
class _Ctx:
    settings: Settings
    store: ImportStore
    run: ImportRun
    report: ImportReport
    keys: SourceKeys
    client: httpx.AsyncClient
    did: str | None
    progress: Progress | None
    retries: int
    retry_base: float
    idle: float
    limit: int
    positions: int = 0  # source-order positions handed out (queryLabels rows carry no seq)
    last_page_rows: int = 0  # labels on queryLabels' last page (they come after its last cursor)


async def run_import(
    settings: Settings, label_log: LabelLog, store: ImportStore, source: str, *,
    did: str | None = None, stream: bool = False, restart: bool = False, verify: bool = True,
    limit: int = 250, idle: float = 2.0, retries: int = 4, retry_base: float = 0.5,
    client: httpx.AsyncClient | None = None, resolver: DidResolver | None = None,
    progress: Progress | None = None,
) -> ImportReport:
    """Read `source`'s labels (resuming where an earlier run stopped), apply them, and advise the
    seq floor. Raises SourceError when the source cannot be read; what was read is kept."""
    base = normalize_source(source)
    if did is not None:
        check_syntax_did(did, what="--did")
    if not 1 <= limit <= 250:
        raise ValueError("--limit must be between 1 and 250 (queryLabels' maximum)")
    mode = "stream" if stream else "query"
    report = ImportReport(base, mode, did)
    run = await store.begin(base, did or "", mode, restart=restart)
    report.resumed_from = run.cursor
    if run.cursor is not None:
        log.info("import.resuming", source=base, mode=mode, cursor=run.cursor, pages=run.pages, rows=run.rows)
    async with _clients(settings, client, resolver, verify) as (http, resolver_):
        ctx = _Ctx(settings, store, run, report, SourceKeys(resolver_, report), http, did, progress, retries,
                   retry_base, idle, limit, positions=run.positions)
        if stream:
            report.source_head = await _read_stream(ctx, base, after=int(run.cursor or 0), store_rows=True)
            report.source_head_exact = True
        else:
            last_cursor = await _read_query(ctx, base)
            await _learn_head(ctx, base, last_cursor)
        await store.fetched(run.id)
    if report.source_head is not None:
        await store.note_high_seq(run.id, report.source_head)
    run = await store.get(run.id)
    if run.high_seq is not None and (report.source_head is None or run.high_seq > report.source_head):
        report.source_head = run.high_seq  # an earlier run saw further (the source's history was cut since?)
    report.phase = "apply"
    await _apply(ctx, label_log)
    await _check_state(ctx, label_log)
    counts = await store.counts(run.id)
    report.stored = counts["rows"]
    report.srcs = counts["srcs"]
    report.verified, report.failed, report.unchecked = counts["verified"], counts["failed"], counts["unchecked"]
    report.invalid = counts["outcomes"].get("invalid", 0)
    report.invalid_examples = await store.invalid_examples(run.id)
    report.our_head = await label_log.head()
    report.seq_floor, report.seq_floor_advice = seq_floor_advice(report)
    report.seconds = round(time.monotonic() - report.started, 2)
    log.info("import.finished", source=base, mode=mode, written=report.written, stored=report.stored,
             verified=report.verified, failed=report.failed, seq_floor=report.seq_floor)
    return report


@asynccontextmanager
async def _clients(settings: Settings, client: httpx.AsyncClient | None, resolver: DidResolver | None,
                   verify: bool) -> AsyncIterator[tuple[httpx.AsyncClient, DidResolver | None]]:
    """The HTTP client for the source (the operator's choice of URL, so not vetted: an old labeler
    on a private network is a fair source) and a resolver over the vetted client for DID documents
    (a DID's document host is whoever the DID says)."""
    async with AsyncExitStack() as stack:
        if client is None:
            client = await stack.enter_async_context(httpx.AsyncClient(
                timeout=httpx.Timeout(30, connect=10), follow_redirects=True, headers={"user-agent": USER_AGENT}))
        if resolver is None and verify:
            vetted = await stack.enter_async_context(outbound_client(settings, timeout=10))
            resolver = DidResolver(vetted, settings.plc_url)
        yield client, (resolver if verify else None)


async def _retrying(ctx: _Ctx, what: str, op: Callable[[], Awaitable[Any]]) -> Any:
    """`op()`, retried with backoff on transport errors, 5xx and 429; SourceError when it keeps failing."""
    delay = ctx.retry_base
    for attempt in range(ctx.retries + 1):
        try:
            return await op()
        except _Transient as exc:
            if attempt == ctx.retries:
                raise SourceError(f"{what}: {exc}") from None
            log.warning("import.retry", what=what, error=str(exc)[:300], attempt=attempt + 1)
            await anyio.sleep(delay)
            delay = min(30.0, delay * 2)
    raise AssertionError("unreachable")


class _Transient(Exception):
    pass


# ----------------------------------------------------------------------------- queryLabels

async def _query_page(ctx: _Ctx, base: str, cursor: str | None) -> dict:
    params: list[tuple[str, str]] = [("uriPatterns", "*"), ("limit", str(ctx.limit))]
    if ctx.did:
        params.append(("sources", ctx.did))
    if cursor is not None:
        params.append(("cursor", cursor))

    async def get() -> dict:
        try:
            resp = await ctx.client.get(base + QUERY, params=params)
        except httpx.HTTPError as exc:
            raise _Transient(f"{type(exc).__name__}: {exc}") from None
        if resp.status_code >= 500 or resp.status_code == 429:
            raise _Transient(f"HTTP {resp.status_code}: {resp.text[:200]!r}")
        if resp.status_code != 200:
            raise SourceError(f"{base}{QUERY} answered HTTP {resp.status_code}: {resp.text[:300]!r}")
        try:
            body = resp.json()
        except ValueError:
            raise SourceError(f"{base}{QUERY} did not answer JSON: {resp.text[:200]!r}") from None
        if not isinstance(body, dict) or not isinstance(body.get("labels"), list):
            raise SourceError(f"{base}{QUERY} answered without a labels list: {resp.text[:200]!r}")
        if len(body["labels"]) > MAX_LABELS_PER_PAGE:
            raise SourceError(f"{base}{QUERY} answered {len(body['labels'])} labels for limit {ctx.limit}")
        return body

    return await _retrying(ctx, f"reading {base}{QUERY} (cursor {cursor})", get)


class _Prefetch:
    """One queryLabels page read in the background: the next page is on its way while this one is
    stored (the source answers on its own cores). Its error is raised by `result`, unwrapped."""

    def __init__(self, tg: anyio.abc.TaskGroup, ctx: _Ctx, base: str, cursor: str | None):
        self._done = anyio.Event()
        self._value: dict | None = None
        self._error: BaseException | None = None
        tg.start_soon(self._run, ctx, base, cursor)

    async def _run(self, ctx: _Ctx, base: str, cursor: str | None) -> None:
        try:
            self._value = await _query_page(ctx, base, cursor)
        except Exception as exc:  # noqa: BLE001 - handed to whoever waits for the page
            self._error = exc
        finally:
            self._done.set()

    async def result(self) -> dict:
        await self._done.wait()
        if self._error is not None:
            raise self._error
        assert self._value is not None
        return self._value


async def _read_query(ctx: _Ctx, base: str) -> str | None:
    """Page queryLabels from the saved cursor to the end; returns the last cursor the source gave.
    Each page is stored (with the cursor after it) in order; the next one is read meanwhile."""
    error: Exception | None = None
    async with anyio.create_task_group() as tg:
        try:
            last = await _read_query_pages(ctx, base, tg)
        except Exception as exc:  # raised below, outside the group (which would wrap it)
            error = exc
            tg.cancel_scope.cancel()  # a page still on its way
    if error is not None:
        raise error
    return last


async def _read_query_pages(ctx: _Ctx, base: str, tg: anyio.abc.TaskGroup) -> str | None:
    cursor = ctx.run.cursor
    report = ctx.report
    coming = _Prefetch(tg, ctx, base, cursor)
    while True:
        body = await coming.result()
        nxt = body.get("cursor")
        nxt = str(nxt) if isinstance(nxt, (str, int)) and not isinstance(nxt, bool) and str(nxt) != "" else None
        if nxt is not None and len(nxt) > MAX_CURSOR:
            raise SourceError(f"{base}{QUERY} answered a cursor of {len(nxt)} characters")
        last = nxt is None or not body["labels"] or nxt == cursor
        if not last:
            coming = _Prefetch(tg, ctx, base, nxt)  # on its way while this page is stored
        rows = await _rows(ctx, [(None, 0, i, d) for i, d in enumerate(body["labels"])])
        positions = len(body["labels"])
        # The cursor saved is the one after this page; on the last page (none given) the one that
        # asked for it, so the next run reads that page again (stored rows are not stored twice)
        # and then whatever the source labelled since.
        saved = nxt if nxt is not None else cursor
        high = int(nxt) if nxt is not None and nxt.isdigit() else None
        report.new += await ctx.store.save_page(ctx.run.id, rows, saved, high_seq=high, positions=positions)
        report.pages += 1
        if ctx.progress:
            ctx.progress(report)
        if last:
            if nxt is not None and nxt == cursor and body["labels"]:
                log.warning("import.cursor_stuck", cursor=cursor, hint="the source gave the same cursor again")
            ctx.last_page_rows = len(body["labels"])
            return nxt if nxt is not None else cursor
        cursor = nxt


async def _rows(ctx: _Ctx, items: list[tuple[int | None, int, int, Any]]) -> list:
    """(pos, sub, label, cts_key, verified) for the labels in `items` = (seq or None, frame index,
    page index, raw label); queryLabels rows get running positions after the import's last one."""
    report = ctx.report
    out = []
    for seq, sub, index, raw in items:
        report.read += 1
        try:
            label = parse_label(raw)
        except (ValueError, LabelError) as exc:
            report.malformed += 1
            log.warning("import.malformed_label", error=str(exc)[:200], label=str(raw)[:300])
            continue
        if ctx.did and label.src != ctx.did:
            report.other_src += 1
            continue
        pos = seq if seq is not None else ctx.positions + index
        out.append((pos, sub, label, cts_key(label.cts), await ctx.keys.verify(label)))
    if items and items[0][0] is None:
        ctx.positions += len(items)
    return out


# ----------------------------------------------------------------------------- subscribeLabels

def _decode_message(message: bytes | str) -> tuple[str, Any]:
    """('labels', (seq, [raw labels])), ('info', body), ('error', text) or ('other', t)."""
    if isinstance(message, str):  # plyr.fm's labeler: JSON text, no header
        try:
            body = json.loads(message)
        except ValueError:
            return "other", "a text message that is not JSON"
        if isinstance(body, dict) and "error" in body:
            return "error", f"{body.get('error')}: {body.get('message', '')}"
        if isinstance(body, dict) and isinstance(body.get("seq"), int) and isinstance(body.get("labels"), list):
            return "labels", (body["seq"], body["labels"])
        return "other", "a JSON message without seq and labels"
    try:
        header, body = libipld.decode_dag_cbor_multi(message)
    except Exception:  # noqa: BLE001 (libipld raises ValueError subclasses without a common base)
        return "other", "a binary message that is not DAG-CBOR"
    if not isinstance(header, dict) or not isinstance(body, dict):
        return "other", "a frame without header and body"
    if header.get("op") == -1:
        return "error", f"{body.get('error')}: {body.get('message', '')}"
    if header.get("t") == "#labels" and isinstance(body.get("seq"), int) and isinstance(body.get("labels"), list):
        return "labels", (body["seq"], body["labels"])
    if header.get("t") == "#info":
        return "info", body
    return "other", str(header.get("t"))


async def _read_stream(ctx: _Ctx, base: str, *, after: int, store_rows: bool,
                       deadline: float | None = None) -> int | None:
    """Read subscribeLabels after seq `after` until a connection brings nothing new for `idle` s.
    Stores the labels (`store_rows`) page by page; returns the highest seq seen (None: none)."""
    report = ctx.report
    high: int | None = after if after > 0 else None
    cursor = after
    failures = 0
    delay = ctx.retry_base
    while True:
        url = f"{_ws_base(base)}{SUBSCRIBE}?cursor={cursor}"
        got = 0
        batch: list[tuple[int | None, int, int, Any]] = []

        async def flush() -> None:
            nonlocal batch
            if batch and store_rows:
                upto = batch[-1][0]  # the seq of the last label in the batch: the cursor to resume after
                rows = await _rows(ctx, batch)
                report.new += await ctx.store.save_page(ctx.run.id, rows, str(upto), high_seq=upto)
                report.pages += 1
                if ctx.progress:
                    ctx.progress(report)
            batch = []

        try:
            async with connect(url, max_size=16 * 1024 * 1024, compression=None, open_timeout=15,
                               user_agent_header=USER_AGENT) as ws:
                failures, delay = 0, ctx.retry_base
                while True:
                    if deadline is not None and time.monotonic() > deadline:
                        await flush()
                        return high
                    try:
                        with anyio.fail_after(ctx.idle):
                            message = await ws.recv()
                    except TimeoutError:
                        break
                    kind, body = _decode_message(message)
                    if kind == "error":
                        await flush()
                        hint = (" (the source's head is below the cursor saved here: was its database reset?"
                                " --restart reads it from the start)" if "FutureCursor" in str(body) else "")
                        raise SourceError(f"{url} sent an error: {body}{hint}")
                    if kind == "info":
                        log.warning("import.stream_info", info=body)
                        continue
                    if kind != "labels":
                        log.warning("import.stream_ignored", what=body)
                        continue
                    seq, labels = body
                    if seq <= cursor:
                        continue  # a rewind (plyr.fm's consumer-style replays) or a repeat
                    got += 1
                    cursor = seq
                    high = seq if high is None else max(high, seq)
                    if store_rows:
                        batch.extend((seq, i, 0, d) for i, d in enumerate(labels))
                        if len(batch) >= STREAM_PAGE:
                            await flush()
                await flush()
        except websockets.ConnectionClosed:
            await flush()  # the labels received are good: reconnect from the last one, unless it sent none
        except (OSError, websockets.InvalidHandshake, websockets.InvalidURI, TimeoutError) as exc:
            await flush()
            failures += 1
            if failures > ctx.retries:
                raise SourceError(f"cannot read {url}: {type(exc).__name__}: {exc}") from None
            log.warning("import.stream_retry", url=url, error=str(exc)[:300], attempt=failures)
            await anyio.sleep(delay)
            delay = min(30.0, delay * 2)
            continue
        if got == 0:
            return high


async def _learn_head(ctx: _Ctx, base: str, last_cursor: str | None) -> None:
    """After queryLabels: the source's head seq from its stream (read from the last cursor on, so
    only what came after it), else a lower bound from the cursors."""
    report = ctx.report
    start = int(last_cursor) if last_cursor is not None and last_cursor.isdigit() else 0
    try:
        head = await _read_stream(ctx, base, after=start, store_rows=False, deadline=time.monotonic() + 60)
    except SourceError as exc:
        log.warning("import.head_unknown", error=str(exc)[:300],
                    hint="the source's stream did not answer: the seq floor is estimated from queryLabels cursors")
        head = None
    if head is not None:
        report.source_head, report.source_head_exact = head, True
        return
    # A lower bound: the last cursor is a seq, and the last page's rows came after it.
    if last_cursor is not None and last_cursor.isdigit():
        report.source_head = int(last_cursor) + ctx.last_page_rows
    elif ctx.run.high_seq is None:
        report.source_head = ctx.last_page_rows or None


# ----------------------------------------------------------------------------- applying

def decision_note(source: str, label: Label, our_src: str, our_key: str, verified: bool | None,
                  their_key: str | None) -> str:
    if label.src == our_src and verified and their_key == our_key:
        signed = f"signed by our own key {our_key}"
    else:
        signed = f"re-signed by {our_key}"
    check = (f"their signature verified with {their_key}" if verified
             else f"their signature did NOT verify with {their_key}" if verified is False
             else "their signature not checked (no key for their DID)")
    return f"imported from {source} (src {label.src}, their cts kept, {signed}); {check}"


async def _apply(ctx: _Ctx, label_log: LabelLog) -> None:
    report = ctx.report
    total = await ctx.store.pending_count(ctx.run.id)
    done = 0
    our_key = label_log.key.did_key
    while True:
        rows = await ctx.store.pending(ctx.run.id, APPLY_BATCH)
        if not rows:
            return
        requests: list[EmitRequest] = []
        kept: list[ImportRow] = []
        invalid: list[tuple[bytes, str, None]] = []
        for row in rows:
            lab = row.label
            try:
                validate_label_fields(lab.uri, lab.val, lab.cid, lab.exp)
            except LabelError as exc:
                invalid.append((row.ident, f"invalid: {exc}"[:500], None))
                continue
            requests.append(EmitRequest(lab.uri, lab.val, lab.cid, lab.neg, lab.exp, cts=lab.cts))
            kept.append(row)

        async def also(dw: DecisionWriter, written, kept=kept, invalid=invalid) -> None:
            by_key = {(s.label.uri, s.label.val, s.label.neg, s.label.cts): s for s in written}
            outcomes: list[tuple[bytes, str, int | None]] = list(invalid)
            decisions = []
            for row in kept:
                lab = row.label
                s = by_key.pop((lab.uri, lab.val, lab.neg, lab.cts), None)
                if s is None:
                    outcomes.append((row.ident, "unchanged", None))
                    continue
                outcomes.append((row.ident, "written", s.seq))
                their_key = report.keys.get(lab.src)
                decisions.append(DecisionRow(
                    lab.uri, lab.cid, "negate" if lab.neg else "label", lab.val, origin="import", rule="import",
                    evidence=[{"scanner": "import", "kind": "imported-label", "score": None, "value": lab.val,
                               "evidence": {"source": report.source, "src": lab.src, "cts": lab.cts,
                                            "source_pos": row.pos, "sig_verified": row.verified,
                                            "source_key": their_key}}],
                    label_seq=s.seq, actor="import",
                    reason=decision_note(report.source, lab, label_log.src, our_key, row.verified, their_key),
                ))
            await dw.write(decisions)
            await dw.imports.mark(ctx.run.id, outcomes)

        written = await label_log.emit_many(requests, also=also)
        report.written += len(written)
        report.negations += sum(s.label.neg for s in written)
        report.labels += sum(not s.label.neg for s in written)
        report.unchanged += len(kept) - len(written)
        done += len(rows)
        if ctx.progress:
            report.phase = f"apply {done}/{total}"
            ctx.progress(report)


async def _check_state(ctx: _Ctx, label_log: LabelLog) -> None:
    """Compare, per (uri, val), the source's last word (by cts, then source order) with what is in
    force in our log now; and count where the source's own order (by seq) would say otherwise.
    Subjects are checked a thousand at a time, with one read of what is in force on their uris."""
    report = ctx.report
    now = datetime.now(UTC)
    groups: list[list[ImportRow]] = []
    group: list[ImportRow] = []

    async def check(groups: list[list[ImportRow]]) -> None:
        in_force = await label_log.in_force_many(list(dict.fromkeys(rows[0].label.uri for rows in groups)))
        ours_by_uri = {uri: {x.val for x in labels} for uri, labels in in_force.items()}
        for rows in groups:
            by_cts = max(rows, key=lambda r: (r.cts_key, r.pos, r.sub))
            by_source = max(rows, key=lambda r: (r.pos, r.sub))
            lab = by_cts.label
            report.subjects += 1
            if by_source.label.neg != lab.neg:
                report.order_disagreements += 1
                if len(report.disagreement_examples) < 10:
                    report.disagreement_examples.append({
                        "uri": lab.uri, "val": lab.val, "by_cts": "negated" if lab.neg else "labelled",
                        "by_source_order": "negated" if by_source.label.neg else "labelled"})
            ours = lab.val in ours_by_uri[lab.uri]
            report.in_force += ours
            theirs = lab.in_force_at(now)
            if ours != theirs:
                report.state_differs += 1
                if len(report.state_examples) < 10:
                    report.state_examples.append({"uri": lab.uri, "val": lab.val, "source": theirs, "ours": ours})

    async for row in ctx.store.by_subject(ctx.run.id):
        if group and (group[0].label.uri, group[0].label.val) != (row.label.uri, row.label.val):
            groups.append(group)
            group = []
            if len(groups) >= 1000:
                await check(groups)
                groups = []
        group.append(row)
    if group:
        groups.append(group)
    if groups:
        await check(groups)
    if report.order_disagreements:
        log.warning("import.order_disagreements", count=report.order_disagreements,
                    hint="these (uri, val) end differently by cts than by the source's own order (seq);"
                         " the import follows cts", examples=report.disagreement_examples[:3])


# ----------------------------------------------------------------------------- seq floor

def seq_floor_advice(report: ImportReport) -> tuple[int | None, str]:
    """N for `firehose-mod label seq-floor N`, and why: above every cursor the source gave out,
    with room for what it labels until the switch, rounded up to a thousand."""
    head = report.source_head
    if head is None or head <= 0:
        return None, ("the source's highest seq is unknown (its stream did not answer and queryLabels gave no"
                      " cursor): ask its operator for its head seq, then run `firehose-mod label seq-floor N`"
                      " with N above it")
    margin = max(1000, head // 10)
    floor = int(math.ceil((head + margin) / 1000.0) * 1000)
    bound = "" if report.source_head_exact else " at least"
    if report.our_head >= floor:
        return None, (f"no seq floor needed: our head seq {report.our_head} is already above the source's"
                      f"{bound} {head} (plus margin); its consumers' cursors stay below our new labels")
    return floor, (f"the source's highest seq is{bound} {head}; its consumers hold cursors up to it. Before"
                   f" they switch to this labeler, run: firehose-mod label seq-floor {floor}  (our next label"
                   f" gets seq {floor + 1}: above every cursor they hold, with {floor - head} to spare for labels"
                   f" the old labeler issues until the switch; our log so far, seq 1..{report.our_head}, stays"
                   " below it, so those consumers do not replay the imported labels they already have)")
