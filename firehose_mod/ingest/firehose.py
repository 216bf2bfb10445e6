"""Relay firehose (`com.atproto.sync.subscribeRepos`): DAG-CBOR frames with CAR-packed records.

`decode_firehose_frame` is pure: one binary frame in, a `Decoded` out. Upstream data is user
input: a frame that cannot be used becomes a dead letter with its reason, never an exception.
A `#commit` is filtered on its ops' paths before its CAR is touched, which is what keeps a
full-network stream cheap; only the blocks of matching ops are decoded.

Records are returned in the JSON form of the atproto data model (what Jetstream sends and
what `validate_track` and `json.dumps` expect): CID links become `{"$link": "bafy..."}` and
byte strings `{"$bytes": base64}`. libipld decodes both links and byte strings to plain
`bytes`, so records are converted from their raw block bytes by a small walker that sees the
CBOR tag 42 (after libipld has checked the block is strict DAG-CBOR).

`FirehoseSource` moves frames from a list of relay endpoints to a sink, one `Decoded` per
frame, in order; it reconnects with `Backoff`, fails over to the next endpoint and resumes
from the last seq handed to the sink. With a `CommitVerifier` it also checks the repo
owner's signature on commits that carry watched ops (see `verify.py`);
`decode_firehose_frame_with_proof` hands it what it needs, for those frames only.
"""

from __future__ import annotations

import hashlib
import re
import struct
from collections.abc import Awaitable, Callable, Sequence
from typing import Any
from urllib.parse import urlencode

import anyio
import libipld
import structlog
import websockets
from websockets.asyncio.client import connect as ws_connect

from firehose_mod.ingest.events import TRACK_COLLECTION, Decoded, DeadLetter, RepoEvent, TrackEvent, undecodable
from firehose_mod.ingest.car import dag_cbor_to_json, read_car_blocks
from firehose_mod.ingest.filters import Collections
from firehose_mod.ingest.lexicon import MAX_RECORD_BYTES, validate_track
from firehose_mod.ingest.reconnect import Backoff, read_deadline
from firehose_mod.ingest.resolve import ResolveError
from firehose_mod.ingest.verify import CommitProof, CommitVerifier

SOURCE = "firehose"
MAX_FRAME_BYTES = 5 * 1024 * 1024
SUBSCRIBE_PATH = "/xrpc/com.atproto.sync.subscribeRepos"
_RKEY_RE = re.compile(r"^[A-Za-z0-9._:~-]{1,512}$")
_DID_RE = re.compile(r"^did:[a-z]+:[A-Za-z0-9._:%-]{1,2048}$")
_SHA2_256 = 0x12

log = structlog.get_logger(__name__)


# --------------------------------------------------------------------------- decoding


def _dead(reason: str, detail: str, raw: bytes, cursor: int | None = None, **kw) -> DeadLetter:
    return DeadLetter(reason, detail, cursor=cursor, raw=raw[:4096], source=SOURCE, **kw)


def _dead_frame(reason: str, detail: str, raw: bytes, cursor: int | None = None, **kw) -> Decoded:
    return Decoded(cursor=cursor, dead=[_dead(reason, detail, raw, cursor, **kw)])


def _seq(body: dict) -> int | None:
    seq = body.get("seq")
    if isinstance(seq, bool) or not isinstance(seq, int) or seq <= 0:
        return None
    return seq


def decode_firehose_frame(
    frame: bytes, collections: Collections, *, watched_dids: set[str] | frozenset[str] = frozenset(),
) -> Decoded:
    """Decode one subscribeRepos frame. Identity/account events are kept for `watched_dids` only.

    An error frame (`op: -1`) yields a dead letter with reason `error_frame` and no cursor.
    """
    return decode_firehose_frame_with_proof(frame, collections, watched_dids=watched_dids)[0]


