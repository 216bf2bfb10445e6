"""What `firehose-mod scan` can be pointed at: files, directories, URLs, at-uris, as tracks.

A local file or URL becomes a synthetic track by nobody's account; an at-uri is read with
getRecord from its author's PDS and checked as the daemon would check it.
"""

from __future__ import annotations

import mimetypes
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from firehose_mod.ingest.events import TRACK_COLLECTION, DeadLetter
from firehose_mod.ingest.records import FetchError, decode_record, get_json
from firehose_mod.ingest.resolve import DidResolver, check_did
from firehose_mod.labels.model import now_iso
from firehose_mod.scan.base import Track
from firehose_mod.scan.copyright import AUDIO_EXTENSIONS
from firehose_mod.scan.media import SafeFetcher

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".jfif", ".gif", ".webp", ".bmp", ".avif"})
DRY_RUN_DID = "did:web:dry-run.invalid"  # the author of a local file or URL: nobody's account


@dataclass(frozen=True)
class _Job:
    target: str
    source: str
    kind: str | None
    error: str | None = None

def expand_targets(targets: Iterable[str]) -> tuple[list[_Job], list[tuple[str, str]]]:
    """One job per target (a directory: per audio or image file in it); files skipped, with why."""
    jobs: list[_Job] = []
    skipped: list[tuple[str, str]] = []
    for target in targets:
        if target.startswith("at://"):
            jobs.append(_Job(target, "at-uri", "record"))
        elif target.lower().startswith(("https://", "http://")):
            jobs.append(_Job(target, "url", _kind_of_name(urlsplit(target).path)))
        elif (path := Path(target)).is_dir():
            for p in sorted(q for q in path.rglob("*") if q.is_file() and not q.name.startswith(".")):
                kind = _kind_of_name(p.name)
                if kind is None:
                    skipped.append((str(p), f"not an audio or image file ({p.suffix or 'no extension'})"))
                else:
                    jobs.append(_Job(str(p), "file", kind))
        elif path.is_file():
            try:
                kind = _kind_of_name(path.name) or _sniff(path)
            except OSError as exc:
                jobs.append(_Job(target, "file", None, f"cannot read: {exc.strerror}"))
                continue
            jobs.append(_Job(target, "file", kind, None if kind else "not an audio or image file"))
        else:
            jobs.append(_Job(target, "file", None, "no such file or directory (nor an http(s) URL or at:// URI)"))
    return jobs, skipped

class LocalFilesMedia:
    """The `Media` the scanners see: local files registered by track uri, else the SafeFetcher."""

    def __init__(self, fetcher: SafeFetcher):
        self.fetcher = fetcher
        self.local: dict[str, tuple[str, Path]] = {}  # uri -> (audio | image, path)

    async def audio(self, track: Track) -> Path | None:
        if track.uri in self.local:
            kind, path = self.local[track.uri]
            return path if kind == "audio" else None
        return await self.fetcher.audio(track)

    async def image(self, track: Track) -> Path | None:
        if track.uri in self.local:
            kind, path = self.local[track.uri]
            return path if kind == "image" else None
        return await self.fetcher.image(track)

def _synthetic_record(name: str, **urls: str) -> dict:
    return {"$type": TRACK_COLLECTION, "title": name, "artist": "", "fileType": Path(name).suffix.lstrip(".").lower(),
            "createdAt": now_iso(), **urls}


async def fetch_track(uri: str, resolver: DidResolver, client: httpx.AsyncClient) -> Track:
    """The current version of the track at `uri`, read with getRecord from its author's PDS.

    A record the daemon would reject (lexicon, size, wrong collection) is a FetchError saying why.
    """
    parts = uri.removeprefix("at://").split("/")
    if len(parts) != 3 or not all(parts):
        raise FetchError(f"{uri[:200]}: expected at://DID/{TRACK_COLLECTION}/RKEY")
    did, collection, rkey = parts
    check_did(did)
    pds = await resolver.resolve_pds(did)
    body = await get_json(client, f"{pds}/xrpc/com.atproto.repo.getRecord",
                          {"repo": did, "collection": collection, "rkey": rkey}, "getRecord")
    event = decode_record(did, body)
    if isinstance(event, DeadLetter):
        raise FetchError(f"the daemon would not scan {uri[:200]} ({event.reason}): {event.detail[:300]}")
    return Track(event.uri, did, rkey, event.cid or "", event.record or {})

_MAGIC = ((b"\x89PNG", "image"), (b"\xff\xd8\xff", "image"), (b"GIF8", "image"), (b"BM", "image"),
          (b"ID3", "audio"), (b"fLaC", "audio"), (b"OggS", "audio"), (b"\xff\xfb", "audio"), (b"\xff\xf3", "audio"),
          (b"\x1aE\xdf\xa3", "audio"))


def _kind_of_name(name: str) -> str | None:
    suffix = Path(name).suffix.lower()
    if suffix in AUDIO_EXTENSIONS:
        return "audio"
    if suffix in IMAGE_EXTENSIONS:
        return "image"
    guessed = mimetypes.guess_type(name)[0] or ""
    return next((k for k in ("audio", "image") if guessed.startswith(f"{k}/") and guessed != "image/svg+xml"), None)


def _sniff(path: Path) -> str | None:
    """A file without a telling extension: audio or image by its first bytes."""
    with path.open("rb") as f:
        head = f.read(16)
    if head[:4] == b"RIFF":
        return {b"WEBP": "image", b"WAVE": "audio"}.get(head[8:12])
    if head[4:8] == b"ftyp":
        return "image" if head[8:12] in (b"avif", b"avis") else "audio"
    return next((kind for magic, kind in _MAGIC if head.startswith(magic)), None)
