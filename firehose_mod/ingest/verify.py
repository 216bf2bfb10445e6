"""Commit-signature verification for `#commit` frames from a relay.

A relay is a middleman: without verification anything it sends is taken as the repo owner's
word. Per the atproto repository spec a commit object `{did, version: 3, data, rev, prev, sig}`
is signed by the key of the DID document's `#atproto` verification method: DAG-CBOR of the
commit without `sig`, SHA-256, ECDSA (secp256k1 or P-256), low-S, raw 64-byte r||s.

A signature alone proves nothing about the records: the signed commit names the MST root
(`data`), so each op is also checked against the tree — a create/update's record CID must be
the value at `collection/rkey`, a delete's path must be absent — using the MST nodes the
frame's CAR carries (sync v1.1 frames carry these proof blocks; a missing node fails the check).

`check_commit` is pure (proof + did:key in, reason or None out). `CommitVerifier` adds key
resolution: `#atproto` keys are cached per DID for `ttl` seconds, and a commit that fails
its signature check is retried once with a freshly fetched key (the account may have rotated
its key) before it is declared invalid (a key fetched for this very check is not refetched).
"""

from __future__ import annotations

import hashlib
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import libipld
import structlog

from firehose_mod.ingest.car import _cbor_arg, _cbor_item
from firehose_mod.ingest.resolve import DidResolver, ResolveError, check_did, document_entries
from firehose_mod.labels.signing import CURVES, KeyError_, parse_did_key, verify_bytes
from firehose_mod.scan.netguard import outbound_client

log = structlog.get_logger(__name__)

_SHA2_256 = 0x12
_MAX_MST_DEPTH = 128
_LEGACY_KEY_TYPES = {
    "EcdsaSecp256k1VerificationKey2019": "secp256k1",
    "EcdsaSecp256r1VerificationKey2019": "p256",
}
_DECODE_ERRORS = (ValueError, TypeError, IndexError, OverflowError, RecursionError, struct.error)


@dataclass(frozen=True)
class CommitProof:
    """What verifying one `#commit` frame needs (built by the pure firehose decoder).

    `ops` are the frame's watched ops as (`collection/rkey`, record CID or None for a delete);
    `blocks` the frame's CAR blocks keyed by binary CID; `commit_cid` the frame's `commit` link.
    """

    repo: str
    commit_cid: bytes | None
    blocks: dict[bytes, bytes]
    ops: tuple[tuple[str, bytes | None], ...]


class ProofError(ValueError):
    """The frame does not prove what it claims (the message says what is wrong)."""


# --------------------------------------------------------------------------- pure checks


def _hash_ok(cid: bytes, data: bytes) -> bool:
    try:
        mh = libipld.decode_cid(cid)["hash"]
    except ValueError:
        return False
    if mh["code"] != _SHA2_256:
        return False  # atproto repositories use sha2-256 only
    return hashlib.sha256(data).digest() == mh["digest"]


def _cid_str(cid: object) -> str:
    try:
        return libipld.encode_cid(cid) if isinstance(cid, bytes) else repr(cid)[:80]
    except ValueError:
        return "<invalid cid>"


def _map_header(n: int) -> bytes:
    if n < 24:
        return bytes([0xA0 | n])
    if n < 0x100:
        return bytes([0xB8, n])
    return b"\xb9" + n.to_bytes(2, "big")


def unsigned_commit(block: bytes) -> tuple[dict, bytes, bytes]:
    """(commit, the bytes its signature covers, sig) of a commit block.

    The signed bytes are cut from the block itself (the `sig` entry removed from the canonical
    map) rather than re-encoded, so no CID-vs-bytes guess can change them. Raises ProofError.
    """
    try:
        commit = libipld.decode_dag_cbor(block)  # strict DAG-CBOR, no trailing bytes
        if not isinstance(commit, dict) or block[0] >> 5 != 5:
            raise ProofError("commit block is not a map")
        n, pos = _cbor_arg(block, 1, block[0] & 0x1F)
        kept = []
        for _ in range(n):
            start = pos
            key, pos = _cbor_item(block, pos)
            _, pos = _cbor_item(block, pos)
            if key != "sig":
                kept.append(block[start:pos])
    except ProofError:
        raise
    except _DECODE_ERRORS as exc:
        raise ProofError(f"commit block is not valid DAG-CBOR: {exc}"[:200]) from None
    sig = commit.get("sig")
    if not isinstance(sig, bytes) or len(sig) != 64:
        raise ProofError("commit has no 64-byte sig")
    return commit, _map_header(len(kept)) + b"".join(kept), sig


