"""The typed events ingest produces and the store records: a leaf module, importing nothing of ours.

Sources (`ingest/`) make them and the store (`store/`) writes them; both import them from
here, so the store never depends on ingest.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

TRACK_COLLECTION = "fm.plyr.track"

Operation = Literal["create", "update", "delete"]


@dataclass(frozen=True, slots=True)
class TrackEvent:
    """A create, update or delete of a record in a watched collection.

    `record` is the decoded record (None for deletes); `cid` its CID string (None for
    deletes on sources that do not carry it); `cursor` the source position that covers it.
    """

    did: str
    collection: str
    rkey: str
    operation: Operation
    cid: str | None
    record: dict | None
    cursor: int
    rev: str = ""
    source: str = ""

    @property
    def uri(self) -> str:
        return f"at://{self.did}/{self.collection}/{self.rkey}"


@dataclass(frozen=True, slots=True)
class RepoEvent:
    """An identity or account event (handle change, takedown, deactivation, deletion)."""

    did: str
    kind: Literal["identity", "account"]
    cursor: int
    active: bool | None = None
    status: str | None = None
    handle: str | None = None
    source: str = ""


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """Upstream input we could not use: kept for the operator, never retried automatically."""

    reason: str
    detail: str
    cursor: int | None = None
    did: str | None = None
    uri: str | None = None
    raw: bytes = field(default=b"", repr=False)
    source: str = ""
