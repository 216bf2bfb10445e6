"""Relay firehose (`com.atproto.sync.subscribeRepos`) frames to `Decoded`: DAG-CBOR with CAR-packed records.

`decode_firehose_frame` is pure: one binary frame in, a `Decoded` out. Upstream data is user
input: a frame that cannot be used becomes a dead letter with its reason, never an exception.
A `#commit` is filtered on its ops' paths before its CAR is touched, which is what keeps a
full-network stream cheap; only the blocks of matching ops are decoded.

Records are returned in the JSON form of the atproto data model (what Jetstream sends and
what `validate_track` and `json.dumps` expect): CID links become `{"$link": "bafy..."}` and
byte strings `{"$bytes": base64}`. libipld decodes both links and byte strings to plain
`bytes`, so records are converted from their raw block bytes by a small walker that sees the
CBOR tag 42 (after libipld has checked the block is strict DAG-CBOR).

`decode_firehose_frame_with_proof` also hands back what a `CommitVerifier` needs to check the
repo owner's signature (see `verify.py`), for frames with track events only.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from typing import Any

import libipld

from firehose_mod.ingest.car import dag_cbor_to_json, read_car_blocks
from firehose_mod.ingest.events import TRACK_COLLECTION, Decoded, DeadLetter, RepoEvent, TrackEvent
from firehose_mod.ingest.filters import Collections
from firehose_mod.ingest.lexicon import MAX_RECORD_BYTES, blocking_problems
from firehose_mod.ingest.verify import CommitProof
from firehose_mod.syntax import is_did, is_rkey

SOURCE = "firehose"
MAX_FRAME_BYTES = 5 * 1024 * 1024
_SHA2_256 = 0x12


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
        if not is_did(did):
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
    if not is_did(did):
        return _dead_frame("malformed_event", f"repo missing or invalid: {str(did)[:80]}", frame, seq), None
    if not isinstance(ops, list):
        return _dead_frame("malformed_event", "commit without an ops list", frame, seq, did=did), None
    out = Decoded(cursor=seq)
    wanted = _watched_ops(ops, did, seq, frame, collections, out)
    if not wanted:
        if not ops:
            out.skipped = 1  # an empty commit: nothing for us
        return out, None
    commit = _Commit(did, seq, body.get("rev") if isinstance(body.get("rev"), str) else "", frame,
                     body.get("tooBig") is True, *_car_blocks(body.get("blocks")))
    proved: list[tuple[str, bytes | None]] = []  # (path, record CID or None) of each event
    for collection, rkey, action, cid in wanted:
        result = commit.event(collection, rkey, action, cid)
        if isinstance(result, DeadLetter):
            out.dead.append(result)
        else:
            out.events.append(result)
            proved.append((f"{collection}/{rkey}", cid if action != "delete" else None))
    if not out.events:
        return out, None
    signed = body.get("commit")
    return out, CommitProof(did, signed if isinstance(signed, bytes) else None, commit.blocks, tuple(proved))


def _watched_ops(ops: list, did: str, seq: int, frame: bytes, collections: Collections,
                 out: Decoded) -> list[tuple[str, str, str, Any]]:
    """(collection, rkey, action, cid) of the ops on tracks; the cheap filter: paths only, no CAR."""
    wanted = []
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
        if not is_rkey(rkey):  # any valid key, not only a TID: see jetstream._decode_commit
            out.dead.append(_dead("malformed_event", f"invalid rkey {rkey[:80]!r}", frame, seq, did=did))
            continue
        action = op.get("action")
        if action not in ("create", "update", "delete"):
            out.dead.append(_dead("malformed_event", f"unknown action {str(action)[:40]!r}", frame, seq, did=did,
                                  uri=f"at://{did}/{collection}/{rkey}"))
            continue
        wanted.append((collection, rkey, action, op.get("cid")))
    return wanted


def _car_blocks(car: object) -> tuple[dict[bytes, bytes], str | None]:
    """The commit's blocks by CID, or no blocks and why the CAR cannot be read."""
    try:
        if not isinstance(car, bytes):
            raise ValueError("blocks is not a byte string")
        return (read_car_blocks(car) if car else {}), None  # tooBig commits may carry none
    except (ValueError, IndexError, RecursionError) as exc:
        return {}, f"unreadable CAR: {exc}"[:200]


@dataclass(frozen=True, slots=True)
class _Commit:
    """One `#commit`'s context while its watched ops become events or dead letters."""

    did: str
    seq: int
    rev: str
    frame: bytes
    too_big: bool
    blocks: dict[bytes, bytes]
    car_error: str | None

    def event(self, collection: str, rkey: str, action: str, cid: Any) -> TrackEvent | DeadLetter:
        did, seq = self.did, self.seq
        if action == "delete":
            return TrackEvent(did, collection, rkey, "delete", None, None, seq, self.rev, SOURCE)
        uri = f"at://{did}/{collection}/{rkey}"
        try:
            cid_str = libipld.encode_cid(cid) if isinstance(cid, bytes) else None
        except ValueError:
            cid_str = None
        if cid_str is None:
            return _dead("malformed_event", f"{action} without a valid cid", self.frame, seq, did=did, uri=uri)
        if self.car_error is not None:
            return _dead("malformed_cbor", self.car_error, self.frame, seq, did=did, uri=uri)
        block = self.blocks.get(cid)
        if block is None:
            detail = f"record block {cid_str} not in the commit's CAR"
            if self.too_big:
                detail += " (tooBig commit: fetch the record from the PDS)"
            return _dead("missing_block", detail, self.frame, seq, did=did, uri=uri)
        if not _block_matches(cid, block):
            return _dead("block_hash_mismatch", f"block bytes do not hash to {cid_str}", block, seq, did=did, uri=uri)
        if len(block) > MAX_RECORD_BYTES:
            return _dead("oversized_record", f"{len(block)} bytes", block, seq, did=did, uri=uri)
        try:
            libipld.decode_dag_cbor(block)  # strictness (canonical DAG-CBOR, no trailing bytes)
            record = dag_cbor_to_json(block)
        except (ValueError, RecursionError, TypeError, OverflowError, IndexError, struct.error) as exc:
            return _dead("malformed_cbor", f"record block: {exc}"[:200], block, seq, did=did, uri=uri)
        problems = blocking_problems(record)
        if problems:
            return _dead("lexicon", "; ".join(problems), block, seq, did=did, uri=uri)
        return TrackEvent(did, collection, rkey, action, cid_str, record, seq, self.rev, SOURCE)


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
