"""Jetstream (v1 `/subscribe` wire format): JSON events, optionally zstd with Jetstream's dictionary.

`decode_jetstream` is pure: one frame in, a `Decoded` out. Upstream data is user input:
a frame that cannot be used becomes a dead letter with its reason, never an exception.
Frames of collections we do not watch are skipped before JSON parsing (the cursor is
read from the raw bytes), which is what keeps a full-network stream cheap.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from importlib import resources
from urllib.parse import urlencode

import libipld
import zstandard

from firehose_mod.ingest.events import TRACK_COLLECTION, Decoded, DeadLetter, RepoEvent, TrackEvent
from firehose_mod.ingest.filters import Collections
from firehose_mod.ingest.lexicon import MAX_RECORD_BYTES, blocking_problems
from firehose_mod.ingest.source import WebSocketSource
from firehose_mod.syntax import is_did, is_rkey

SOURCE = "jetstream"
MAX_FRAME_BYTES = 2 * 1024 * 1024
_TIME_US = re.compile(rb'"time_us"\s*:\s*(\d{1,20})')


def zstd_dictionary() -> zstandard.ZstdCompressionDict:
    """Jetstream's published v1 dictionary (dict ID 1612007021), shipped with this package."""
    data = resources.files("firehose_mod.ingest").joinpath("jetstream-v1.zdict").read_bytes()
    return zstandard.ZstdCompressionDict(data)


class Decompressor:
    """Decompresses `compress=true` frames (one zstd frame per message, Jetstream's dictionary).

    The output is bounded by our own limit, whatever the frame's header declares: a frame
    declaring 4 GiB must not make us allocate 4 GiB. Frames that declare a size within the
    limit take the fast one-shot path (zstd then refuses to write past the declared size);
    frames that declare nothing are streamed and cut at the limit. Over the limit, the
    result is longer than `MAX_FRAME_BYTES`, which the decoder turns into a dead letter.
    """

    def __init__(self, limit: int = MAX_FRAME_BYTES) -> None:
        self._d = zstandard.ZstdDecompressor(dict_data=zstd_dictionary())
        self.limit = limit

    def __call__(self, data: bytes) -> bytes:
        declared = zstandard.frame_content_size(data)  # -1: not declared
        if declared > self.limit:
            raise Oversized(f"the zstd frame declares {declared} bytes > {self.limit}")
        if declared >= 0:
            return self._d.decompress(data)
        with self._d.stream_reader(data) as reader:
            return reader.read(self.limit + 1)


class Oversized(ValueError):
    """A compressed frame that would decompress past our limit."""


def _dead(reason: str, detail: str, raw: bytes | str, cursor: int | None = None, **kw) -> Decoded:
    raw_b = raw.encode() if isinstance(raw, str) else raw
    return Decoded(cursor=cursor, dead=[DeadLetter(reason, detail, cursor=cursor, raw=raw_b[:4096], source=SOURCE, **kw)])


def decode_jetstream(
    frame: bytes | str, collections: Collections, *, decompress: Decompressor | None = None,
    watched_dids: set[str] | frozenset[str] = frozenset(),
) -> Decoded:
    """Decode one Jetstream message. Identity/account events are kept for `watched_dids` only."""
    if isinstance(frame, bytes) and decompress is not None:
        try:
            raw = decompress(frame)
        except Oversized as exc:
            return _dead("oversized", str(exc), frame)
        except zstandard.ZstdError as exc:
            return _dead("bad_compression", f"zstd: {exc}", frame)
    else:
        raw = frame.encode() if isinstance(frame, str) else frame
    if len(raw) > MAX_FRAME_BYTES:
        m = _TIME_US.search(raw[:4096]) or _TIME_US.search(raw)
        return _dead("oversized", f"{len(raw)} bytes > {MAX_FRAME_BYTES}", raw[:4096], int(m.group(1)) if m else None)
    m = _TIME_US.search(raw)
    if m is not None and not _could_matter(raw, collections, watched_dids):
        return Decoded(cursor=int(m.group(1)), skipped=1)
    try:
        event = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        return _dead("malformed_json", str(exc)[:200], raw, int(m.group(1)) if m else None)
    if not isinstance(event, dict):
        return _dead("malformed_event", "not a JSON object", raw)
    time_us = event.get("time_us")
    if isinstance(time_us, bool) or not isinstance(time_us, int) or time_us <= 0:
        return _dead("malformed_event", f"time_us missing or not a positive integer: {str(time_us)[:40]}", raw)
    did = event.get("did")
    if not is_did(did):
        return _dead("malformed_event", f"did missing or invalid: {str(did)[:80]}", raw, time_us)
    kind = event.get("kind")
    if kind == "commit":
        return _decode_commit(event, did, time_us, raw, collections)
    if kind in ("identity", "account"):
        if did not in watched_dids:
            return Decoded(cursor=time_us, skipped=1)
        body = event.get(kind)
        if not isinstance(body, dict):
            return _dead("malformed_event", f"{kind} event without a {kind} object", raw, time_us, did=did)
        active = body.get("active") if isinstance(body.get("active"), bool) else None
        status = body.get("status") if isinstance(body.get("status"), str) else None
        handle = body.get("handle") if isinstance(body.get("handle"), str) else None
        return Decoded(cursor=time_us, events=[RepoEvent(did, kind, time_us, active, status, handle, SOURCE)])
    return Decoded(cursor=time_us, skipped=1)  # kinds added after v1 are not ours to judge


