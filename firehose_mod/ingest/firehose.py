"""The relay firehose source: `subscribeRepos` on a list of relays, decoded by `firehose_decode`.

`FirehoseSource` is a `WebSocketSource`: one `Decoded` per frame to a sink, in order,
reconnecting, failing over and resuming from the last seq handed to the sink. With a
`CommitVerifier` it also checks the repo owner's signature on commits that carry watched ops.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlencode

import structlog

from firehose_mod.ingest.events import Decoded, DeadLetter, TrackEvent
from firehose_mod.ingest.filters import Collections
from firehose_mod.ingest.firehose_decode import (
    MAX_FRAME_BYTES, SOURCE, decode_firehose_frame, decode_firehose_frame_with_proof,
)
from firehose_mod.ingest.resolve import ResolveError
from firehose_mod.ingest.source import WebSocketSource
from firehose_mod.ingest.verify import CommitProof, CommitVerifier

__all__ = ["MAX_FRAME_BYTES", "SOURCE", "SUBSCRIBE_PATH", "FirehoseSource", "decode_firehose_frame",
           "decode_firehose_frame_with_proof"]

SUBSCRIBE_PATH = "/xrpc/com.atproto.sync.subscribeRepos"

log = structlog.get_logger(__name__)


@dataclass(slots=True)
class _Unverified(Decoded):
    """A decoded frame whose track events wait for the signature check of their commit."""

    proof: CommitProof | None = None


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


class FirehoseSource(WebSocketSource):
    """Follows `subscribeRepos` on a list of relays (see `WebSocketSource`); an error frame ends
    the connection. Seqs are a relay's own numbering: endpoints in one list must share it
    (e.g. mirrors of one relay).

    `verifier` (default None: off) checks the commit behind every frame with track events
    before the sink sees it. A commit that fails (bad signature, DID mismatch, ops not in the
    signed tree, no usable `#atproto` key) turns those events into `bad_signature` dead letters;
    the cursor still advances. When the signing key cannot be fetched right now (PLC or did:web
    host unreachable, 5xx) the events pass through unverified and are counted in
    `stats.unverified`: availability over strictness, as the relay already stands between
    us and the PDS; an operator who wants strictness can tighten this later.
    """

    name = SOURCE
    max_message_bytes = 2 * MAX_FRAME_BYTES

    def __init__(self, endpoints: Sequence[str] | str, collections: Collections, *,
                 verifier: CommitVerifier | None = None, **options) -> None:
        if isinstance(endpoints, str):
            endpoints = [endpoints]
        super().__init__([_ws_base(e) for e in endpoints], collections, **options)
        self.verifier = verifier

    def url(self, endpoint: str, cursor: int | None) -> str:
        query = "" if cursor is None else "?" + urlencode({"cursor": cursor})
        return f"{endpoint}{SUBSCRIBE_PATH}{query}"

    def decode(self, frame: bytes | str) -> Decoded:
        if self.verifier is None:
            return decode_firehose_frame(frame, self.collections, watched_dids=self.watched_dids)
        decoded, proof = decode_firehose_frame_with_proof(frame, self.collections, watched_dids=self.watched_dids)
        if proof is None:
            return decoded
        return _Unverified(decoded.cursor, decoded.events, decoded.dead, decoded.skipped, proof)

    async def check(self, decoded: Decoded, frame: bytes | str) -> None:
        if isinstance(decoded, _Unverified):
            await self._verify(decoded, decoded.proof, frame)

    def session_ends(self, decoded: Decoded) -> str | None:
        for d in decoded.dead:
            if d.reason == "error_frame":
                return f"error frame: {d.detail}"
        return None

    async def _verify(self, decoded: Decoded, proof: CommitProof, raw: bytes) -> None:
        """Check the commit behind `decoded`'s track events; invalid ones become dead letters."""
        try:
            why = await self.verifier.check(proof)
        except ResolveError as exc:
            tracks = sum(isinstance(e, TrackEvent) for e in decoded.events)
            self.stats.unverified += tracks
            log.warning("ingest.unverified", source=SOURCE, did=proof.repo, cursor=decoded.cursor, events=tracks,
                        detail=str(exc)[:300])
            return
        if why is None:
            self.stats.verified += 1
            return
        bad = [e for e in decoded.events if isinstance(e, TrackEvent)]
        decoded.events = [e for e in decoded.events if not isinstance(e, TrackEvent)]
        decoded.dead.extend(DeadLetter("bad_signature", why, cursor=decoded.cursor, did=e.did, uri=e.uri,
                                       raw=raw[:4096], source=SOURCE) for e in bad)
        self.stats.bad_signature += len(bad)
