"""A media host and a PDS's getBlob over real HTTP on 127.0.0.1:0 (threaded stdlib server).

    with MediaServer() as srv:            # serving at srv.base
        srv.files["/song.mp3"] = (b"...", "audio/mpeg")
        cid = srv.add_blob(DID, b"...")    # served at /xrpc/com.atproto.sync.getBlob?did=&cid=

Routes: any path in `files` (body, content type); `/huge?size=N[&length=0]` (N bytes of audio,
with a Content-Length unless length=0, then close-delimited); `/slow` (audio headers, then a
byte every 0.2 s for a minute); `/hold/NAME` (waits while `held` is set, then serves
`/cover.png`: a scan in flight for as long as a test needs); `/redirect/N` (a chain of N redirects ending at /song.mp3);
`/redirect-to?url=U` (302 to U, wherever it points: the client must refuse private targets
without connecting); getBlob, answering `blob_type` as content type, 500 while `blob_fail`,
404 for unknown blobs, and `blob_tamper` bytes instead of the real ones. `requests` logs
every (path, query) for tests to count, `hosts` the Host headers.
"""

from __future__ import annotations

import base64
import hashlib
import threading
import time
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qsl, urlsplit

from tests.fakes.http import LocalHTTPServer

GET_BLOB = "/xrpc/com.atproto.sync.getBlob"
SONG = b"ID3" + bytes(range(256)) * 40  # ~10 KiB that only needs to be bytes
COVER = b"\x89PNG\r\n\x1a\n" + bytes(2000)


def raw_cid(data: bytes) -> str:
    """The CIDv1 (raw codec, sha2-256, base32) atproto gives a blob with these bytes."""
    cid = bytes([0x01, 0x55, 0x12, 0x20]) + hashlib.sha256(data).digest()
    return "b" + base64.b32encode(cid).decode().lower().rstrip("=")


class MediaServer(LocalHTTPServer):
    def __init__(self) -> None:
        self.files: dict[str, tuple[bytes, str]] = {
            "/song.mp3": (SONG, "audio/mpeg"),
            "/cover.png": (COVER, "image/png"),
            "/page.html": (b"<html>not a song</html>", "text/html; charset=utf-8"),
            "/cover.svg": (b"<svg xmlns='http://www.w3.org/2000/svg'/>", "image/svg+xml"),
        }
        self.blobs: dict[tuple[str, str], bytes] = {}
        self.blob_type = "audio/mpeg"
        self.blob_fail = False
        self.blob_tamper: bytes | None = None
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.hosts: list[str] = []  # Host headers, to see which name a pinned connection carried
        self.held = threading.Event()  # set: /hold/* requests wait until it is cleared
        self._lock = threading.Lock()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def add_blob(self, did: str, data: bytes) -> str:
        cid = raw_cid(data)
        self.blobs[(did, cid)] = data
        return cid

    def count(self, path: str) -> int:
        with self._lock:
            return sum(1 for p, _ in self.requests if p == path)

    def handle(self, h: BaseHTTPRequestHandler, method: str) -> None:
        url = urlsplit(h.path)
        query = dict(parse_qsl(url.query))
        with self._lock:
            self.requests.append((url.path, query))
            self.hosts.append(h.headers.get("host", ""))
        self._route(h, url.path, query)

    # -- routes ----------------------------------------------------------------------------
    def _route(self, h: BaseHTTPRequestHandler, path: str, query: dict[str, str]) -> None:
        if path in self.files:
            body, ctype = self.files[path]
            return _send(h, 200, body, ctype)
        if path == "/huge":
            size = int(query.get("size", 10_000_000))
            h.send_response(200)
            h.send_header("content-type", "audio/mpeg")
            if query.get("length", "1") != "0":
                h.send_header("content-length", str(size))
            h.end_headers()
            for _ in range(0, size, 65536):
                h.wfile.write(b"\0" * 65536)
            return None
        if path == "/slow":
            h.send_response(200)
            h.send_header("content-type", "audio/mpeg")
            h.send_header("content-length", "300")
            h.end_headers()
            for _ in range(300):
                h.wfile.write(b"\0")
                h.wfile.flush()
                time.sleep(0.2)
            return None
        if path.startswith("/hold/"):
            while self.held.is_set():
                time.sleep(0.05)
            body, ctype = self.files["/cover.png"]
            return _send(h, 200, body, ctype)
        if path.startswith("/redirect/"):
            n = int(path.rsplit("/", 1)[1])
            return _redirect(h, f"/redirect/{n - 1}" if n > 1 else "/song.mp3")
        if path == "/redirect-to":
            return _redirect(h, query["url"])
        if path == GET_BLOB:
            return self._get_blob(h, query)
        return _send(h, 404, b'{"error":"NotFound"}', "application/json")

    def _get_blob(self, h: BaseHTTPRequestHandler, query: dict[str, str]) -> None:
        if self.blob_fail:
            return _send(h, 500, b'{"error":"InternalServerError"}', "application/json")
        data = self.blobs.get((query.get("did", ""), query.get("cid", "")))
        if data is None:
            return _send(h, 400, b'{"error":"BlobNotFound","message":"Blob not found"}', "application/json")
        return _send(h, 200, self.blob_tamper if self.blob_tamper is not None else data, self.blob_type)


def _send(h: BaseHTTPRequestHandler, status: int, body: bytes, ctype: str) -> None:
    h.send_response(status)
    h.send_header("content-type", ctype)
    h.send_header("content-length", str(len(body)))
    h.end_headers()
    h.wfile.write(body)


def _redirect(h: BaseHTTPRequestHandler, location: str) -> None:
    h.send_response(302)
    h.send_header("location", location)
    h.send_header("content-length", "0")
    h.end_headers()