def mst_lookup(blocks: dict[bytes, bytes], root: bytes, key: bytes) -> bytes | None:
    """The value CID at `key` in the MST rooted at `root`, None when absent. Raises ProofError
    when a node on the path is missing from `blocks`, does not hash to its CID or is malformed."""
    cid: bytes | None = root
    for _ in range(_MAX_MST_DEPTH):
        data = blocks.get(cid)
        if data is None:
            raise ProofError(f"MST node {_cid_str(cid)} not in the commit's CAR")
        if not _hash_ok(cid, data):
            raise ProofError(f"MST node does not hash to {_cid_str(cid)}")
        try:
            node = libipld.decode_dag_cbor(data)
        except _DECODE_ERRORS as exc:
            raise ProofError(f"MST node {_cid_str(cid)}: {exc}"[:200]) from None
        entries = node.get("e") if isinstance(node, dict) else None
        if not isinstance(entries, list):
            raise ProofError(f"MST node {_cid_str(cid)} has no entry list")
        subtree, prev = node.get("l"), b""
        for entry in entries:
            if not isinstance(entry, dict):
                raise ProofError("malformed MST entry")
            p, k = entry.get("p"), entry.get("k")
            if isinstance(p, bool) or not isinstance(p, int) or not isinstance(k, bytes) or not 0 <= p <= len(prev):
                raise ProofError("malformed MST entry")
            full = prev[:p] + k
            if full == key:
                value = entry.get("v")
                if not isinstance(value, bytes):
                    raise ProofError("MST entry without a value CID")
                return value
            if key < full:
                break
            subtree, prev = entry.get("t"), full
        if subtree is None:
            return None
        if not isinstance(subtree, bytes):
            raise ProofError("malformed MST subtree link")
        cid = subtree
    raise ProofError("MST deeper than any real repository")


def check_structure(proof: CommitProof) -> tuple[bytes, bytes] | str:
    """Key-independent checks: the commit block, its DID, version and the ops against its tree.
    Returns (signed bytes, sig), or a reason the commit is invalid."""
    if proof.commit_cid is None or not isinstance(proof.commit_cid, bytes):
        return "frame has no commit CID"
    block = proof.blocks.get(proof.commit_cid)
    if block is None:
        return f"commit block {_cid_str(proof.commit_cid)} not in the frame's CAR"
    if not _hash_ok(proof.commit_cid, block):
        return f"commit block does not hash to {_cid_str(proof.commit_cid)}"
    try:
        commit, signed, sig = unsigned_commit(block)
    except ProofError as exc:
        return str(exc)
    if commit.get("did") != proof.repo:
        return f"commit is for {str(commit.get('did'))[:100]!r}, frame says {proof.repo!r}"
    if commit.get("version") != 3:
        return f"commit version {str(commit.get('version'))[:20]} (expected 3)"
    root = commit.get("data")
    if not isinstance(root, bytes):
        return "commit has no data CID"
    for path, cid in proof.ops:
        try:
            found = mst_lookup(proof.blocks, root, path.encode())
        except ProofError as exc:
            return f"{path}: {exc}"
        if cid is None and found is not None:
            return f"{path}: deleted, yet still in the signed tree"
        if cid is not None and found != cid:
            where = "absent from" if found is None else f"{_cid_str(found)} in"
            return f"{path}: record {_cid_str(cid)} does not match the signed tree ({where} the tree)"
    return signed, sig


def check_commit(proof: CommitProof, did_key: str) -> str | None:
    """None when the commit is signed by `did_key` and proves its ops; else the reason."""
    checked = check_structure(proof)
    if isinstance(checked, str):
        return checked
    return _check_sig(did_key, *checked)


def _check_sig(did_key: str, signed: bytes, sig: bytes) -> str | None:
    try:
        ok = verify_bytes(did_key, signed, sig)
    except (KeyError_, ValueError) as exc:
        return f"unusable signing key {did_key[:80]}: {exc}"[:300]
    return None if ok else f"signature does not verify with {did_key}"