def decode_firehose_frame_with_proof(
    frame: bytes, collections: Collections, *, watched_dids: set[str] | frozenset[str] = frozenset(),
) -> tuple[Decoded, CommitProof | None]:
    """`decode_firehose_frame`, plus what a `CommitVerifier` needs to check the commit behind
    the frame's `TrackEvent`s. The proof is None for every frame without track events, so
    unrelated frames cost nothing more. Pure."""
    decoded = _decode_frame(frame, collections, watched_dids)
    if isinstance(decoded, tuple):
        return decoded
    return decoded, None


def _decode_frame(frame, collections: Collections, watched_dids) -> Decoded | tuple[Decoded, CommitProof | None]:
    if not isinstance(frame, (bytes, bytearray, memoryview)):
        return _dead_frame("malformed_event", f"expected a binary frame, got {type(frame).__name__}",
                           str(frame).encode(errors="replace"))
    frame = bytes(frame)
    if len(frame) > MAX_FRAME_BYTES:
        return _dead_frame("oversized", f"{len(frame)} bytes > {MAX_FRAME_BYTES}", frame)
    try:
        parts = libipld.decode_dag_cbor_multi(frame)
    except (ValueError, RecursionError, TypeError, OverflowError) as exc:
        return _dead_frame("malformed_cbor", str(exc)[:200], frame)
    if len(parts) != 2 or not isinstance(parts[0], dict) or not isinstance(parts[1], dict):
        return _dead_frame("malformed_event", f"expected a header map and a body map, got {len(parts)} item(s)", frame)
    header, body = parts
    op = header.get("op")
    if op == -1:
        error, message = body.get("error"), body.get("message")
        detail = str(error)[:100] if isinstance(error, str) else "error frame without an error name"
        if isinstance(message, str) and message:
            detail += f": {message[:300]}"
        return _dead_frame("error_frame", detail, frame)
    if op != 1 or isinstance(op, bool):
        return _dead_frame("malformed_event", f"unknown header op {str(op)[:20]!r}", frame)
    t = header.get("t")
    if not isinstance(t, str):
        return _dead_frame("malformed_event", "header without a message type", frame)
    kind = t.rsplit("#", 1)[-1]
    seq = _seq(body)
    if kind in ("commit", "identity", "account") and seq is None:
        return _dead_frame("malformed_event", f"#{kind} without a positive integer seq: {str(body.get('seq'))[:40]}", frame)
    if kind == "commit":
        return _decode_commit(body, seq, frame, collections)  # (Decoded, proof)
    if kind in ("identity", "account"):
        did = body.get("did")
        if not isinstance(did, str) or not _DID_RE.match(did):
            return _dead_frame("malformed_event", f"did missing or invalid: {str(did)[:80]}", frame, seq)
        if did not in watched_dids:
            return Decoded(cursor=seq, skipped=1)
        active = body.get("active") if isinstance(body.get("active"), bool) else None
        status = body.get("status") if isinstance(body.get("status"), str) else None
        handle = body.get("handle") if isinstance(body.get("handle"), str) else None
        return Decoded(cursor=seq, events=[RepoEvent(did, kind, seq, active, status, handle, SOURCE)])
    # #sync, #info and types added later are not ours to judge; #info has no seq.
    return Decoded(cursor=seq, skipped=1)


