"""The review desk's media: cover thumbnails and the two excerpts of a copyright match, from our disk.

A moderator decides a copyright item by ear (the upload's matched seconds beside the
reference's) and a cover item by eye. Why this module and not a link to the record's URLs:

- **Never hot-linked.** A moderator's browser must not fetch a stranger's URL: that tells the
  uploader who looks and when, and the bytes may have changed since the scan. Media comes through
  `SafeFetcher` (the scanners' outbound guard and content-keyed cache); the page serves our disk.
- **Never a stranger's bytes as-is.** A crafted file is aimed at a browser's decoders. A cover is
  decoded by the cover scanner's bounded decoder (its pixel, size and format limits) in a worker
  process and saved again as a JPEG of at most 320 px; audio is cut by ffmpeg through the
  fingerprinter's guarded input (`ffmpeg_input`) and encoded again as Ogg Opus, without tags.
- **What was judged.** An item whose track was edited since (another record cid) gets no media.
- **Bounded.** At most `ffmpeg_limit` ffmpeg processes, each with a deadline; excerpts of at most
  30 s; the desk cache (`DATA_DIR/desk-media`: not inside the fetcher's cache, whose eviction
  expects files only) is bounded by size, least recently used first.

Every failure a moderator can meet is `MediaMissing`, whose message says what is missing.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import sqlite3
import subprocess
import tempfile
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack, suppress
from pathlib import Path
from typing import Any, Self

import anyio
import anyio.to_process
import structlog

from firehose_mod.config import Settings
from firehose_mod.scan.base import MediaError, MediaUnavailable, Track
from firehose_mod.scan.cover import CoverImageError, CoverLimits, decode_cover
from firehose_mod.scan.fingerprint.extract import ffmpeg_input
from firehose_mod.scan.media import SafeFetcher
from firehose_mod.store.catalogue import CatalogueStore
from firehose_mod.store.db import SchemaError, close_shielded
from firehose_mod.store.pg.label_log import DatabaseUnreachable
from firehose_mod.store.review import ReviewItem, ReviewStore

log = structlog.get_logger(__name__)

MiB = 1024 * 1024
THUMB_SIDE = 320
PAD_S, MAX_EXCERPT_S = 1.0, 30.0
_MIN_OGG = 512  # an Ogg Opus file with headers and no audio packets is ~140 bytes


class MediaMissing(Exception):
    """The desk cannot show this evidence; the message says why, in a moderator's words."""


