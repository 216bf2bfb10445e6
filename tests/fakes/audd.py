"""A local AudD enterprise endpoint over real HTTP on 127.0.0.1:0 (threaded stdlib server).

It reads what AudD reads (a multipart POST with `api_token`, `file`, `skip`, `every`, `limit`,
`accurate_offsets`, ...) and answers in AudD's enterprise format:
`{"status": "success", "result": [{"offset": "MM:SS", "songs": [...]}]}` or
`{"status": "error", "error": {"error_code": N, "error_message": "..."}}`.

Knobs: `mode` = "match" (the `song` in `match_chunks` chunks), "nomatch" (empty result) or
"error" (`error_code` / `error_message`); `fail_times` answers HTTP 500 that many times before
the mode applies. Every request's fields (file bytes as `file`) are kept in `requests`.
"""

from __future__ import annotations

import json
import threading
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler

from tests.fakes.http import LocalHTTPServer

SONG = {
    "artist": "Imagine Dragons", "title": "Warriors", "album": "Warriors", "release_date": "2014-09-18",
    "label": "Universal Music", "timecode": "00:40", "song_link": "https://lis.tn/Warriors",
    "isrc": "USUM71414142", "upc": "00602547064521", "score": 100,
}


def parse_multipart(content_type: str, body: bytes) -> dict[str, bytes | str]:
    """multipart/form-data -> {name: text, or bytes for file parts}."""
    message = BytesParser(policy=HTTP).parsebytes(
        f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode() + body)
    fields: dict[str, bytes | str] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True) or b""
        fields[name] = payload if part.get_filename() else payload.decode()
    return fields


class FakeAudd(LocalHTTPServer):
    def __init__(self, *, mode: str = "match", match_chunks: tuple[str, ...] = ("00:00", "00:24", "00:48"),
                 song: dict | None = None, fail_times: int = 0, error_code: int = 901,
                 error_message: str = "Recognition failed: authorization failed: no api_token passed "
                                      "and the limit was reached. Get an api_token from dashboard.audd.io."):
        self.mode = mode
        self.match_chunks = match_chunks
        self.song = song or dict(SONG)
        self.fail_times = fail_times
        self.error_code = error_code
        self.error_message = error_message
        self.requests: list[dict[str, bytes | str]] = []
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def response(self) -> tuple[int, dict]:
        with self._lock:
            if self.fail_times > 0:
                self.fail_times -= 1
                return 500, {"error": "internal"}
        if self.mode == "error":
            return 200, {"status": "error", "error": {"error_code": self.error_code,
                                                      "error_message": self.error_message},
                         "request_params": {}}
        if self.mode == "nomatch":
            return 200, {"status": "success", "result": []}
        chunks = [{"offset": offset, "songs": [{**self.song, "start_offset": 1200, "end_offset": 11800}]}
                  for offset in self.match_chunks]
        return 200, {"status": "success", "result": chunks}

    def handle(self, h: BaseHTTPRequestHandler, method: str) -> None:
        body = h.rfile.read(int(h.headers.get("content-length", 0)))
        fields = parse_multipart(h.headers.get("content-type", ""), body)
        with self._lock:
            self.requests.append(fields)
        status, answer = self.response()
        data = json.dumps(answer).encode()
        h.send_response(status)
        h.send_header("content-type", "application/json")
        h.send_header("content-length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)
