"""The configured network source: what `firehose-mod run` follows and `replay` re-reads."""

from __future__ import annotations

from firehose_mod.config import Settings
from firehose_mod.ingest.filters import Collections
from firehose_mod.ingest.firehose import FirehoseSource
from firehose_mod.ingest.jetstream import JetstreamSource
from firehose_mod.ingest.source import WebSocketSource
from firehose_mod.ingest.verify import CommitVerifier


def build_source(settings: Settings, watched_dids: set[str], *,
                 verifier: CommitVerifier | None = None) -> WebSocketSource | None:
    """The configured ingest source, or None for `ingest_source = "none"`.

    `watched_dids` is kept by reference (DIDs whose identity and account events matter);
    `verifier` checks relay commits (`[ingest] verify_commits`, the firehose only).
    """
    collections = Collections.parse(list(settings.collections))
    if settings.ingest_source == "jetstream":
        return JetstreamSource(list(settings.jetstream_endpoints), collections, compress=settings.jetstream_compress,
                               read_timeout=settings.ingest_read_timeout, watched_dids=watched_dids)
    if settings.ingest_source == "firehose":
        return FirehoseSource(list(settings.relay_endpoints), collections, read_timeout=settings.ingest_read_timeout,
                              watched_dids=watched_dids, verifier=verifier)
    return None