def _decode_commit(body: dict, seq: int, frame: bytes, collections: Collections) -> tuple[Decoded, CommitProof | None]:
    did, ops = body.get("repo"), body.get("ops")
    if not isinstance(did, str) or not _DID_RE.match(did):
        return _dead_frame("malformed_event", f"repo missing or invalid: {str(did)[:80]}", frame, seq), None
    if not isinstance(ops, list):
        return _dead_frame("malformed_event", "commit without an ops list", frame, seq, did=did), None
    out = Decoded(cursor=seq)
    wanted: list[tuple[str, str, str, Any]] = []
    # Cheap filter first: paths only, the CAR is not touched unless an op is ours.
    for op in ops:
        path = op.get("path") if isinstance(op, dict) else None
        if not isinstance(path, str) or "/" not in path:
            out.dead.append(_dead("malformed_event", f"op without a collection/rkey path: {str(path)[:80]}",
                                  frame, seq, did=did))
            continue
        collection, rkey = path.split("/", 1)
        if not collections.matches(collection) or collection != TRACK_COLLECTION:
            out.skipped += 1  # other fm.plyr.* records: nothing to scan yet
            continue
        uri = f"at://{did}/{collection}/{rkey}"
        if not _RKEY_RE.match(rkey):
            out.dead.append(_dead("malformed_event", f"invalid rkey {rkey[:80]!r}", frame, seq, did=did))
            continue
        action = op.get("action")
        if action not in ("create", "update", "delete"):
            out.dead.append(_dead("malformed_event", f"unknown action {str(action)[:40]!r}", frame, seq, did=did, uri=uri))
            continue
        wanted.append((collection, rkey, action, op.get("cid")))
    if not wanted:
        if not ops:
            out.skipped = 1  # an empty commit: nothing for us
        return out, None
    rev = body.get("rev") if isinstance(body.get("rev"), str) else ""
    blocks: dict[bytes, bytes] | None = None
    car_error: str | None = None
    proved: list[tuple[str, bytes | None]] = []  # (path, record CID or None) of each event
    for collection, rkey, action, cid in wanted:
        uri = f"at://{did}/{collection}/{rkey}"
        if action == "delete":
            out.events.append(TrackEvent(did, collection, rkey, "delete", None, None, seq, rev, SOURCE))
            proved.append((f"{collection}/{rkey}", None))
            continue
        try:
            cid_str = libipld.encode_cid(cid) if isinstance(cid, bytes) else None
        except ValueError:
            cid_str = None
        if cid_str is None:
            out.dead.append(_dead("malformed_event", f"{action} without a valid cid", frame, seq, did=did, uri=uri))
            continue
        if blocks is None and car_error is None:
            car = body.get("blocks")
            try:
                if not isinstance(car, bytes):
                    raise ValueError("blocks is not a byte string")
                blocks = read_car_blocks(car) if car else {}  # tooBig commits may carry none
            except (ValueError, IndexError, RecursionError) as exc:
                car_error = f"unreadable CAR: {exc}"[:200]
        if car_error is not None or blocks is None:
            out.dead.append(_dead("malformed_cbor", car_error or "no CAR", frame, seq, did=did, uri=uri))
            continue
        block = blocks.get(cid)
        if block is None:
            detail = f"record block {cid_str} not in the commit's CAR"
            if body.get("tooBig") is True:
                detail += " (tooBig commit: fetch the record from the PDS)"
            out.dead.append(_dead("missing_block", detail, frame, seq, did=did, uri=uri))
            continue
        if not _block_matches(cid, block):
            out.dead.append(_dead("block_hash_mismatch", f"block bytes do not hash to {cid_str}", block, seq, did=did, uri=uri))
            continue
        if len(block) > MAX_RECORD_BYTES:
            out.dead.append(_dead("oversized_record", f"{len(block)} bytes", block, seq, did=did, uri=uri))
            continue
        try:
            libipld.decode_dag_cbor(block)  # strictness (canonical DAG-CBOR, no trailing bytes)
            record = dag_cbor_to_json(block)
        except (ValueError, RecursionError, TypeError, OverflowError, IndexError, struct.error) as exc:
            out.dead.append(_dead("malformed_cbor", f"record block: {exc}"[:200], block, seq, did=did, uri=uri))
            continue
        problems = validate_track(record)
        if problems:
            out.dead.append(_dead("lexicon", "; ".join(problems), block, seq, did=did, uri=uri))
            continue
        out.events.append(TrackEvent(did, collection, rkey, action, cid_str, record, seq, rev, SOURCE))
        proved.append((f"{collection}/{rkey}", cid))
    if not out.events:
        return out, None
    if blocks is None:  # deletes only: the CAR was not needed until now
        try:
            car = body.get("blocks")
            blocks = read_car_blocks(car) if isinstance(car, bytes) and car else {}
        except (ValueError, IndexError, RecursionError):
            blocks = {}  # the verifier reports the missing commit block
    commit = body.get("commit")
    return out, CommitProof(did, commit if isinstance(commit, bytes) else None, blocks, tuple(proved))


