"""A real HTTP server on 127.0.0.1:0 in a thread, for the fakes of the outside world."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class LocalHTTPServer:
    """Subclasses answer requests in `handle(h, method)`; `start`/`stop` or `with` run it."""

    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None

    def handle(self, h: BaseHTTPRequestHandler, method: str) -> None:
        raise NotImplementedError

    @property
    def port(self) -> int:
        assert self._server is not None, f"start the {type(self).__name__} first"
        return self._server.server_address[1]

    def start(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (stdlib name)
                fake._dispatch(self, "GET")

            def do_POST(self) -> None:  # noqa: N802 (stdlib name)
                fake._dispatch(self, "POST")

            def log_message(self, *args) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02},
                                        daemon=True)
        self._thread.start()
        return self

    def _dispatch(self, h: BaseHTTPRequestHandler, method: str) -> None:
        try:
            self.handle(h, method)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (a size or time limit): expected

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=5)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
