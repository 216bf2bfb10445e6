"""The scanner contract: a scanner looks at a track and returns findings; it never writes labels.

One engine (the policy) turns findings into label decisions and review items and is the
only place that writes. A scanner that raises or times out is logged, counted and retried
by the worker; it never blocks the other scanners or the queue.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True, slots=True)
class Track:
    """What a scanner sees: one version of an `fm.plyr.track` record."""

    uri: str
    did: str
    rkey: str
    cid: str
    record: dict

    @property
    def title(self) -> str:
        return str(self.record.get("title", ""))

    @property
    def artist(self) -> str:
        return str(self.record.get("artist", ""))


@dataclass(frozen=True, slots=True)
class Finding:
    """One observation by one scanner, with the evidence a reviewer needs.

    `kind` names what was found (`copyright-match`, `nsfw`, `pdq-match`, `cover-unusable`, `text`,
    `self-label`, `media-unavailable`); `score` is in 0..1; `evidence` is JSON-serialisable
    (matched reference, offsets, seconds matched, hashes, model scores); `value` is the label
    value the finding points at, if any (the policy decides whether it is emitted, reviewed or
    ignored).
    """

    scanner: str
    kind: str
    score: float
    evidence: dict[str, Any] = field(default_factory=dict)
    value: str | None = None


MEDIA_UNAVAILABLE = "media-unavailable"  # the finding kind the engine reports for `MediaUnavailable`


class MediaError(Exception):
    """A blob or URL could not be fetched safely; the message says why (size, type, address)."""


class MediaUnavailable(MediaError):
    """The server says the media is not there for us (a permanent 4xx: 404, 410, 403, a PDS's 400
    BlobNotFound). Retrying would get the same answer, so it is not a scanner failure: the engine
    reports a `media-unavailable` finding for the policy to route, and the scanner's labels stay."""

    def __init__(self, message: str, *, status: int, kind: str, url: str):
        super().__init__(message)
        self.status = status
        self.kind = kind  # "audio" or "image"
        self.url = url


class Media(Protocol):
    """Read-only access to a track's media, fetched safely and cached on local disk."""

    async def audio(self, track: Track) -> Path | None:
        """The audio file (audioBlob from the author's PDS, else audioUrl), or None if the record has none."""

    async def image(self, track: Track) -> Path | None:
        """The cover art file (imageUrl), or None if the record has none."""


@dataclass(frozen=True)
class IndexUpload:
    """An effect a scanner describes and the engine performs: keep this upload's fingerprint in
    the catalogue under its at-uri, so a later copy of it is found. Scanners never write."""

    uri: str
    entries: bytes  # packed index entries (`Entries.to_bytes()`)
    entry_count: int
    fp_version: str
    title: str | None
    artist: str | None
    duration: float | None
    sha256: str | None
    chromaprint: Any  # numpy uint32 array or None


@dataclass
class ScanContext:
    """What scanners may use for one scan: media, a CPU pool for heavy work, and what the
    engine tells the scanners that run after the others (`local_match`). `effects` is where a
    scanner describes a write for the engine to perform (a dry run performs none)."""

    media: Media
    run_cpu: Any  # async callable: await run_cpu(fn, *args) runs fn in the process pool
    local_match: bool | None = None  # for `after_local` scanners: did the local index match?
    effects: list[IndexUpload] = field(default_factory=list)


@runtime_checkable
class Scanner(Protocol):
    """What a scanner is, and everything the engine reads from it.

    `name` is stable (it appears in evidence and explain); bump `version` when results change.
    `kinds` are the `Finding.kind`s it can report (`media-unavailable` too, if it fetches media:
    the engine reports that one for it); `values` are the label values its findings can carry
    themselves (`Finding.value`). When a scanner fails, the engine keeps exactly the automatic
    labels the policy could have written from those kinds and values (`Policy.label_values`),
    and withdraws the others as usual. `after_local`: run after the others, with
    `ctx.local_match` telling whether the local copyright index matched (AudD).
    """

    name: str
    version: str
    kinds: frozenset[str]
    values: frozenset[str]
    after_local: bool

    async def scan(self, track: Track, ctx: ScanContext) -> list[Finding]: ...