def signing_key_from_document(did: str, doc: object) -> str:
    """The `#atproto` verification method of a DID document as a did:key (pure; ResolveError)."""
    for method in document_entries(did, doc, "verificationMethod", "#atproto"):
        mb = method.get("publicKeyMultibase")
        if not isinstance(mb, str) or not mb.startswith("z"):
            raise ResolveError(f"{did}: #atproto verification method has no base58 publicKeyMultibase")
        try:
            legacy = _LEGACY_KEY_TYPES.get(method.get("type"))
            if legacy is not None:  # raw key bytes without a multicodec prefix
                raw = bytes(libipld.decode_multibase(mb)[1])
                prefix = CURVES[legacy][2]
                if not raw.startswith(prefix):
                    mb = libipld.encode_multibase("z", prefix + raw)
            did_key = "did:key:" + mb
            parse_did_key(did_key)
        except (KeyError_, ValueError) as exc:
            raise ResolveError(f"{did}: #atproto key is unusable: {exc}"[:300]) from None
        return did_key
    raise ResolveError(f"{did}: DID document has no #atproto verification method (no repo signing key)")


# --------------------------------------------------------------------------- the verifier


class CommitVerifier:
    """Checks commits against their repo's current `#atproto` key, cached per DID for `ttl` s.

    `check` returns None for a valid commit, else the reason it is invalid. A DID whose document
    exists but has no usable `#atproto` key (or is not found) cannot sign anything: that is a
    reason too. A transient resolution failure (PLC/did:web host unreachable, 5xx, 429) raises
    `ResolveError` with `transient=True`: the caller decides (the firehose passes the events
    through as unverified). DID documents are fetched with `DidResolver`'s HTTP plumbing, over
    a vetted client (`http_client`): a did:web host is whatever a stranger's DID says.
    """

    @staticmethod
    def http_client(settings: Any, *, timeout: float | None = None) -> httpx.AsyncClient:
        """The client key lookups should use: `outbound_client(settings)`, internal addresses refused.

        Lookups happen in the firehose read loop, so by default they time out well inside its
        read deadline (a quarter of `ingest_read_timeout`, at most 5 s)."""
        if timeout is None:
            timeout = min(5.0, settings.ingest_read_timeout / 4)
        return outbound_client(settings, timeout=timeout)

    def __init__(self, resolver_client: httpx.AsyncClient, plc_url: str = "https://plc.directory", *,
                 web_base: Callable[[str], str] | None = None, ttl: float = 3600,
                 clock: Callable[[], float] = time.monotonic):
        self._resolver = DidResolver(resolver_client, plc_url, ttl, web_base=web_base, clock=clock)
        self.ttl = ttl
        self._clock = clock
        self._keys: dict[str, tuple[float, str]] = {}
        self.stats = {"checked": 0, "valid": 0, "invalid": 0, "key_fetches": 0, "key_cache_hits": 0,
                      "refetches": 0, "rotations": 0}

    async def signing_key(self, did: str, *, fresh: bool = False) -> str:
        """The did:key of `did`'s `#atproto` key; `fresh` bypasses the cache. Raises ResolveError."""
        check_did(did)
        hit = self._keys.get(did)
        if not fresh and hit is not None and hit[0] > self._clock():
            self.stats["key_cache_hits"] += 1
            return hit[1]
        self.stats["key_fetches"] += 1
        key = signing_key_from_document(did, await self._resolver._document(did))
        self._keys[did] = (self._clock() + self.ttl, key)
        return key

    def forget(self, did: str) -> None:
        self._keys.pop(did, None)

    async def check(self, proof: CommitProof) -> str | None:
        """None when valid, else why not. Raises ResolveError(transient=True) when the key
        cannot be fetched right now."""
        self.stats["checked"] += 1
        why = await self._check(proof)
        self.stats["valid" if why is None else "invalid"] += 1
        return why

    async def _check(self, proof: CommitProof) -> str | None:
        checked = check_structure(proof)  # no key needed: a broken frame costs no lookup
        if isinstance(checked, str):
            return checked
        fetches = self.stats["key_fetches"]
        try:
            key = await self.signing_key(proof.repo)
        except ResolveError as exc:
            if exc.transient:
                raise
            return f"no signing key: {exc}"[:300]
        why = _check_sig(key, *checked)
        if why is None or self.stats["key_fetches"] != fetches:
            return why  # valid, or invalid with a key fetched just now: a refetch would not help
        # The account may have rotated its key since we cached it: look once more.
        self.stats["refetches"] += 1
        try:
            fresh = await self.signing_key(proof.repo, fresh=True)
        except ResolveError as exc:
            if exc.transient:
                raise
            return f"no signing key: {exc}"[:300]
        if fresh == key:
            return why
        self.stats["rotations"] += 1
        log.info("verify.key_rotated", did=proof.repo, old=key, new=fresh)
        return _check_sig(fresh, *checked)
