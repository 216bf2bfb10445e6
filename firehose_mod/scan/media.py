"""Fetching a track's media from strangers' servers, safely, into a content-keyed disk cache.

Every URL here comes from a stranger's record or DID document, so the fetcher is built
against server-side request forgery and resource exhaustion:

- **Addresses.** Every TCP connection goes through `netguard._VettingBackend`: it resolves the host
  itself (`anyio.getaddrinfo`), refuses if *any* answer is loopback, private, link-local,
  CGNAT, multicast, reserved or unspecified (IPv4 inside IPv6 included), then connects to
  exactly those vetted addresses. Vetting and connecting use one resolution, so a DNS
  answer that changes between check and use (rebinding) cannot slip through; the URL keeps
  its hostname, so TLS SNI, certificate checks and the Host header are the normal ones.
  Redirects are followed by hand, and each hop's connection is vetted the same way.
  `allow_networks` lets tests (and only tests, or a deliberate operator) reach e.g.
  127.0.0.1/32 while every other private range stays refused.
- **Schemes.** https only; http when `allow_http` (local test servers). A plain-http
  download from the public internet could be rewritten on the path to frame an uploader.
- **Bounds.** One deadline (`timeout`) covers DNS, redirects and the whole body;
  `max_redirects` hops; size limits checked against Content-Length and while streaming.
- **Types.** `audio/*` (and `application/ogg`) for audio, raster `image/*` for cover art;
  `application/octet-stream` only from getBlob, where the record's own `mimeType` is trusted;
  from getBlob also the `video/*` type the record declares for the blob: a PDS names a blob by
  sniffing its bytes, and an audio-only MP4 or WebM is `video/mp4` or `video/webm` there (the
  audio scanner reads the audio stream through ffmpeg's demuxer whitelist). A blob the record
  declares as `application/octet-stream` (audio the PDS could not sniff) is fetched and left to
  the decoder; one it declares as anything else (`image/png`, `text/html`) is not fetched: that
  is `MediaUnavailable` (415), evidence for the policy, not a failure to retry.
- **Answers.** A permanent 4xx (404, 410, 403, a PDS's 400 BlobNotFound) is `MediaUnavailable`:
  the media is gone, and asking again gets the same answer. 5xx, 408, 429, timeouts and
  network errors are plain `MediaError`s, worth a retry.
- **Disk.** Bodies stream to a hidden temp file in `cache_dir`, then an atomic rename; a
  failed or cancelled download leaves nothing behind. Files are keyed by content: the blob
  CID for getBlob (its sha-256 is checked against the CID), sha-256 of the URL otherwise,
  so a second scan reuses the file. The cache is bounded; least recently used files go first.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

import anyio
import httpx
import libipld
import structlog

from firehose_mod.scan.base import MediaError, MediaUnavailable, Track
from firehose_mod.scan.netguard import (  # re-exported: the fetcher's public vocabulary
    IPNetwork,
    Resolve,
    UnsafeAddress,
    VettedTransport,
    address_problem,
    parse_networks,
    system_resolve,
    vetted_addresses,
)

log = structlog.get_logger(__name__)

__all__ = ["SafeFetcher", "UnsafeAddress", "address_problem", "blob_ref", "parse_networks", "vetted_addresses"]

MiB = 1024 * 1024
USER_AGENT = "firehose-mod (plyr.fm moderation labeler)"
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
# 4xx answers that may change if asked again later; every other 4xx is final (MediaUnavailable).
_TRANSIENT_4XX = frozenset({408, 425, 429})
_CHUNK = 64 * 1024
_SHA256 = 0x12


class PdsResolver(Protocol):
    async def resolve_pds(self, did: str) -> str: ...


def blob_ref(blob: object) -> str:
    """The CID of an atproto blob: `ref.$link` (also `ref` as a string), or legacy `cid`."""
    if isinstance(blob, dict):
        ref = blob.get("ref")
        if isinstance(ref, dict):
            ref = ref.get("$link")
        cid = ref if ref is not None else blob.get("cid")
        if isinstance(cid, str) and cid:
            return cid
    raise MediaError("audioBlob has no CID (expected ref.$link or legacy cid)")


def _cid_digest(cid: str) -> bytes | None:
    """The sha-256 a blob with this CID must hash to; None if the CID is not CIDv1 sha-256."""
    if not cid.isascii() or not cid.isalnum() or len(cid) > 200:
        raise MediaError(f"blob CID {cid[:80]!r} is not a CID")
    try:
        decoded = libipld.decode_cid(cid)
    except Exception:  # libipld raises ValueError or its own types for junk
        raise MediaError(f"blob CID {cid[:80]!r} is not a CID") from None
    mh = decoded.get("hash") or {}
    if decoded.get("version") == 1 and mh.get("code") == _SHA256 and len(mh.get("digest", b"")) == 32:
        return bytes(mh["digest"])
    return None


def _type_ok(content_type: str, kind: str, octet_ok: bool, container: str | None = None) -> bool:
    main = content_type.split(";", 1)[0].strip().lower()
    if kind == "audio" and container is not None and main == container:
        return True  # the video/* container a getBlob record declared (see the module docstring)
    if kind == "audio" and (main.startswith("audio/") or main == "application/ogg"):
        return True
    # SVG is XML with scripts and entities; no cover-art scanner needs a vector image.
    if kind == "image" and main.startswith("image/") and main != "image/svg+xml":
        return True
    return octet_ok and main == "application/octet-stream"


class SafeFetcher:
    """The `Media` implementation: getBlob from the author's PDS, else audioUrl; imageUrl.

    `resolver` is anything with `async resolve_pds(did) -> str` (the cached `DidResolver`).
    `allow_networks` lists networks that may be reached although private (tests: 127.0.0.1/32);
    `allow_http` permits plain http; `max_cache_bytes` bounds the cache (LRU eviction);
    `resolve` replaces DNS (tests). Use as an async context manager or call `aclose()`.
    """

    def __init__(self, resolver: PdsResolver, *, cache_dir: Path, max_audio_bytes: int = 100 * MiB,
                 max_image_bytes: int = 10 * MiB, timeout: float = 60.0, max_redirects: int = 3,
                 max_cache_bytes: int = 4096 * MiB, allow_networks: Iterable[str | IPNetwork] = (),
                 allow_http: bool = False, resolve: Resolve = system_resolve):
        self.resolver = resolver
        self.cache_dir = Path(cache_dir)
        self.limits = {"audio": max_audio_bytes, "image": max_image_bytes}
        self.timeout = timeout
        self.max_redirects = max_redirects
        self.max_cache_bytes = max_cache_bytes
        self.allow_http = allow_http
        self._client = httpx.AsyncClient(
            transport=VettedTransport(allow=parse_networks(allow_networks), resolve=resolve),
            trust_env=False, follow_redirects=False, timeout=httpx.Timeout(timeout),
            # identity: Content-Length then counts the bytes we store, and no decompression bombs.
            headers={"user-agent": USER_AGENT, "accept-encoding": "identity"},
        )
        self._locks: dict[str, anyio.Lock] = {}
        self.stats = {"fetched": 0, "cache_hits": 0, "bytes": 0, "refused": 0, "failed": 0,
                      "blob_fallbacks": 0, "evicted": 0}
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        for stale in self.cache_dir.glob(".*.part"):  # left by a crash mid-download
            stale.unlink(missing_ok=True)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def __aenter__(self) -> SafeFetcher:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- the Media protocol -------------------------------------------------------------------
    async def audio(self, track: Track) -> Path | None:
        """The audio file: audioBlob via getBlob, falling back to audioUrl; None if neither."""
        blob, url = track.record.get("audioBlob"), track.record.get("audioUrl")
        blob_error: MediaError | None = None
        if blob is not None:
            try:
                meta = blob if isinstance(blob, dict) else {}
                return await self.fetch_blob(track.did, blob_ref(blob), declared_size=meta.get("size"),
                                             mime_type=meta.get("mimeType"))
            except MediaError as exc:
                if not isinstance(url, str):
                    raise
                blob_error = exc
                self.stats["blob_fallbacks"] += 1
                log.warning("media.blob_fallback", uri=track.uri, error=str(exc), why="using audioUrl")
        if not isinstance(url, str):
            return None
        try:
            return await self.fetch_url(url, "audio")
        except MediaUnavailable as exc:
            if blob_error is None or isinstance(blob_error, MediaUnavailable):
                raise
            # The blob may still come back: the audio is not gone while that is unsettled.
            raise MediaError(f"audioBlob: {blob_error}; audioUrl: {exc}") from None

    async def image(self, track: Track) -> Path | None:
        """The cover art (imageUrl), or None if the record has none."""
        url = track.record.get("imageUrl")
        return await self.fetch_url(url, "image") if isinstance(url, str) else None

    # -- fetching -----------------------------------------------------------------------------
    async def fetch_url(self, url: str, kind: str) -> Path:
        """Fetch `url` as `kind` ("audio" or "image") into the cache; MediaError says why not."""
        if kind not in self.limits:
            raise ValueError(f"kind must be audio or image, not {kind!r}")
        key = f"{kind}-url-{hashlib.sha256(url.encode()).hexdigest()[:40]}"
        return await self._cached(key, lambda dest: self._download(url, kind, dest))

    async def fetch_blob(self, did: str, cid: str, *, declared_size: object = None,
                         mime_type: object = None) -> Path:
        """Fetch an audio blob with com.atproto.sync.getBlob from `did`'s PDS.

        A PDS may answer application/octet-stream; that is accepted only when the record
        declared an `audio/*` mimeType for the blob. A `video/*` answer is accepted when it is
        the type the record declared (an audio-only MP4 or WebM, as the PDS sniffed it).
        """
        digest = _cid_digest(cid)
        declared = mime_type.split(";", 1)[0].strip().lower() if isinstance(mime_type, str) else ""
        octet_ok = declared.startswith("audio/") or declared == "application/octet-stream"
        container = declared if declared.startswith("video/") else None
        if declared and not (octet_ok or container or declared == "application/ogg"):
            raise MediaUnavailable(
                f"blob {cid}: the record declares its audio as {declared[:60]!r}, not audio: not fetched",
                status=415, kind="audio", url=f"at://{did}/blob/{cid}")
        if isinstance(declared_size, int) and declared_size > self.limits["audio"]:
            raise MediaError(f"blob {cid} declares {declared_size} bytes, over the {self.limits['audio']}-byte limit")
        # A CID we can verify names the content itself; otherwise keep the PDS's word per account.
        key = f"audio-blob-{cid}" if digest else f"audio-blob-{hashlib.sha256(f'{did} {cid}'.encode()).hexdigest()[:40]}"

        async def download(dest: Path) -> None:
            try:
                pds = await self.resolver.resolve_pds(did)
            except Exception as exc:  # resolver errors are about strangers' DID documents
                raise MediaError(f"cannot find the PDS of {did}: {exc}") from None
            url = f"{pds.rstrip('/')}/xrpc/com.atproto.sync.getBlob"
            await self._download(url, "audio", dest, params={"did": did, "cid": cid}, octet_ok=octet_ok,
                                 digest=digest, container=container)

        return await self._cached(key, download)

    async def _cached(self, key: str, download: Callable[[Path], Awaitable[None]]) -> Path:
        dest = self.cache_dir / key
        lock = self._locks.setdefault(key, anyio.Lock())
        try:
            async with lock:  # one download per key; concurrent scanners wait and share it
                if dest.exists():
                    os.utime(dest)  # mtime = last use, for LRU eviction
                    self.stats["cache_hits"] += 1
                    return dest
                try:
                    await download(dest)
                except UnsafeAddress:
                    self.stats["refused"] += 1
                    raise
                except MediaError:
                    self.stats["failed"] += 1
                    raise
                self.stats["fetched"] += 1
                self._evict(keep=dest)
                return dest
        finally:
            if not lock.locked() and lock.statistics().tasks_waiting == 0:
                self._locks.pop(key, None)

    async def _download(self, url: str, kind: str, dest: Path, *, params: dict | None = None,
                        octet_ok: bool = False, digest: bytes | None = None, container: str | None = None) -> None:
        shown = url[:200]
        try:
            with anyio.fail_after(self.timeout):
                response = await self._open(url, kind, params)
                try:
                    await self._store(response, kind, dest, octet_ok, digest, container)
                finally:
                    await response.aclose()
        except TimeoutError:
            raise MediaError(f"{shown}: not fetched within {self.timeout:g} s") from None
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise MediaError(f"{shown}: {type(exc).__name__}: {exc}"[:500]) from None
        log.info("media.fetched", url=shown, kind=kind, bytes=dest.stat().st_size)

    async def _open(self, url: str, kind: str, params: dict | None) -> httpx.Response:
        """GET `url`, following up to `max_redirects` redirects by hand; the 200 response, streaming."""
        accept = "audio/*, application/octet-stream;q=0.5" if kind == "audio" else "image/*"
        for hop in range(self.max_redirects + 1):
            self._check_url(url)
            request = self._client.build_request("GET", url, params=params, headers={"accept": accept})
            params = None  # a redirect's Location is complete
            response = await self._client.send(request, stream=True)
            if response.status_code in _REDIRECTS:
                location = response.headers.get("location")
                await response.aclose()
                if not location:
                    raise MediaError(f"{url[:200]}: HTTP {response.status_code} without a Location")
                url = str(response.url.join(location))
                log.debug("media.redirect", to=url[:200], hop=hop + 1)
                continue
            if response.status_code != 200:
                await response.aclose()
                status = response.status_code
                if 400 <= status < 500 and status not in _TRANSIENT_4XX:
                    where = str(request.url)  # with getBlob's did and cid
                    raise MediaUnavailable(f"{where[:300]}: HTTP {status}", status=status, kind=kind, url=where)
                raise MediaError(f"{url[:200]}: HTTP {status}")
            return response
        raise MediaError(f"{url[:200]}: more than {self.max_redirects} redirects")

    def _check_url(self, url: str) -> None:
        try:
            parts = urlsplit(url)
            host, _ = parts.hostname, parts.port  # .port raises ValueError when out of range
        except ValueError:
            raise MediaError(f"{url[:200]}: not a URL") from None
        schemes = ("https", "http") if self.allow_http else ("https",)
        if parts.scheme.lower() not in schemes:
            raise UnsafeAddress(f"{url[:200]}: only {' and '.join(schemes)} URLs are fetched")
        if not host or parts.username is not None or len(url) > 8192:
            raise UnsafeAddress(f"{url[:200]}: not a plain http(s) URL with a host")

    async def _store(self, response: httpx.Response, kind: str, dest: Path, octet_ok: bool,
                     digest: bytes | None, container: str | None = None) -> None:
        shown, limit = str(response.url)[:200], self.limits[kind]
        content_type = response.headers.get("content-type", "")
        if not _type_ok(content_type, kind, octet_ok, container):
            raise MediaError(f"{shown}: content type {content_type[:60]!r} is not {kind}")
        length = response.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            raise MediaError(f"{shown}: {length} bytes is over the {limit}-byte {kind} limit")
        fd, tmp_name = tempfile.mkstemp(dir=self.cache_dir, prefix=f".{dest.name}.", suffix=".part")
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            size, hasher = 0, hashlib.sha256()
            async with await anyio.open_file(tmp, "wb") as out:
                async for chunk in response.aiter_bytes(_CHUNK):
                    size += len(chunk)
                    if size > limit:
                        raise MediaError(f"{shown}: body is over the {limit}-byte {kind} limit")
                    hasher.update(chunk)
                    await out.write(chunk)
            if digest is not None and hasher.digest() != digest:
                raise MediaError(f"{shown}: the blob's bytes do not match its CID")
            os.replace(tmp, dest)
            self.stats["bytes"] += size
        finally:
            tmp.unlink(missing_ok=True)  # no-op after the rename; removes a partial file otherwise

    def _evict(self, keep: Path) -> None:
        """Delete least recently used files until the cache fits `max_cache_bytes`."""
        entries = []
        for path in self.cache_dir.iterdir():
            if path.name.startswith(".") or path == keep:
                continue
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            entries.append((st.st_mtime, st.st_size, path))
        total = sum(size for _, size, _ in entries) + keep.stat().st_size
        for _, size, path in sorted(entries):
            if total <= self.max_cache_bytes:
                break
            path.unlink(missing_ok=True)
            total -= size
            self.stats["evicted"] += 1
            log.debug("media.evicted", file=path.name, bytes=size)