def _block_matches(cid: bytes, block: bytes) -> bool:
    """True when the block hashes to its CID (sha2-256 CIDs; other hashes are not checked)."""
    try:
        parsed = libipld.decode_cid(cid)
    except ValueError:
        return False
    mh = parsed["hash"]
    if mh["code"] != _SHA2_256:
        return True
    return hashlib.sha256(block).digest() == mh["digest"]


# --------------------------------------------------------------------------- source

Sink = Callable[[Decoded], Awaitable[None]]


def _ws_base(endpoint: str) -> str:
    endpoint = endpoint.rstrip("/")
    if endpoint.startswith("https://"):
        return "wss://" + endpoint[len("https://"):]
    if endpoint.startswith("http://"):
        return "ws://" + endpoint[len("http://"):]
    if endpoint.startswith(("ws://", "wss://")):
        return endpoint
    if "://" in endpoint:
        raise ValueError(f"relay endpoint must be ws(s):// or http(s)://: {endpoint!r}")
    return "wss://" + endpoint  # a bare host such as bsky.network


class FirehoseSource:
    """Follows `subscribeRepos` on a list of relays and hands one `Decoded` per frame to a sink.

    The resume cursor is the last seq handed to the sink (`self.cursor`); a reconnect after
    a drop, a read timeout (`read_timeout` seconds without a frame) or an error frame moves to
    the next endpoint (round robin) after a `Backoff` delay. Note that seqs are a relay's own
    numbering: endpoints in one list must share it (e.g. mirrors of one relay).
    Exceptions raised by the sink propagate; `run` otherwise runs until cancelled.
    `watched_dids` is kept by reference: DIDs the caller adds later are honoured.

    `verifier` (default None: off) checks the commit behind every frame with track events
    before the sink sees it. A commit that fails (bad signature, DID mismatch, ops not in the
    signed tree, no usable `#atproto` key) turns those events into `bad_signature` dead letters;
    the cursor still advances. When the signing key cannot be fetched right now (PLC or did:web
    host unreachable, 5xx) the events pass through unverified and are counted in
    `stats["unverified"]`: availability over strictness, as the relay already stands between
    us and the PDS; an operator who wants strictness can tighten this later.
    """

    name = SOURCE

    def __init__(
        self,
        endpoints: Sequence[str] | str,
        collections: Collections,
        *,
        watched_dids: set[str] | frozenset[str] | None = None,
        read_timeout: float = 60.0,
        open_timeout: float = 10.0,
        close_timeout: float = 2.0,
        backoff: Backoff | None = None,
        connect: Callable[..., Awaitable[Any]] | None = None,
        verifier: CommitVerifier | None = None,
    ) -> None:
        if isinstance(endpoints, str):
            endpoints = [endpoints]
        if not endpoints:
            raise ValueError("no relay endpoints")
        self.endpoints = [_ws_base(e) for e in endpoints]
        self.collections = collections
        self.watched_dids = watched_dids if watched_dids is not None else set()
        self.read_timeout = read_timeout
        self.open_timeout = open_timeout
        self.close_timeout = close_timeout
        self.backoff = backoff or Backoff()
        self._connect = connect or ws_connect
        self.verifier = verifier
        self.cursor: int | None = None
        self.endpoint_index = 0
        self.stats = {"frames": 0, "bytes": 0, "events": 0, "skipped": 0, "dead": 0, "reconnects": 0,
                      "verified": 0, "unverified": 0, "bad_signature": 0}

    def url(self, endpoint: str, cursor: int | None) -> str:
        query = "" if cursor is None else "?" + urlencode({"cursor": cursor})
        return f"{endpoint}{SUBSCRIBE_PATH}{query}"

    async def run(self, sink: Sink, start_cursor: int | None) -> None:
        """Follow the relays from `start_cursor` (None: live) until cancelled."""
        self.cursor = start_cursor
        while True:
            endpoint = self.endpoints[self.endpoint_index]
            reason = await self._session(endpoint, sink)
            self.stats["reconnects"] += 1
            self.endpoint_index = (self.endpoint_index + 1) % len(self.endpoints)
            delay = self.backoff.delay()
            log.warning("firehose.reconnecting", source=SOURCE, endpoint=endpoint, reason=reason,
                        next_endpoint=self.endpoints[self.endpoint_index], cursor=self.cursor, delay=round(delay, 3))
            await anyio.sleep(delay)

    async def _session(self, endpoint: str, sink: Sink) -> str:
        """One connection; returns why it ended. Sink exceptions and cancellation propagate."""
        url = self.url(endpoint, self.cursor)
        blog = log.bind(source=SOURCE, endpoint=endpoint)
        try:
            ws = await self._connect(
                url, open_timeout=self.open_timeout, close_timeout=self.close_timeout,
                max_size=2 * MAX_FRAME_BYTES, compression=None,
            )
        except (OSError, TimeoutError, websockets.exceptions.WebSocketException) as exc:
            return f"connect failed: {type(exc).__name__}: {str(exc)[:200]}"
        self.backoff.connected()
        blog.info("firehose.connected", cursor=self.cursor)
        try:
            async with read_deadline(self.read_timeout) as touch:
                return await self._read(ws, sink, touch, blog)
        except TimeoutError:
            return f"no frame for {self.read_timeout}s"
        except (OSError, websockets.exceptions.WebSocketException) as exc:
            return f"connection lost: {type(exc).__name__}: {str(exc)[:200]}"
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(self.close_timeout + 1):
                try:
                    await ws.close()
                except (OSError, websockets.exceptions.WebSocketException):
                    pass

    async def _read(self, ws, sink: Sink, touch, blog) -> str:
        """Frames to the sink until an error frame; connection errors propagate."""
        while True:
            message = await ws.recv()
            touch()
            raw = message.encode() if isinstance(message, str) else message
            self.stats["frames"] += 1
            self.stats["bytes"] += len(raw)
            proof = None
            try:
                if self.verifier is None:
                    decoded = decode_firehose_frame(raw, self.collections, watched_dids=self.watched_dids)
                else:
                    decoded, proof = decode_firehose_frame_with_proof(raw, self.collections,
                                                                      watched_dids=self.watched_dids)
            except Exception as exc:  # noqa: BLE001 - any decoding failure is the frame's, not ours
                decoded = undecodable(exc, raw, SOURCE)
            if proof is not None:
                await self._verify(decoded, proof, raw, blog)
                touch()
            self.stats["events"] += len(decoded.events)
            self.stats["skipped"] += decoded.skipped
            self.stats["dead"] += len(decoded.dead)
            await sink(decoded)
            touch()
            if decoded.cursor is not None:
                self.cursor = decoded.cursor
            for d in decoded.dead:
                if d.reason == "error_frame":
                    blog.error("firehose.error_frame", detail=d.detail, cursor=self.cursor)
                    return f"error frame: {d.detail}"
                blog.info("firehose.dead_letter", reason=d.reason, detail=d.detail[:200], cursor=d.cursor, uri=d.uri)

    async def _verify(self, decoded: Decoded, proof: CommitProof, raw: bytes, blog) -> None:
        """Check the commit behind `decoded`'s track events; invalid ones become dead letters."""
        try:
            why = await self.verifier.check(proof)
        except ResolveError as exc:
            tracks = sum(isinstance(e, TrackEvent) for e in decoded.events)
            self.stats["unverified"] += tracks
            blog.warning("firehose.unverified", did=proof.repo, cursor=decoded.cursor, events=tracks,
                         detail=str(exc)[:300])
            return
        if why is None:
            self.stats["verified"] += 1
            return
        bad = [e for e in decoded.events if isinstance(e, TrackEvent)]
        decoded.events = [e for e in decoded.events if not isinstance(e, TrackEvent)]
        decoded.dead.extend(_dead("bad_signature", why, raw, decoded.cursor, did=e.did, uri=e.uri) for e in bad)
        self.stats["bad_signature"] += len(bad)
