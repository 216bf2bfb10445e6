"""The review desk's admin page: server-rendered HTML (Jinja2, autoescaped), a little plain JS.

    GET  /admin/login, POST /admin/login, POST /admin/logout
    GET  /admin/review                      the queue: ?kind=&status=&order=newest&uploader=&value=&batch=
    GET  /admin/review/items/{id}           one item: evidence, history, what each action would emit
    POST /admin/review/preview              a selection + action -> what it will emit (nothing written)
    POST /admin/review/act                  do it (the plan's item versions must still hold)
    POST /admin/review/batch                a shareable link to a selection
    GET  /admin/review/items/{id}/cover.jpg, .../audio/{finding}/{upload|ref}.ogg   from our cache
    GET  /admin/static/{desk.css,desk.js}

Every action goes through `ReviewDesk`, as the signed-in operator: the page shows a dry run of
the action (the labels it emits or negates, the state each item reaches), and the form that acts
carries the item versions it was shown, so a change in between refuses instead of surprising.
"""

from __future__ import annotations

from importlib import resources
from urllib.parse import urlencode

import structlog
from aiohttp import web
from jinja2 import Environment, PackageLoader, select_autoescape

from firehose_mod import __version__
from firehose_mod.review import states as st
from firehose_mod.review.actors import Actor, Forbidden, Unauthenticated
from firehose_mod.review.desk import DeskBusy, Outcome
from firehose_mod.review.service import ReviewServices
from firehose_mod.server import desk_view as V
from firehose_mod.server.desk_session import (
    LOGIN_COOKIE,
    CsrfRefused,
    SessionGate,
    set_cookie,
)
from firehose_mod.store.review import ItemQuery

log = structlog.get_logger(__name__)

SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self';"
                               " media-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
}
DECISIONS = ("confirm", "reject", "allow", "escalate")
PAGE = 50
REPEAT_INFRINGER = 3  # copyright labels in force on one uploader's tracks that flag them as a repeat infringer
STATIC = {"desk.css": "text/css", "desk.js": "text/javascript"}


def add_routes(r: web.UrlDispatcher, review: ReviewServices, settings, label_log, media=None) -> None:
    page = DeskPage(review, settings, label_log, media)
    r.add_get("/admin", page.home)
    r.add_get("/admin/", page.home)
    r.add_get("/admin/login", page.login_form)
    r.add_post("/admin/login", page.login)
    r.add_post("/admin/logout", page.guard(page.logout, form=True))
    r.add_get("/admin/review", page.guard(page.queue))
    r.add_get("/admin/review/items/{id:\\d+}", page.guard(page.item))
    r.add_post("/admin/review/preview", page.guard(page.preview, form=True))
    r.add_post("/admin/review/act", page.guard(page.act, form=True))
    r.add_post("/admin/review/batch", page.guard(page.batch, form=True))
    r.add_get("/admin/review/items/{id:\\d+}/cover.jpg", page.guard(page.cover))
    r.add_get("/admin/review/items/{id:\\d+}/audio/{finding:\\d+}/{which:upload|ref}.ogg", page.guard(page.audio))
    r.add_get("/admin/static/{name}", page.static)


