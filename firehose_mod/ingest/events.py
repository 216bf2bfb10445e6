"""What a source hands its sink: one `Decoded` per frame (or page).

The event types themselves live in `firehose_mod.events` (the store records them too); they
are re-exported here for the ingest side.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from firehose_mod.events import TRACK_COLLECTION, DeadLetter, Operation, RepoEvent, TrackEvent

__all__ = ["TRACK_COLLECTION", "DeadLetter", "Decoded", "Operation", "RepoEvent", "TrackEvent", "undecodable"]


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