def _valid_cid(cid: str) -> bool:
    if len(cid) > 256:
        return False
    try:
        libipld.decode_cid(cid)
    except Exception:  # libipld raises ValueError subclasses without a common base
        return False
    return True


def _could_matter(raw: bytes, collections: Collections, watched_dids) -> bool:
    """Cheap pre-filter on the raw bytes: False only when the event is surely irrelevant."""
    if b'"kind":"commit"' in raw or b'"kind": "commit"' in raw:
        return any(c.encode() in raw for c in collections.exact) or any(p.encode() in raw for p in collections.prefixes)
    return bool(watched_dids)


def _decode_commit(event: dict, did: str, time_us: int, raw: bytes, collections: Collections) -> Decoded:
    commit = event.get("commit")
    if not isinstance(commit, dict):
        return _dead("malformed_event", "commit event without a commit object", raw, time_us, did=did)
    collection, rkey, op = commit.get("collection"), commit.get("rkey"), commit.get("operation")
    if not isinstance(collection, str) or not collections.matches(collection):
        return Decoded(cursor=time_us, skipped=1)
    if collection != TRACK_COLLECTION:
        return Decoded(cursor=time_us, skipped=1)  # other fm.plyr.* records: nothing to scan yet
    # The lexicon declares `key: tid`; any valid record key is taken, as plyr.fm's indexer takes
    # it, so that a record plyr.fm shows cannot escape scanning by its key.
    if not is_rkey(rkey):
        return _dead("malformed_event", f"invalid rkey {str(rkey)[:80]!r}", raw, time_us, did=did)
    uri = f"at://{did}/{collection}/{rkey}"
    rev = commit.get("rev") if isinstance(commit.get("rev"), str) else ""
    if op == "delete":
        return Decoded(cursor=time_us, events=[TrackEvent(did, collection, rkey, "delete", None, None, time_us, rev, SOURCE)])
    if op not in ("create", "update"):
        return _dead("malformed_event", f"unknown operation {str(op)[:40]!r}", raw, time_us, did=did, uri=uri)
    record, cid = commit.get("record"), commit.get("cid")
    if not isinstance(cid, str) or not cid:
        return _dead("malformed_event", f"{op} without a cid", raw, time_us, did=did, uri=uri)
    if not _valid_cid(cid):
        return _dead("malformed_event", f"{op} with an invalid cid {cid[:80]!r}", raw, time_us, did=did, uri=uri)
    if len(raw) > MAX_RECORD_BYTES:
        return _dead("oversized_record", f"{len(raw)} bytes", raw, time_us, did=did, uri=uri)
    problems = blocking_problems(record)
    if problems:
        return _dead("lexicon", "; ".join(problems), raw, time_us, did=did, uri=uri)
    return Decoded(cursor=time_us, events=[TrackEvent(did, collection, rkey, op, cid, record, time_us, rev, SOURCE)])


class JetstreamSource(WebSocketSource):
    """Follows Jetstream endpoints in turn (see `WebSocketSource`), optionally zstd-compressed.

    Jetstream's time_us cursors are not unique per event, so a reconnect resumes `rewind`
    microseconds (5 s) before the last cursor handed to the sink, and the store's idempotence
    drops what is repeated (dead letters included).
    """

    name = SOURCE
    rewind = 5_000_000  # µs

    def __init__(self, endpoints: Sequence[str], collections: Collections, *, compress: bool = False,
                 **options) -> None:
        super().__init__(endpoints, collections, **options)
        self.compress = compress
        self._decompress = Decompressor() if compress else None

    def url(self, endpoint: str, cursor: int | None) -> str:
        params = [("wantedCollections", c) for c in self.collections.query_values()]
        if self.compress:
            params.append(("compress", "true"))
        if cursor is not None:
            params.append(("cursor", str(cursor)))
        base = endpoint.rstrip("/")
        if not base.endswith("/subscribe"):
            base += "/subscribe"
        return f"{base}?{urlencode(params)}"

    def decode(self, frame: bytes | str) -> Decoded:
        return decode_jetstream(frame, self.collections, decompress=self._decompress, watched_dids=self.watched_dids)
