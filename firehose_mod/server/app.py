"""The HTTP and WebSocket front door: one `websockets` server, routed by path.

WebSocket upgrades go to subscribeLabels; plain GET requests are answered from
`process_request` (queryLabels, health, metrics, status, did.json). Every endpoint is a
GET, which is all the websockets HTTP parser accepts; endpoints that need POST bodies
(reports, appeals) will need a full HTTP server in front of this one.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable
from http import HTTPStatus
from urllib.parse import parse_qs, urlsplit

import anyio
import structlog
from anyio.abc import TaskStatus
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from firehose_mod import __version__
from firehose_mod.config import Settings
from firehose_mod.server.feed import LabelFeed
from firehose_mod.server.metrics import ServerMetrics
from firehose_mod.server.query import XrpcError, query_labels
from firehose_mod.server.subscribe import serve_subscriber

log = structlog.get_logger(__name__)

SUBSCRIBE = "/xrpc/com.atproto.label.subscribeLabels"
QUERY = "/xrpc/com.atproto.label.queryLabels"
CLOSE_TIMEOUT = 2.0  # seconds a subscriber gets to complete the close handshake when we stop


def _response(status: int, body: bytes, content_type: str, extra: dict | None = None) -> Response:
    headers = Headers({"Content-Type": content_type, "Content-Length": str(len(body)), "Connection": "close"})
    headers["Access-Control-Allow-Origin"] = "*"
    for k, v in (extra or {}).items():
        headers[k] = v
    return Response(status, HTTPStatus(status).phrase, headers, body)


def json_response(status: int, obj: object) -> Response:
    return _response(status, json.dumps(obj, separators=(",", ":")).encode(), "application/json; charset=utf-8")


def xrpc_error(status: int, error: str, message: str) -> Response:
    return json_response(status, {"error": error, "message": message})


def _is_loopback(remote: str) -> bool:
    try:
        return ipaddress.ip_address(remote).is_loopback
    except ValueError:
        return False


class LabelServer:
    """subscribeLabels + queryLabels + operator endpoints over one label feed."""

    def __init__(self, settings: Settings, feed: LabelFeed, metrics: ServerMetrics):
        self.settings = settings
        self.feed = feed
        self.metrics = metrics
        self.port: int | None = None
        # Async callables whose dicts are merged into /admin/status (ingest, queue, ...).
        self.status_providers: list[Callable] = []
        self._routes: dict[str, Callable] = {
            QUERY: self._query,
            "/xrpc/_health": self._health,
            "/metrics": self._metrics,
            "/admin/status": self._status,
            "/.well-known/did.json": self._did_document,
        }

    async def serve(self, *, task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED) -> None:
        """Listen until cancelled; reports the bound port through `task_status`."""
        s = self.settings
        async with serve(
            self._handle_ws,
            s.host,
            s.port,
            process_request=self._process_request,
            ping_interval=s.stream_ping_interval,
            ping_timeout=s.stream_ping_timeout,
            compression=None,  # per-client deflate would cost CPU per subscriber per frame
            max_size=64 * 1024,  # subscribers have nothing to send us
            server_header=f"firehose-mod/{__version__}",
            close_timeout=CLOSE_TIMEOUT,
        ) as server:
            self.port = server.sockets[0].getsockname()[1]
            log.info("server.listening", host=s.host, port=self.port, did=s.did)
            task_status.started(self.port)
            try:
                await anyio.sleep_forever()
            finally:
                # A stop is bounded whatever the clients do: each gets the close handshake
                # (1001) for CLOSE_TIMEOUT seconds; a client that reads nothing cannot even
                # receive it, and is cut when the time is up.
                server.close(close_connections=True)
                with anyio.move_on_after(CLOSE_TIMEOUT + 0.5, shield=True):
                    await server.wait_closed()
                for conn in list(server.connections):
                    conn.transport.abort()

    # -- routing ----------------------------------------------------------------------------
    def _remote(self, conn: ServerConnection, request: Request) -> str:
        forwarded = request.headers.get("X-Forwarded-For")
        if forwarded and _is_loopback(str(conn.remote_address[0])):
            return forwarded.split(",")[0].strip()
        return str(conn.remote_address[0])

    async def _process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        url = urlsplit(request.path)
        params = parse_qs(url.query, keep_blank_values=True)
        if request.method != "GET":
            self.metrics.http_requests.labels("other", "405").inc()
            return xrpc_error(405, "MethodNotAllowed", f"{request.method} is not served here: every endpoint is a GET")
        if url.path == SUBSCRIBE:
            return self._check_subscribe(request, params)
        handler = self._routes.get(url.path)
        if handler is None:
            response = (
                xrpc_error(404, "MethodNotImplemented", f"{url.path[6:]} is not served here")
                if url.path.startswith("/xrpc/")
                else xrpc_error(404, "NotFound", f"no such path: {url.path}")
            )
        else:
            try:
                response = await handler(conn, request, params)
            except XrpcError as exc:
                response = xrpc_error(400, exc.error, exc.message)
        self.metrics.http_requests.labels(url.path if handler else "other", str(response.status_code)).inc()
        return response

    def _check_subscribe(self, request: Request, params: dict) -> Response | None:
        if request.headers.get("Upgrade", "").lower() != "websocket":
            return xrpc_error(400, "InvalidRequest", "subscribeLabels is a WebSocket endpoint: connect with ws:// or wss://")
        try:
            _cursor_param(params)
        except XrpcError as exc:
            return xrpc_error(400, exc.error, exc.message)
        if len(self.feed.subscribers) >= self.settings.stream_max_subscribers:
            self.metrics.disconnects.labels("server_full").inc()
            return xrpc_error(503, "ServerFull", "too many subscribers; raise [stream] max_subscribers")
        return None

    async def _handle_ws(self, conn: ServerConnection) -> None:
        params = parse_qs(urlsplit(conn.request.path).query)
        await serve_subscriber(
            conn,
            self.feed,
            self.metrics,
            cursor=_cursor_param(params),
            remote=self._remote(conn, conn.request),
            send_timeout=self.settings.stream_send_timeout,
        )

    # -- plain HTTP endpoints ----------------------------------------------------------------
    async def _query(self, conn, request, params) -> Response:
        return json_response(200, await query_labels(self.feed.log, params))

    async def _health(self, conn, request, params) -> Response:
        return json_response(200, {"version": __version__})

    async def _metrics(self, conn, request, params) -> Response:
        return _response(200, self.metrics.render(), "text/plain; version=0.0.4; charset=utf-8")

    async def _status(self, conn, request, params) -> Response:
        if not _is_loopback(str(conn.remote_address[0])) or request.headers.get("X-Forwarded-For"):
            return xrpc_error(403, "Forbidden", "status is served to loopback clients only")
        body = self.feed.status()
        body.update(did=self.settings.did, key=self.feed.log.key.did_key, version=__version__)
        for provider in self.status_providers:
            body.update(await provider())
        return json_response(200, body)

    async def _did_document(self, conn, request, params) -> Response:
        did = self.settings.did
        if not did.startswith("did:web:"):
            return xrpc_error(404, "NotFound", "this labeler's DID is not a did:web; its document lives in the PLC directory")
        endpoint = self.settings.public_url or self.settings.endpoint
        return json_response(200, did_document(did, self.feed.log.key.multibase, endpoint))


def did_document(did: str, multibase: str, endpoint: str) -> dict:
    """The DID document a did:web labeler serves: its label key and labeler service."""
    return {
        "@context": ["https://www.w3.org/ns/did/v1", "https://w3id.org/security/multikey/v1"],
        "id": did,
        "verificationMethod": [
            {"id": f"{did}#atproto_label", "type": "Multikey", "controller": did, "publicKeyMultibase": multibase}
        ],
        "service": [{"id": "#atproto_labeler", "type": "AtprotoLabeler", "serviceEndpoint": endpoint.rstrip("/")}],
    }


def _cursor_param(params: dict) -> int | None:
    values = params.get("cursor")
    if not values or values[-1] == "":
        return None
    try:
        cursor = int(values[-1])
    except ValueError:
        raise XrpcError("InvalidRequest", f"cursor must be an integer seq, got {values[-1][:40]!r}") from None
    if cursor < 0 or cursor >= 2**53:
        raise XrpcError("InvalidRequest", "cursor must be between 0 and 2^53-1")
    return cursor
