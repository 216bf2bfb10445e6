"""The front door's HTTP conventions: JSON answers, the atproto error shape, limits and CORS.

- Every failure, ours or the framework's, leaves as `{"error": Name, "message": ...}` with its
  status, as XRPC clients expect; an unknown `/xrpc/` method is 501 `MethodNotImplemented`,
  a known path asked with another method 405 (with `Allow`).
- Bounds: request bodies `MAX_BODY` (the reference PDS's JSON limit; a handler with a `max_body`
  attribute allows that many bytes and reads its body itself), header lines and the
  number of headers (`HEADER_LIMITS`, given to the HTTP parser), and one value only of the
  headers we act on (`SINGLE_HEADERS`): two `X-Forwarded-For` are a 400, never a guess.
- CORS as the atproto reference PDS sends it (express `cors({maxAge: DAY})`, its defaults):
  `Access-Control-Allow-Origin: *` on every answer; any OPTIONS is a preflight answered 204
  with the default methods, the requested headers reflected, cached a day. Operator paths
  (`ADMIN_PREFIX`) get no CORS header at all: a page on another origin must not read them.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from http import HTTPStatus

import structlog
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

log = structlog.get_logger(__name__)

MAX_BODY = 100 * 1024
HEADER_LIMITS = {"max_line_size": 8190, "max_field_size": 8190, "max_headers": 64}
SINGLE_HEADERS = ("X-Forwarded-For", "Upgrade", "User-Agent")
ADMIN_PREFIX = "/admin/"
CORS_METHODS = "GET,HEAD,PUT,PATCH,POST,DELETE"
CORS_MAX_AGE = str(24 * 3600)
_ERROR_NAMES = {400: "InvalidRequest", 401: "AuthenticationRequired", 403: "Forbidden", 404: "NotFound",
                405: "MethodNotAllowed", 413: "PayloadTooLarge", 501: "MethodNotImplemented"}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class XrpcError(Exception):
    """A request we refuse: answered with `status` and `{error, message}`."""

    def __init__(self, error: str, message: str, status: int = 400):
        super().__init__(message)
        self.error = error
        self.message = message
        self.status = status


def json_response(obj: object, status: int = 200) -> web.Response:
    body = json.dumps(obj, separators=(",", ":")).encode()
    return web.Response(status=status, body=body, content_type="application/json", charset="utf-8")


def xrpc_error(status: int, error: str, message: str) -> web.Response:
    return json_response({"error": error, "message": message}, status)


def procedure(handler: Callable[[web.Request, dict], Awaitable[web.StreamResponse]]) -> Handler:
    """An XRPC procedure: POST with a JSON object body of at most MAX_BODY bytes, answered by
    `handler(request, body)`. Register it with `router.add_post("/xrpc/<nsid>", procedure(fn))`."""

    async def wrapped(request: web.Request) -> web.StreamResponse:
        if request.content_type != "application/json":
            raise XrpcError("InvalidRequest", "a procedure takes a JSON body (Content-Type: application/json)")
        raw = await request.read()  # past the application's client_max_size: 413
        try:
            body = json.loads(raw)
        except ValueError:
            raise XrpcError("InvalidRequest", "the body is not valid JSON") from None
        if not isinstance(body, dict):
            raise XrpcError("InvalidRequest", "the body must be a JSON object")
        return await handler(request, body)

    return wrapped


@web.middleware
async def cors(request: web.Request, handler: Handler) -> web.StreamResponse:
    admin = request.path.startswith(ADMIN_PREFIX)
    if request.method == "OPTIONS" and not admin:
        headers = {"Access-Control-Allow-Origin": "*", "Access-Control-Allow-Methods": CORS_METHODS,
                   "Access-Control-Max-Age": CORS_MAX_AGE, "Vary": "Access-Control-Request-Headers"}
        requested = request.headers.get("Access-Control-Request-Headers")
        if requested:
            headers["Access-Control-Allow-Headers"] = requested
        return web.Response(status=204, headers=headers)
    response = await handler(request)
    if not admin and not response.prepared:  # a WebSocket is already on its way
        response.headers["Access-Control-Allow-Origin"] = "*"
    return response


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refuse ambiguous or oversized requests, and answer every failure in the atproto shape."""
    try:
        for name in SINGLE_HEADERS:
            if len(request.headers.getall(name, ())) > 1:
                raise XrpcError("InvalidRequest", f"more than one {name} header")
        limit = getattr(request.match_info.handler, "max_body", MAX_BODY)  # a handler may allow more
        if (request.content_length or 0) > limit:
            raise XrpcError("PayloadTooLarge", f"request bodies are limited to {limit} bytes", 413)
        return await handler(request)
    except XrpcError as exc:
        return xrpc_error(exc.status, exc.error, exc.message)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        if exc.status == 404 and request.path.startswith("/xrpc/"):
            return xrpc_error(501, "MethodNotImplemented", f"{request.path[6:][:100]} is not served here")
        response = xrpc_error(exc.status, _ERROR_NAMES.get(exc.status, HTTPStatus(exc.status).phrase.replace(" ", "")),
                              _message(request, exc))
        for name in ("Allow", "WWW-Authenticate"):
            if name in exc.headers:
                response.headers[name] = exc.headers[name]
        return response
    except ConnectionError:
        raise
    except Exception:
        log.exception("http.handler_failed", path=request.path[:200], method=request.method)
        return xrpc_error(500, "InternalServerError", "the server failed to answer; see its log")


def _message(request: web.Request, exc: web.HTTPException) -> str:
    if exc.status == 404:
        return f"no such path: {request.path[:200]}"
    if exc.status == 405:
        return f"{request.method} is not served at {request.path[:200]} (allowed: {exc.headers.get('Allow', '')})"
    if exc.status == 413:
        return f"request bodies are limited to {MAX_BODY} bytes"
    return exc.text or exc.reason


class ProtocolLog:
    """What aiohttp itself reports, as our log lines. Requests its parser refuses (bad syntax,
    oversized or repeated singleton headers) are answered 400 by aiohttp and logged here as one
    info line: clients control them, so they are no tracebacks at error level."""

    def debug(self, *args, **kw) -> None:
        pass

    def exception(self, msg: str, *args, exc_info: BaseException | None = None, **kw) -> None:
        if isinstance(exc_info, HttpProcessingError):
            log.info("http.bad_request", error=str(exc_info).replace("\n", " ")[:300])
        else:
            log.error("http.failed", message=msg % args if args else msg, exc_info=exc_info)


def count_requests(requests_total) -> Callable:
    """A middleware counting answers by route and status (`other` for paths we do not serve)."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        response = await handler(request)
        resource = request.match_info.route.resource
        endpoint = resource.canonical if resource is not None and response.status not in (404, 501) else "other"
        requests_total.labels(endpoint, str(response.status)).inc()
        return response

    return middleware
