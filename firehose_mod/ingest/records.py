"""XRPC reads for backfill: listRecords pages decoded into typed events (pure), and
JSON GETs with a clear error and a retry policy for transient failures. The client is a vetted
one (`netguard.outbound_client`): a PDS endpoint comes from a stranger's DID document."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import urlsplit, urlunsplit

import anyio
import httpx
import structlog

from firehose_mod.ingest.events import TRACK_COLLECTION, DeadLetter, TrackEvent
from firehose_mod.ingest.lexicon import MAX_RECORD_BYTES, blocking_problems
from firehose_mod.ingest.reconnect import Backoff
from firehose_mod.ingest.resolve import ResolveError
from firehose_mod.scan.netguard import UnsafeAddress
from firehose_mod.syntax import is_rkey

log = structlog.get_logger(__name__)

SOURCE = "backfill"
T = TypeVar("T")


class FetchError(Exception):
    """An XRPC call that failed; `transient` means a retry may succeed; `status` is the HTTP
    status when the server answered."""

    def __init__(self, message: str, *, transient: bool = False, status: int | None = None):
        super().__init__(message)
        self.transient = transient
        self.status = status


@dataclass(frozen=True, slots=True)
class RecordsPage:
    events: list[TrackEvent]
    dead: list[DeadLetter]
    cursor: str | None
    count: int  # items listed on the page


def _dead(reason: str, detail: str, did: str, item: object, uri: str | None = None) -> DeadLetter:
    raw = json.dumps(item, separators=(",", ":"), default=str).encode()[:4096]
    return DeadLetter(reason, detail, did=did, uri=uri, raw=raw, source=SOURCE)


def decode_record(did: str, item: object) -> TrackEvent | DeadLetter:
    """One listRecords item of repo `did` as a backfill TrackEvent, or a dead letter saying why not."""
    if not isinstance(item, dict):
        return _dead("malformed_record", f"listRecords item is a {type(item).__name__}, not an object", did, item)
    uri, cid, value = item.get("uri"), item.get("cid"), item.get("value")
    parts = uri[5:].split("/") if isinstance(uri, str) and uri.startswith("at://") else []
    if len(parts) != 3:
        return _dead("malformed_record", f"not an at:// record URI: {str(uri)[:200]!r}", did, item)
    repo, collection, rkey = parts
    if repo != did:
        return _dead("repo_mismatch", f"record {uri[:300]} listed in repo {did}", did, item, uri)
    if collection != TRACK_COLLECTION:
        return _dead("malformed_record", f"record of {collection[:100]!r} listed for {TRACK_COLLECTION}", did, item,
                      uri)
    if not is_rkey(rkey):
        return _dead("malformed_record", f"invalid rkey {rkey[:100]!r}", did, item, uri)
    if not isinstance(cid, str) or not cid:
        return _dead("malformed_record", "record without a cid", did, item, uri)
    size = len(json.dumps(value, separators=(",", ":"), default=str))
    if size > MAX_RECORD_BYTES:
        return _dead("oversized_record", f"{size} bytes", did, {"uri": uri, "cid": cid}, uri)
    problems = blocking_problems(value)
    if problems:
        return _dead("lexicon", "; ".join(problems), did, item, uri)
    return TrackEvent(did, TRACK_COLLECTION, rkey, "create", cid, value, 0, "", SOURCE)


def decode_records_page(did: str, body: object, where: str = "PDS") -> RecordsPage:
    """A listRecords response body; a body that is not one raises FetchError (not transient)."""
    records = body.get("records") if isinstance(body, dict) else None
    cursor = body.get("cursor") if isinstance(body, dict) else None
    if not isinstance(records, list) or not (cursor is None or isinstance(cursor, str)):
        raise FetchError(f"malformed listRecords response from {where}: expected {{records: [...], cursor?: string}}")
    page = RecordsPage([], [], cursor or None, len(records))
    for item in records:
        out = decode_record(did, item)
        (page.events if isinstance(out, TrackEvent) else page.dead).append(out)
    return page


# -- HTTP -----------------------------------------------------------------------------------


async def get_json(client: httpx.AsyncClient, url: str, params: dict, what: str) -> dict:
    """GET an XRPC query; errors say what was asked of whom, and whether a retry may help."""
    try:
        resp = await client.get(url, params=params)
    except httpx.InvalidURL as exc:
        raise FetchError(f"{what}: invalid URL {url[:200]!r}: {exc}") from None
    except UnsafeAddress as exc:  # refused before connecting: permanent, and nothing was read
        raise FetchError(f"{what}: {url[:200]}: {exc}"[:500]) from None
    except httpx.HTTPError as exc:
        raise FetchError(f"{what}: cannot reach {url}: {type(exc).__name__}: {exc}"[:500], transient=True) from None
    if resp.status_code != 200:
        detail = ""
        try:
            err = resp.json()
            if isinstance(err, dict):
                detail = f": {err.get('error', '')} {err.get('message', '')}".rstrip()
        except ValueError:
            pass
        # 501 Not Implemented is the server's settled answer (an XRPC method it does not have).
        transient = (resp.status_code >= 500 and resp.status_code != 501) or resp.status_code in (408, 429)
        raise FetchError(f"{what}: {url} answered HTTP {resp.status_code}{detail[:300]}", transient=transient,
                         status=resp.status_code)
    try:
        body = resp.json()
    except ValueError:
        raise FetchError(f"{what}: {url} did not answer JSON", transient=True) from None
    if not isinstance(body, dict):
        raise FetchError(f"{what}: {url} answered JSON that is not an object", transient=True)
    return body


async def retrying(what: str, call: Callable[[], Awaitable[T]], *, attempts: int, base: float) -> T:
    """Run `call`, retrying transient FetchError/ResolveError with capped jittered backoff."""
    backoff = Backoff(base=base, cap=max(base, 30.0))
    for attempt in range(1, attempts + 1):
        try:
            return await call()
        except (FetchError, ResolveError) as exc:
            if not exc.transient:
                raise
            if attempt == attempts:
                raise type(exc)(f"{exc} (gave up after {attempts} attempts)", transient=True) from None
            delay = backoff.delay()
            log.warning("backfill.retry", what=what, attempt=attempt, error=str(exc)[:300], in_seconds=round(delay, 2))
            await anyio.sleep(delay)
    raise AssertionError("unreachable")


def _http_base(url: str) -> str:
    parts = urlsplit(url.rstrip("/"))
    scheme = {"wss": "https", "ws": "http"}.get(parts.scheme, parts.scheme)
    if scheme not in ("https", "http") or not parts.netloc:
        raise ValueError(f"relay URL {url!r}: expected https://HOST (e.g. https://relay1.us-east.bsky.network)")
    return urlunsplit((scheme, parts.netloc, parts.path, "", ""))
