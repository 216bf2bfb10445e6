"""A webhook receiver over real HTTP on 127.0.0.1:0: keeps each POST (headers and raw body)
and answers 204, or 500 for the first `fail_times` requests."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler

from tests.fakes.http import LocalHTTPServer


class FakeWebhook(LocalHTTPServer):
    def __init__(self, *, fail_times: int = 0):
        self.fail_times = fail_times
        self.requests: list[dict] = []
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/firehose-mod"

    def handle(self, h: BaseHTTPRequestHandler, method: str) -> None:
        body = h.rfile.read(int(h.headers.get("content-length", 0)))
        with self._lock:
            self.requests.append({"method": method, "path": h.path, "body": body,
                                  "headers": {k.lower(): v for k, v in h.headers.items()}})
            failing = self.fail_times > 0
            self.fail_times -= failing
        h.send_response(500 if failing else 204)
        h.send_header("content-length", "0")
        h.end_headers()
