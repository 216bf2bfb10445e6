"""The typed events every source produces."""

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


@dataclass(slots=True)
class Decoded:
    """What one upstream frame (or page) yields: the cursor it covers, events, dead letters."""

    cursor: int | None = None
    events: list[TrackEvent | RepoEvent] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)
    skipped: int = 0  # events of other collections or repos we do not watch


def undecodable(exc: BaseException, frame: bytes | str, source: str) -> Decoded:
    """The dead letter of a frame whose decoding raised: upstream data never stops ingest.

    The decoders turn every problem they know of into a dead letter; this is the net under
    them for what they do not know of yet (a record nested 1,000 levels deep, say), so one
    event cannot crash the daemon or, met again after the resume rewind, crash-loop it.
    """
    raw = frame.encode(errors="replace") if isinstance(frame, str) else bytes(frame[:4096])
    return Decoded(dead=[DeadLetter("undecodable", f"{type(exc).__name__}: {str(exc)[:300]}", raw=raw[:4096],
                                    source=source)])