class DeskPage:
    def __init__(self, review: ReviewServices, settings, label_log, media=None):
        self.review, self.settings, self.label_log, self.media = review, settings, label_log, media
        self.gate = SessionGate(review.operators, settings.public_url)
        self.env = Environment(loader=PackageLoader("firehose_mod.server", "templates"),
                               autoescape=select_autoescape(default=True), trim_blocks=True, lstrip_blocks=True)
        self.env.globals.update(clock=V.clock, age=V.age, version=__version__, KEYS=V.ACTION_KEYS,
                                HELP=V.ACTION_HELP, KINDS=st.KINDS, STATUSES=st.STATUSES)

    # -- plumbing --------------------------------------------------------------------------------
    def render(self, name: str, code: int = 200, **ctx) -> web.Response:
        html = self.env.get_template(name).render(**ctx)
        return web.Response(text=html, status=code, content_type="text/html", headers=SECURITY_HEADERS)

    def guard(self, fn, *, form: bool = False):
        """Signed in (else the sign-in page), CSRF-checked for forms, errors as pages."""
        async def handler(request: web.Request) -> web.StreamResponse:
            try:
                actor, csrf = await self.gate.actor(request)
            except Unauthenticated as exc:
                if request.method == "GET" and not request.path.endswith((".jpg", ".ogg")):
                    raise web.HTTPSeeOther("/admin/login?" + urlencode({"next": request.path_qs, "why": str(exc)}))
                return self.render("error.html", 401, title="Sign in again", message=str(exc), actor=None)
            data = None
            try:
                if form:
                    data = await request.post()
                    self.gate.check_csrf(request, data.get("csrf"), csrf)
                return await fn(request, actor, csrf, data)
            except CsrfRefused as exc:
                log.warning("desk.csrf_refused", actor=actor.name, path=request.path, why=str(exc))
                return self.render("error.html", 403, title="Refused", message=str(exc), actor=actor, csrf=csrf)
            except Forbidden as exc:
                return self.render("error.html", 403, title="Not allowed", message=str(exc), actor=actor, csrf=csrf)
            except (LookupError, web.HTTPNotFound) as exc:
                return self.render("error.html", 404, title="Not found", message=str(exc).strip("'\""),
                                   actor=actor, csrf=csrf)
            except (ValueError, DeskBusy) as exc:
                return self.render("error.html", 400, title="Cannot do that", message=str(exc), actor=actor, csrf=csrf)
        return handler

    async def static(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in STATIC:
            raise web.HTTPNotFound()
        body = resources.files("firehose_mod.server").joinpath("static", name).read_bytes()
        return web.Response(body=body, content_type=STATIC[name], headers={"Cache-Control": "max-age=300"})

    # -- signing in ------------------------------------------------------------------------------
    async def home(self, request: web.Request) -> web.Response:
        raise web.HTTPSeeOther("/admin/review")

    async def login_form(self, request: web.Request, error: str | None = None, code: int = 200) -> web.Response:
        token = self.gate.login_token()
        why = error or request.query.get("why")
        nxt = request.query.get("next", "/admin/review")
        resp = self.render("login.html", code, login_csrf=token, error=why if why != "not signed in" else None,
                           next=nxt if nxt.startswith("/admin/") else "/admin/review", actor=None)
        set_cookie(resp, request, self.settings.public_url, LOGIN_COOKIE, token, 1800)
        return resp

    async def login(self, request: web.Request) -> web.Response:
        data = await request.post()
        try:
            self.gate.check_login(request, data.get("login_csrf"))
        except CsrfRefused as exc:
            return await self.login_form(request, str(exc), 403)
        nxt = str(data.get("next") or "/admin/review")
        resp = web.HTTPSeeOther(nxt if nxt.startswith("/admin/") and "//" not in nxt else "/admin/review")
        try:
            actor = await self.gate.sign_in(request, str(data.get("token") or ""), resp)
        except Unauthenticated as exc:
            log.warning("desk.sign_in_refused", remote=request.remote, why=str(exc))
            return await self.login_form(request, f"Sign-in refused: {exc}", 401)
        log.info("desk.signed_in", actor=actor.name, role=actor.role, remote=request.remote)
        raise resp

    async def logout(self, request, actor, csrf, data) -> web.Response:
        resp = web.HTTPSeeOther("/admin/login")
        await self.gate.sign_out(request, resp)
        log.info("desk.signed_out", actor=actor.name)
        raise resp

    # -- the queue -------------------------------------------------------------------------------
    async def queue(self, request: web.Request, actor: Actor, csrf: str, data) -> web.Response:
        q = request.query
        batch_id = q.get("batch")
        status = q.get("status", "waiting")
        statuses = tuple(sorted(st.WAITING)) if status == "waiting" else st.STATUSES if status == "all" else (status,)
        if not set(statuses) <= set(st.STATUSES):
            raise ValueError(f"unknown status {status!r}")
        kind = q.get("kind") or None
        if kind and kind not in st.KINDS:
            raise ValueError(f"unknown kind {kind!r}")
        newest = q.get("order") == "newest"
        after = int(q["after"]) if q.get("after", "").isdigit() else None
        batch = None
        if batch_id:
            items = await self.review.desk.batch(actor, batch_id)
            batch = await self.review.store.batch(batch_id)
        else:
            items = await self.review.desk.list(actor, ItemQuery(
                statuses=statuses, kinds=(kind,) if kind else (), values=(q["value"],) if q.get("value") else (),
                uploader=q.get("uploader") or None, newest_first=newest, limit=PAGE, after_id=after))
        rows = [await self._row(i) for i in items]
        filters = {k: q[k] for k in ("kind", "status", "order", "uploader", "value") if q.get(k)}
        more = None
        if not batch_id and len(items) == PAGE:
            more = "/admin/review?" + urlencode({**filters, "after": items[-1].id})
        return self.render("queue.html", actor=actor, csrf=csrf, rows=rows, filters=filters, kind=kind, status=status,
                           newest=newest, counts=await self.review.store.kind_counts(statuses), batch=batch,
                           batch_link=self._batch_link(batch_id) if batch_id else None, more=more,
                           may={a: st.may(actor.role, a) for a in (*DECISIONS, "accept", "propose")})

    async def _row(self, item) -> dict:
        findings = [f for f in item.evidence if isinstance(f, dict)]
        proposal = await self.review.store.event(item.proposal_event) if item.proposal_event else None
        return {"item": item, "summary": V.summary(findings[0]) if findings else item.reason,
                "more": max(0, len(findings) - 1), "handle": await self.review.store.handle(item.did),
                "proposal": proposal}

    def _batch_link(self, batch_id: str) -> str:
        base = (self.settings.public_url or self.settings.endpoint).rstrip("/")
        return f"{base}/admin/review?batch={batch_id}"

    # -- one item --------------------------------------------------------------------------------
    async def item(self, request: web.Request, actor: Actor, csrf: str, data) -> web.Response:
        item_id = int(request.match_info["id"])
        view = await self.review.desk.show(actor, item_id)
        item = view.item
        _cid, record = await self.review.store.track_record(item.uri)
        plans = {}
        for action in (*DECISIONS, "accept"):
            if st.may(actor.role, action) and (action != "accept" or item.status == st.PROPOSED):
                outcome = await self.review.desk.act(actor, action, [item.id], dry_run=True)
                plans[action] = outcome.steps[0]
        others = [i for i in await self.review.store.query(ItemQuery(statuses=st.STATUSES, uploader=item.did, limit=50,
                                                                     newest_first=True)) if i.id != item.id]
        labels = await self.label_log.current_under(f"at://{item.did}/")
        overturns = sum(1 for i in others if i.status in (st.REJECTED, st.ALLOWED))
        nxt = await self.review.store.query(ItemQuery(statuses=tuple(st.WAITING), after_id=item.id, limit=1))
        prev = await self.review.store.query(ItemQuery(statuses=tuple(st.WAITING), after_id=item.id, limit=1,
                                                       newest_first=True))
        reports, notices, counter = [], [], []
        if self.review.reports is not None:
            store = self.review.reports.store
            reports = await store.for_item(item.id)
            if item.kind == "appeal":  # what the label rests on, beside what its author says
                notices = await store.about(item.uri, item.value, appeal=False)
                counter = await store.about(item.uri, item.value, appeal=True)
        history = [x for x in await self.label_log.history(item.uri) if x.label.val == item.value]
        takedowns = sum(1 for x in labels if x.label.val == "copyright-violation" and not x.label.neg)
        done = None
        if request.query.get("done", "").isdigit():
            done = await self.review.store.event(int(request.query["done"]))
        return self.render(
            "item.html", actor=actor, csrf=csrf, view=view, item=item, record=record or {},
            findings=V.evidence_view(item, record), fields=V.track_fields(record, item), plans=plans,
            plan_text={a: V.step_text(s) for a, s in plans.items()}, handle=await self.review.store.handle(item.did),
            others=others, labels=[x for x in labels if not x.label.neg], overturns=overturns,
            next_id=nxt[0].id if nxt else None, prev_id=prev[0].id if prev else None, done=done,
            may_propose=st.may(actor.role, "propose") and item.status in (st.OPEN, st.PROPOSED),
            reports=reports, notices=notices, counter=counter, label_history=history, takedowns=takedowns,
            repeat_infringer=takedowns >= REPEAT_INFRINGER,
            cost=sum(c.cost_usd for c in view.triage_calls))

    # -- acting ----------------------------------------------------------------------------------
    def _selection(self, data) -> tuple[str, list[int], dict[int, int | None]]:
        action = str(data.get("action") or "")
        if action not in (*DECISIONS, "accept", "propose"):
            raise ValueError(f"unknown action {action[:40]!r}")
        ids = [int(x) for x in data.getall("ids", []) if str(x).isdigit()]
        if not ids:
            raise ValueError("select at least one item")
        if len(ids) > 500:
            raise ValueError("at most 500 items at once")
        expect = {}
        for i in ids:
            raw = data.get(f"expect-{i}")
            if raw is not None:
                expect[i] = int(raw) if str(raw).isdigit() else None
        return action, ids, expect

    async def preview(self, request, actor: Actor, csrf: str, data) -> web.Response:
        action, ids, _ = self._selection(data)
        outcome = await self._do(actor, action, ids, data, dry_run=True)
        items = await self.review.store.items(ids)
        return self.render("preview.html", actor=actor, csrf=csrf, outcome=outcome, action=action,
                           lines=[V.step_text(s) for s in outcome.steps], items=items,
                           reason=data.get("reason") or "", decision=data.get("decision") or "",
                           ok=[s for s in outcome.steps if not s.error], back=str(data.get("back") or "/admin/review"))

    async def act(self, request, actor: Actor, csrf: str, data) -> web.Response:
        action, ids, expect = self._selection(data)
        outcome = await self._do(actor, action, ids, data, dry_run=False, expect=expect)
        done = [s for s in outcome.steps if not s.error]
        log.info("desk.acted", actor=actor.name, action=action, items=[s.item_id for s in done],
                 refused=len(outcome.errors))
        if len(ids) == 1 and done and data.get("then") == "next":
            nxt = await self.review.store.query(ItemQuery(statuses=tuple(st.WAITING), after_id=ids[0], limit=1))
            target = nxt[0].id if nxt else ids[0]
            raise web.HTTPSeeOther(f"/admin/review/items/{target}?done={done[0].event_id}")
        return self.render("done.html", actor=actor, csrf=csrf, outcome=outcome, action=action,
                           lines=[V.step_text(s) for s in outcome.steps], back=str(data.get("back") or "/admin/review"))

    async def _do(self, actor: Actor, action: str, ids: list[int], data, *, dry_run: bool,
                  expect: dict | None = None) -> Outcome:
        reason = str(data.get("reason") or "").strip() or None
        if action == "propose":
            return await self.review.desk.propose(actor, ids, str(data.get("decision") or ""), reason=reason or "",
                                                  dry_run=dry_run)
        return await self.review.desk.act(actor, action, ids, reason=reason, dry_run=dry_run, expect=expect)

    async def batch(self, request, actor: Actor, csrf: str, data) -> web.Response:
        ids = [int(x) for x in data.getall("ids", []) if str(x).isdigit()]
        if not ids:
            raise ValueError("select the items to share first")
        made = await self.review.desk.create_batch(actor, ids[:500])
        raise web.HTTPSeeOther(f"/admin/review?batch={made.id}")

    # -- media, from our cache -------------------------------------------------------------------
    async def cover(self, request, actor: Actor, csrf: str, data) -> web.Response:
        item = await self._item(request)
        if self.media is None:
            raise LookupError("media is not available on this server")
        from firehose_mod.server.desk_media import MediaMissing

        try:
            body = await self.media.cover_thumbnail(item)
        except MediaMissing as exc:
            return web.Response(status=404, text=str(exc))
        return web.Response(body=body, content_type="image/jpeg",
                            headers={"Cache-Control": "private, max-age=3600", "X-Content-Type-Options": "nosniff"})

    async def audio(self, request, actor: Actor, csrf: str, data) -> web.StreamResponse:
        item = await self._item(request)
        if self.media is None:
            raise LookupError("media is not available on this server")
        from firehose_mod.server.desk_media import MediaMissing

        try:
            path = await self.media.excerpt(item, int(request.match_info["finding"]), request.match_info["which"])
        except MediaMissing as exc:
            return web.Response(status=404, text=str(exc))
        return web.FileResponse(path, headers={"Content-Type": "audio/ogg", "Cache-Control": "private, max-age=3600",
                                               "X-Content-Type-Options": "nosniff"})

    async def _item(self, request):
        item_id = int(request.match_info["id"])
        item = (await self.review.store.items([item_id])).get(item_id)
        if item is None:
            raise LookupError(f"no review item #{item_id}")
        return item
