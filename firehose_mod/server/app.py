"""The front door: one aiohttp server on one port; every endpoint is one line in `_add_routes`.

aiohttp gives HTTP/1.1 with keep-alive (a C parser), WebSocket upgrades on the same port, and
runs on the daemon's asyncio loop. What every answer follows (the atproto error shape, body
and header limits, CORS) lives in `xrpc.py`; who is an operator in `admin.py`.

Adding an endpoint is one line in `LabelServer._add_routes`:
- an XRPC query: `r.add_get("/xrpc/<nsid>", self._handler)`;
- an XRPC procedure: `r.add_post("/xrpc/<nsid>", procedure(self._handler))`: the handler gets
  the parsed JSON object; bodies over `xrpc.MAX_BODY` are a 413;
- an operator endpoint: a path under `/admin/` (no CORS), starting with `await self._require_operator(request)`;
- an HTML page: `r.add_get("/path", ...)` answering `web.Response(text=..., content_type="text/html")`.
Other `/xrpc/` paths answer 501 MethodNotImplemented; a known path asked with another method 405.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

import anyio
import structlog
from aiohttp import web
from anyio.abc import TaskStatus

from firehose_mod import __version__
from firehose_mod.config import Settings
from firehose_mod.review.service import ReviewServices
from firehose_mod.server import desk_page, report_api, review_api
from firehose_mod.server.admin import is_operator
from firehose_mod.server.feed import LabelFeed
from firehose_mod.server.metrics import ServerMetrics
from firehose_mod.server.query import QueryStopped, int_param, query_labels
from firehose_mod.server.subscribe import JSON_PREFIX, serve_subscriber
from firehose_mod.server.xrpc import (
    HEADER_LIMITS, MAX_BODY, ProtocolLog, XrpcError, count_requests, cors, errors, json_response, xrpc_error,
)
from firehose_mod.store.query import QueryBudget

log = structlog.get_logger(__name__)

SUBSCRIBE = "/xrpc/com.atproto.label.subscribeLabels"
QUERY = "/xrpc/com.atproto.label.queryLabels"
KEEPALIVE_TIMEOUT = 75.0  # seconds an idle keep-alive connection stays open
HANDLER_GRACE = 1.0  # seconds requests in flight get to finish when we stop


def _is_loopback(remote: str) -> bool:
    try:
        return ipaddress.ip_address(remote).is_loopback
    except ValueError:
        return False


def _params(request: web.Request) -> dict[str, list[str]]:
    return {name: request.query.getall(name) for name in set(request.query.keys())}


class LabelServer:
    """subscribeLabels + queryLabels + discovery and operator endpoints over one label feed."""

    def __init__(self, settings: Settings, feed: LabelFeed, metrics: ServerMetrics, *, admin_token: str | None = None,
                 review: ReviewServices | None = None, media=None, reports=None):
        self.settings = settings
        self.review = review  # the review desk, when the daemon runs it: /admin/api/review/..., /admin/review
        self.media = media  # server.desk_media.DeskMedia: the page's excerpts and thumbnails
        self.reports = reports  # (ReportDesk, ServiceAuthVerifier): createReport and getAppeals
        self.feed = feed
        self.metrics = metrics
        self.admin_token = admin_token
        self.query_budget = QueryBudget()
        self.port: int | None = None
        # Async callables whose dicts are merged into /admin/status (ingest, queue, ...).
        self.status_providers: list[Callable] = []
        self.app = web.Application(client_max_size=MAX_BODY,
                                   middlewares=[count_requests(metrics.http_requests), cors, errors])
        self._add_routes(self.app.router)

    def _add_routes(self, r: web.UrlDispatcher) -> None:
        # XRPC: queries are GET; procedures are POST through `xrpc.procedure`.
        r.add_get(SUBSCRIBE, self._subscribe)
        r.add_get(JSON_PREFIX + SUBSCRIBE, self._subscribe)  # the same stream in JSON text frames (subscribe.py)
        r.add_get(QUERY, self._query)
        r.add_get("/xrpc/_health", self._health)
        # Discovery and monitoring: public.
        r.add_get("/.well-known/did.json", self._did_document)
        r.add_get("/metrics", self._metrics)
        # Operators only.
        r.add_get("/admin/status", self._status)
        if self.review is not None:  # named operators' bearer tokens, roles checked by the desk
            review_api.add_routes(r, self.review, self.settings)
            desk_page.add_routes(r, self.review, self.settings, self.feed.log, self.media)
        if self.reports is not None:  # atproto service JWTs: reports and appeals from the network
            report_api.add_routes(r, *self.reports)
        if self.review is not None and self.review.plyr is not None:  # [plyr_compat]: plyr.fm's backend contract
            self.review.plyr.add_routes(r)

    async def serve(self, *, task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED) -> None:
        """Listen until cancelled; reports the bound port through `task_status`."""
        s = self.settings
        runner = web.AppRunner(self.app, access_log=None, handler_cancellation=True, shutdown_timeout=HANDLER_GRACE,
                               keepalive_timeout=KEEPALIVE_TIMEOUT, logger=ProtocolLog(), **HEADER_LIMITS)
        await runner.setup()
        try:
            await web.TCPSite(runner, s.host, s.port).start()
            self.port = runner.addresses[0][1]
            log.info("server.listening", host=s.host, port=self.port, did=s.did)
            task_status.started(self.port)
            await anyio.sleep_forever()
        finally:
            with anyio.CancelScope(shield=True):
                await self._stop(runner)

    async def _stop(self, runner: web.AppRunner) -> None:
        """Bounded whatever the clients do: no new connections; each subscriber gets the close
        handshake (1001) and is cut if it has not answered within CLOSE_TIMEOUT; requests in
        flight get HANDLER_GRACE seconds."""
        for site in list(runner.sites):
            await site.stop()
        async with anyio.create_task_group() as tg:
            for sub in list(self.feed.subscribers.values()):
                if sub.connection is not None:
                    tg.start_soon(sub.connection.close, 1001, "server stopping")
        await runner.cleanup()

    def _remote(self, request: web.Request) -> str:
        peer = request.remote or ""
        forwarded = request.headers.get("X-Forwarded-For")
        if forwarded and _is_loopback(peer):
            return forwarded.split(",")[0].strip()[:100]
        return peer

    async def _require_operator(self, request: web.Request) -> None:
        """The data directory's admin.token (`firehose-mod status` on this machine) or a named
        admin's or moderator's token (`firehose-mod operator add`); agents are not operators here."""
        if is_operator(request, self.admin_token):
            return
        auth = request.headers.get("Authorization", "")
        if self.review is not None and auth[:7].lower() == "bearer ":
            try:
                actor = await self.review.operators.authenticate(auth[7:].strip())
            except PermissionError:
                actor = None
            if actor is not None and actor.role in ("admin", "moderator"):
                return
        raise web.HTTPUnauthorized(
            headers={"WWW-Authenticate": 'Bearer realm="firehose-mod operator"'},
            text="an operator token is required: Authorization: Bearer <the admin.token file in the data"
                 " directory, or an admin's or moderator's token from firehose-mod operator add>",
        )

    # -- XRPC -------------------------------------------------------------------------------
    async def _subscribe(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("Upgrade", "").lower() != "websocket":
            raise XrpcError("InvalidRequest", "subscribeLabels is a WebSocket endpoint: connect with ws:// or wss://")
        cursor = int_param(_params(request), "cursor", None, 0, 2**53 - 1)
        # Admitted (and counted against the cap) before the first await.
        sub = self.feed.admit(self._remote(request), request.headers.get("User-Agent", "")[:200], cursor)
        if sub is None:
            self.metrics.disconnects.labels("server_full").inc()
            raise XrpcError("ServerFull", "too many subscribers; raise [stream] max_subscribers", 503)
        s = self.settings
        try:
            return await serve_subscriber(request, sub, self.feed, self.metrics, send_timeout=s.stream_send_timeout,
                                          ping_interval=s.stream_ping_interval, ping_timeout=s.stream_ping_timeout)
        finally:
            self.feed.unregister(sub)

    async def _query(self, request: web.Request) -> web.Response:
        try:
            return json_response(await query_labels(self.feed.log, _params(request), self.query_budget))
        except QueryStopped as exc:
            self.metrics.queries_stopped.labels(exc.reason).inc()
            raise

    async def _health(self, request: web.Request) -> web.Response:
        return json_response({"version": __version__})

    # -- discovery, monitoring, operators ---------------------------------------------------
    async def _did_document(self, request: web.Request) -> web.Response:
        did = self.settings.did
        if not did.startswith("did:web:"):
            return xrpc_error(404, "NotFound", "this labeler's DID is not a did:web; its document lives in the PLC directory")
        endpoint = self.settings.public_url or self.settings.endpoint
        return json_response(did_document(did, self.feed.log.key.multibase, endpoint))

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=self.metrics.render(), headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})

    async def _status(self, request: web.Request) -> web.Response:
        await self._require_operator(request)
        body = self.feed.status()
        body.update(did=self.settings.did, key=self.feed.log.key.did_key, version=__version__)
        for provider in self.status_providers:
            body.update(await provider())
        return json_response(body)


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