def cover_jpeg(path: str, side: int = THUMB_SIDE) -> bytes | str:
    """The cover re-encoded as a JPEG at most `side` px a side, or why it cannot be (a worker process runs it)."""
    from PIL import Image

    try:
        img, _facts = decode_cover(path, CoverLimits())
    except CoverImageError as exc:
        return f"the cover cannot be decoded ({exc.reason}): {exc}"
    img.thumbnail((side, side), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    img.save(out, "JPEG", quality=85, optimize=True)
    return out.getvalue()


async def _in_process(fn: Callable[..., Any], *args: Any) -> Any:
    return await anyio.to_process.run_sync(fn, *args, cancellable=True)


class DeskMedia:
    """Cover thumbnails and copyright excerpts for review items, cached under `cache_dir`.

    `fetcher`: an open `SafeFetcher` (not closed here); without one, a fetcher over the scanners'
    cache (`DATA_DIR/media`) is opened on first use, as `scan.registry` builds it, and closed by
    `aclose()`. The catalogue is read (read-only) from `catalogue_db_path`, default the labeler's
    database (PostgreSQL's with `database_url`). `cpu` runs the image decoder (default: anyio's
    worker processes).
    """

    def __init__(self, settings: Settings, review_store: ReviewStore, *, fetcher: SafeFetcher | None = None,
                 catalogue_db_path: Path | None = None, cache_dir: Path | None = None,
                 max_cache_bytes: int = 512 * MiB, ffmpeg_limit: int = 2, ffmpeg_timeout: float = 60.0,
                 cpu: Callable[..., Awaitable[Any]] = _in_process):
        self.settings = settings
        self.store = review_store
        self.cache_dir = Path(cache_dir or settings.data_dir / "desk-media")
        self.max_cache_bytes = max_cache_bytes
        self.ffmpeg_timeout = ffmpeg_timeout
        self._fetcher = fetcher
        self._catalogue_path = Path(catalogue_db_path or settings.db_path)
        self._catalogue: CatalogueStore | None = None
        self._cpu = cpu
        self._owned = AsyncExitStack()
        self._opening = anyio.Lock()
        self._ffmpeg = anyio.CapacityLimiter(ffmpeg_limit)
        self._locks: dict[str, anyio.Lock] = {}
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        for stale in self.cache_dir.glob(".*.part"):  # left by a crash mid-encode
            stale.unlink(missing_ok=True)

    async def aclose(self) -> None:
        await self._owned.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- what the page serves -------------------------------------------------------------------
    async def cover_thumbnail(self, item: ReviewItem) -> bytes:
        """The item's cover as a JPEG of at most 320 px a side (image/jpeg); MediaMissing says why not."""
        try:
            track = await self._track(item.uri, item.cid, "track")

            async def make(dest: Path) -> None:
                path = await self._fetch(track, "image", "cover")
                result = await self._cpu(cover_jpeg, str(path), THUMB_SIDE)
                if isinstance(result, str):
                    raise MediaMissing(result)
                tmp = self._tmp(dest)
                try:
                    tmp.write_bytes(result)
                    os.replace(tmp, dest)
                finally:
                    tmp.unlink(missing_ok=True)

            return (await self._cached(f"cover {track.uri} {track.cid}", ".jpg", make)).read_bytes()
        except OSError as exc:
            raise MediaMissing(f"the desk could not read or write its media: {exc}") from None

    async def excerpt(self, item: ReviewItem, finding_index: int, which: str) -> Path:
        """An Ogg Opus file (audio/ogg) of the matched seconds, +/- 1 s, of the upload or the reference."""
        try:
            start, end, ref = self._span(item, finding_index, which)
            local: Path | None = None
            if which == "upload":
                track = await self._track(item.uri, item.cid, "track")
                identity, what = f"track {track.uri} {track.cid}", "upload's audio"
            elif ref.startswith("at://"):  # the reference is an earlier upload
                track = await self._track(ref, None, "reference upload")
                identity, what = f"track {track.uri} {track.cid}", "reference upload's audio"
            else:
                track, what = None, f"reference {ref}"
                local = await self._ref_file(ref)
                st = local.stat()
                identity = f"file {local} {st.st_size} {st.st_mtime_ns}"

            async def make(dest: Path) -> None:
                src = local if track is None else await self._fetch(track, "audio", what)
                await self._cut(src, start, end, dest, what)

            return await self._cached(f"{identity} {start:.3f} {end:.3f}", ".ogg", make)
        except OSError as exc:
            raise MediaMissing(f"the desk could not read or write its media: {exc}") from None

    # -- the evidence ---------------------------------------------------------------------------
    @staticmethod
    def _span(item: ReviewItem, index: int, which: str) -> tuple[float, float, str]:
        """(start, end) seconds to cut, and the finding's ref."""
        if which not in ("upload", "ref"):
            raise MediaMissing(f"which must be 'upload' or 'ref', not {str(which)[:40]!r}")
        findings = item.evidence if isinstance(item.evidence, list) else []
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(findings):
            raise MediaMissing(f"finding {str(index)[:20]} is out of range: this item has {len(findings)} finding(s)")
        finding = findings[index]
        ev = finding.get("evidence") if isinstance(finding, dict) else None
        if not isinstance(ev, dict) or finding.get("kind") != "copyright-match":
            raise MediaMissing(f"finding {index} is not a copyright match")
        prefix = "query" if which == "upload" else "ref"
        a, b, ref = ev.get(f"{prefix}_start"), ev.get(f"{prefix}_end"), ev.get("ref")
        if not all(isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) for x in (a, b)) \
                or b < a or (which == "ref" and not (isinstance(ref, str) and ref)):
            raise MediaMissing(f"finding {index} does not say which seconds of the {which} matched")
        start = max(0.0, float(a) - PAD_S)
        return start, min(float(b) + PAD_S, start + MAX_EXCERPT_S), ref if isinstance(ref, str) else ""

    async def _track(self, uri: str, cid: str | None, what: str) -> Track:
        cid_now, record = await self.store.track_record(uri)
        if record is None:
            raise MediaMissing(f"the {what} {uri} is no longer stored (deleted, or never seen by ingest)")
        if cid is not None and cid_now != cid:
            raise MediaMissing(f"the track was edited since this item was opened (record {cid}, now {cid_now}):"
                               " its media may not be what was judged")
        did, _, rest = uri.removeprefix("at://").partition("/")
        return Track(uri=uri, did=did, rkey=rest.rpartition("/")[2], cid=cid_now or "", record=record)

    async def _fetch(self, track: Track, kind: str, what: str) -> Path:
        fetcher = await self._media()
        try:
            path = await (fetcher.audio(track) if kind == "audio" else fetcher.image(track))
        except MediaUnavailable as exc:
            raise MediaMissing(f"the {what} is no longer in the cache and its URL answered HTTP {exc.status}"
                               f" ({exc.url[:200]})") from None
        except MediaError as exc:
            raise MediaMissing(f"the {what} is not in the cache and could not be fetched: {exc}") from None
        if path is None:
            raise MediaMissing(f"the track record has no {'audioUrl or audioBlob' if kind == 'audio' else 'imageUrl'}")
        return path

    async def _ref_file(self, ref: str) -> Path:
        row = await (await self._catalogue_store()).get(ref)
        if row is None:
            raise MediaMissing(f"reference {ref[:200]} is not in the catalogue")
        source = row.source or (ref.removeprefix("file:") if ref.startswith("file:") else None)
        if not source:
            raise MediaMissing(f"reference {ref[:200]} has no source file recorded")
        if not Path(source).is_file():
            raise MediaMissing(f"reference file {source} was moved or deleted")
        return Path(source)

    # -- ffmpeg ---------------------------------------------------------------------------------
    async def _cut(self, src: Path, start: float, end: float, dest: Path, what: str) -> None:
        tmp = self._tmp(dest)
        cmd = ["ffmpeg", "-nostdin", "-hide_banner", "-v", "error", "-y", "-ss", f"{start:.3f}",
               "-t", f"{end - start:.3f}", *ffmpeg_input(src), "-map", "0:a:0", "-vn", "-sn", "-dn",
               "-map_metadata", "-1", "-ac", "1", "-c:a", "libopus", "-b:a", "64k", "-f", "ogg", f"file:{tmp}"]
        try:
            async with self._ffmpeg:
                with anyio.fail_after(self.ffmpeg_timeout):
                    done = await anyio.run_process(cmd, stdin=subprocess.DEVNULL, check=False)
            if done.returncode != 0:
                lines = done.stderr.decode("utf-8", "replace").strip().splitlines()
                why = lines[-1][:300] if lines else f"exit {done.returncode}"
                raise MediaMissing(f"ffmpeg could not cut the {what}: {why}")
            if tmp.stat().st_size < _MIN_OGG:
                raise MediaMissing(f"the {what} has no audio between {start:g} s and {end:g} s")
            os.replace(tmp, dest)
            log.info("desk_media.excerpt", what=what, start=start, end=end, bytes=dest.stat().st_size)
        except TimeoutError:
            raise MediaMissing(f"ffmpeg did not cut the {what} within {self.ffmpeg_timeout:g} s") from None
        finally:
            tmp.unlink(missing_ok=True)

    # -- resources and the cache ----------------------------------------------------------------
    async def _media(self) -> SafeFetcher:
        async with self._opening:
            if self._fetcher is None:
                from firehose_mod.scan.netguard import outbound_client
                from firehose_mod.scan.registry import media_fetcher

                client = await self._owned.enter_async_context(outbound_client(self.settings))
                self._fetcher = await self._owned.enter_async_context(media_fetcher(self.settings, client))
        return self._fetcher

    async def _catalogue_store(self) -> CatalogueStore:
        async with self._opening:
            if self._catalogue is None:
                try:
                    if self.settings.database_url and self._catalogue_path == self.settings.db_path:
                        from firehose_mod.store.pg.catalogue import PgCatalogueStore  # the shared catalogue

                        self._catalogue = await PgCatalogueStore.open(self.settings.database_url)
                    else:
                        self._catalogue = await CatalogueStore.open(self._catalogue_path, readonly=True)
                except (sqlite3.Error, SchemaError, DatabaseUnreachable) as exc:  # missing, unreadable or newer
                    raise MediaMissing(f"the catalogue cannot be read: {exc}") from None
                self._owned.push_async_callback(close_shielded, self._catalogue)
        return self._catalogue

    async def _cached(self, identity: str, suffix: str, make: Callable[[Path], Awaitable[None]]) -> Path:
        key = hashlib.sha256(identity.encode()).hexdigest()[:40] + suffix
        dest = self.cache_dir / key
        lock = self._locks.setdefault(key, anyio.Lock())
        try:
            async with lock:  # one encode per key; a second request waits and shares it
                if dest.exists():
                    os.utime(dest)  # mtime = last use, for LRU eviction
                    return dest
                await make(dest)
                self._evict(keep=dest)
                return dest
        finally:
            if not lock.locked() and lock.statistics().tasks_waiting == 0:
                self._locks.pop(key, None)

    def _tmp(self, dest: Path) -> Path:
        fd, name = tempfile.mkstemp(dir=self.cache_dir, prefix=f".{dest.name}.", suffix=".part")
        os.close(fd)
        return Path(name)

    def _evict(self, keep: Path) -> None:
        """Delete least recently used files until the desk cache fits `max_cache_bytes`."""
        entries = []
        for path in self.cache_dir.iterdir():
            with suppress(FileNotFoundError):  # another request evicted it meanwhile
                if path != keep and not path.name.startswith(".") and path.is_file():
                    entries.append((path.stat().st_mtime, path.stat().st_size, path))
        total = sum(size for _, size, _ in entries) + keep.stat().st_size
        for _, size, path in sorted(entries):
            if total <= self.max_cache_bytes:
                break
            path.unlink(missing_ok=True)
            total -= size
