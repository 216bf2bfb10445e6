"""`/admin/api/review/...`: the review desk as JSON, for an operator's scripts and an LLM agent.

The same contract as the CLI: every call is `ReviewDesk`'s typed method, acting as the named
operator whose token is in `Authorization: Bearer <token>` (`firehose-mod operator add`); the
desk checks the role (an agent may only propose and comment). Errors are the atproto shape:
401 AuthRequired, 403 Forbidden, 404 NotFound, 400 InvalidRequest, 409 Conflict.

    GET  /admin/api/review/items?status=open&kind=copyright&value=..&uploader=DID&newest=1&limit=&after=
    GET  /admin/api/review/items/{id}
    POST /admin/api/review/{confirm|reject|allow|escalate|accept|comment|propose}
         {"ids": [1, 2], "reason": "...", "dry_run": false, "decision": "reject" (propose only)}
    POST /admin/api/review/open   {"uri": "at://...", "value": "sexual", "reason": "...", "cid": null}
    POST /admin/api/review/batch  {"ids": [1, 2]}  -> a link another moderator can open
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from firehose_mod.review import states as st
from firehose_mod.review.actors import Actor, Forbidden, Unauthenticated
from firehose_mod.review.desk import DeskBusy, item_json
from firehose_mod.review.service import ReviewServices, review_link
from firehose_mod.server.xrpc import XrpcError, json_response, procedure, xrpc_error
from firehose_mod.store.review import ItemQuery

PREFIX = "/admin/api/review"
BATCH_ACTIONS = ("confirm", "reject", "allow", "escalate", "accept", "comment", "propose")


def add_routes(r: web.UrlDispatcher, review: ReviewServices, settings) -> None:
    api = ReviewApi(review, settings)
    r.add_get(f"{PREFIX}/items", api.guarded(api.items))
    r.add_get(f"{PREFIX}/items/{{id}}", api.guarded(api.item))
    r.add_post(f"{PREFIX}/open", procedure(api.guarded_body(api.open)))
    r.add_post(f"{PREFIX}/batch", procedure(api.guarded_body(api.batch)))
    for action in BATCH_ACTIONS:
        r.add_post(f"{PREFIX}/{action}", procedure(api.guarded_body(api.acting(action))))


class ReviewApi:
    def __init__(self, review: ReviewServices, settings):
        self.review = review
        self.settings = settings

    async def _actor(self, request: web.Request) -> Actor:
        auth = request.headers.get("Authorization", "")
        token = auth[7:].strip() if auth.startswith("Bearer ") else None
        return await self.review.operators.authenticate(token)

    def guarded(self, fn: Callable[[web.Request, Actor], Awaitable[web.Response]]):
        async def handler(request: web.Request) -> web.Response:
            try:
                return await fn(request, await self._actor(request))
            except Exception as exc:  # noqa: BLE001 - mapped to the atproto error shape, or re-raised
                return _error(exc)
        return handler

    def guarded_body(self, fn: Callable[[web.Request, Actor, dict], Awaitable[web.Response]]):
        async def handler(request: web.Request, body: dict) -> web.Response:
            try:
                return await fn(request, await self._actor(request), body)
            except Exception as exc:  # noqa: BLE001
                return _error(exc)
        return handler

    async def items(self, request: web.Request, actor: Actor) -> web.Response:
        q = request.query
        statuses = tuple(q.getall("status", [])) or tuple(sorted(st.WAITING))
        if statuses == ("all",):
            statuses = st.STATUSES
        query = ItemQuery(statuses=statuses, kinds=tuple(q.getall("kind", [])), values=tuple(q.getall("value", [])),
                          uploader=q.get("uploader") or None, newest_first=q.get("newest") in ("1", "true"),
                          limit=_int(q.get("limit"), 100, 1, 500), after_id=_int(q.get("after"), None, 0, 2**62))
        items = await self.review.desk.list(actor, query)
        return json_response({"items": [item_json(i) for i in items],
                              "cursor": items[-1].id if len(items) == query.limit else None})

    async def item(self, request: web.Request, actor: Actor) -> web.Response:
        view = await self.review.desk.show(actor, _int(request.match_info["id"], None, 1, 2**62))
        return json_response(view.to_json())

    def acting(self, action: str):
        async def act(request: web.Request, actor: Actor, body: dict) -> web.Response:
            ids = _ids(body)
            reason, dry_run = body.get("reason"), bool(body.get("dry_run", False))
            if reason is not None and not isinstance(reason, str):
                raise ValueError("reason must be a string")
            if action == "propose":
                decision = body.get("decision")
                if decision not in st.DECISIONS:
                    raise ValueError(f"decision must be one of {list(st.DECISIONS)}")
                outcome = await self.review.desk.propose(actor, ids, decision, reason=reason or "",
                                                         details=body.get("details"), dry_run=dry_run)
            else:
                outcome = await self.review.desk.act(actor, action, ids, reason=reason, dry_run=dry_run)
            return json_response(outcome.to_json())
        return act

    async def open(self, request: web.Request, actor: Actor, body: dict) -> web.Response:
        uri, value, reason = body.get("uri"), body.get("value"), body.get("reason")
        if not all(isinstance(x, str) and x for x in (uri, value, reason)):
            raise ValueError("uri, value and reason are required strings")
        outcome = await self.review.desk.open(actor, uri, value, reason=reason, cid=body.get("cid"),
                                              dry_run=bool(body.get("dry_run", False)))
        return json_response(outcome.to_json())

    async def batch(self, request: web.Request, actor: Actor, body: dict) -> web.Response:
        batch = await self.review.desk.create_batch(actor, _ids(body))
        return json_response({"batch": batch.id, "link": review_link(self.settings, batch.id)})


def _ids(body: dict) -> list[int]:
    ids = body.get("ids")
    if not isinstance(ids, list) or not ids or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise ValueError("ids must be a non-empty list of item ids")
    if len(ids) > 500:
        raise ValueError("at most 500 items per call")
    return ids


def _int(raw: str | None, default, low: int, high: int):
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{raw[:40]!r} is not an integer") from None
    if not low <= value <= high:
        raise ValueError(f"{value} is outside {low}..{high}")
    return value


def _error(exc: Exception) -> web.Response:
    if isinstance(exc, Unauthenticated):
        return xrpc_error(401, "AuthRequired", f"{exc}: send Authorization: Bearer <an operator token>")
    if isinstance(exc, Forbidden):
        return xrpc_error(403, "Forbidden", str(exc))
    if isinstance(exc, LookupError):
        return xrpc_error(404, "NotFound", str(exc).strip("'\""))
    if isinstance(exc, DeskBusy):
        return xrpc_error(409, "Conflict", str(exc))
    if isinstance(exc, (ValueError, XrpcError)):
        return xrpc_error(400, "InvalidRequest", str(exc))
    raise exc
