"""The admin page over HTTP: signing in, the session cookie, CSRF, roles, and acting from forms.

The browser test (tests/test_desk_browser.py) drives the same pages in Chromium; these tests
check what a browser cannot show: cookie attributes, refused forgeries, a revoked session.
"""

from __future__ import annotations

import re
from contextlib import asynccontextmanager
from dataclasses import replace

import anyio
import httpx
import pytest

from firehose_mod.daemon import run_daemon
from firehose_mod.review.actors import Actor, system_actor
from tests.helpers.desk_page import csrf_of, sign_in
from tests.stream_client import Received, collect, subscribe

pytestmark = pytest.mark.anyio

DID = "did:plc:ewvi7nxzyoun6zhxrhs64oiz"
URI = f"at://{DID}/fm.plyr.track/3kpage"


@asynccontextmanager
async def desk(settings):
    settings = replace(settings, ingest_source="none", scanners=("self-labels",))
    async with anyio.create_task_group() as tg:
        parts = await tg.start(run_daemon, settings)
        review = parts["review"]
        root = system_actor("test-bootstrap")
        root = Actor(root.kind, root.name, "admin", "local")
        tokens = {}
        for name, role in (("mo", "moderator"), ("bot", "agent"), ("gone", "moderator")):
            _row, tokens[name] = await review.operators.add(root, name, role)
        opened = await review.desk.open(root, URI, "copyright-violation", reason="a rights holder wrote in")
        base = f"http://127.0.0.1:{parts['server'].port}"
        yield base, tokens, opened.steps[0].item_id, parts
        tg.cancel_scope.cancel()


async def test_sign_in_sets_a_strict_httponly_session_and_the_queue_needs_it(settings):
    async with desk(settings) as (base, tokens, item_id, _parts), httpx.AsyncClient(timeout=10) as http:
        anonymous = await http.get(f"{base}/admin/review")
        wrong = await sign_in(http, base, "fhm_not-a-token")
        ok = await sign_in(http, base, tokens["mo"])
        cookie = ok.headers.get("set-cookie", "")
        queue = await http.get(f"{base}/admin/review")
        item = await http.get(f"{base}/admin/review/items/{item_id}")
        out = await http.post(f"{base}/admin/logout", data={"csrf": csrf_of(queue.text)})
        after = await http.get(f"{base}/admin/review")
    assert anonymous.status_code == 303 and anonymous.headers["location"].startswith("/admin/login")
    assert wrong.status_code == 401 and "Sign-in refused" in wrong.text and "fhm_session" not in wrong.headers.get("set-cookie", "")
    assert ok.status_code == 303 and ok.headers["location"] == "/admin/review"
    assert "fhm_session=" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/admin" in cookie
    assert "Secure" not in cookie  # plain http on loopback; see the TLS test
    assert tokens["mo"] not in cookie  # the cookie is a session id, never the operator token
    assert queue.status_code == 200 and f'href="/admin/review/items/{item_id}"' in queue.text
    assert "script-src 'self'" in queue.headers["content-security-policy"]
    assert item.status_code == 200 and "a rights holder wrote in" in item.text
    assert "emits copyright-violation" in item.text  # what confirm will do, before doing it
    assert out.status_code == 303 and after.status_code == 303  # signed out: the session is gone


async def test_the_cookie_is_secure_behind_a_tls_proxy(settings):
    async with desk(settings) as (base, tokens, _item, _parts), httpx.AsyncClient(timeout=10) as http:
        form = await http.get(f"{base}/admin/login")
        login_csrf = re.search(r'name="login_csrf" value="([^"]+)"', form.text).group(1)
        ok = await http.post(f"{base}/admin/login", data={"token": tokens["mo"], "login_csrf": login_csrf},
                             headers={"X-Forwarded-Proto": "https"})
    assert ok.status_code == 303 and "Secure" in ok.headers["set-cookie"]


async def test_forged_or_missing_csrf_and_other_origins_are_refused_and_write_nothing(settings):
    async with desk(settings) as (base, tokens, item_id, parts), httpx.AsyncClient(timeout=10) as http:
        await sign_in(http, base, tokens["mo"])
        page = await http.get(f"{base}/admin/review/items/{item_id}")
        csrf = csrf_of(page.text)
        form = {"action": "confirm", "ids": str(item_id), "then": "next"}
        missing = await http.post(f"{base}/admin/review/act", data=form)
        forged = await http.post(f"{base}/admin/review/act", data={**form, "csrf": csrf[:-2] + "xx"})
        elsewhere = await http.post(f"{base}/admin/review/act", data={**form, "csrf": csrf},
                                    headers={"Origin": "https://evil.example"})
        login_forged = await http.post(f"{base}/admin/login", data={"token": tokens["mo"], "login_csrf": "guess"})
        head = await parts["engine"].label_log.head()
        status = (await parts["review"].store.items([item_id]))[item_id].status
    assert [r.status_code for r in (missing, forged, elsewhere)] == [403, 403, 403]
    assert "CSRF" in missing.text and "another site" in elsewhere.text
    assert login_forged.status_code == 403
    assert head == 0 and status == "open"


async def test_a_moderator_confirms_from_the_form_and_the_label_reaches_a_subscriber(settings):
    async with desk(settings) as (base, tokens, item_id, parts), httpx.AsyncClient(timeout=10) as http, \
            subscribe(base.replace("http", "ws")) as ws:
        await sign_in(http, base, tokens["mo"])
        page = await http.get(f"{base}/admin/review/items/{item_id}")
        last = re.search(rf'name="expect-{item_id}" value="(\d*)"', page.text).group(1)
        done = await http.post(f"{base}/admin/review/act", data={
            "csrf": csrf_of(page.text), "action": "confirm", "ids": str(item_id), f"expect-{item_id}": last,
            "reason": "the chorus is the reference's", "then": "next"})
        got = await collect(ws, Received(), count=1)
        shown = await http.get(f"{base}{done.headers['location']}")
        events = await parts["review"].store.events(item_id)
    assert done.status_code == 303 and "done=" in done.headers["location"]
    assert [(lab.uri, lab.val, lab.neg) for lab in got.labels] == [(URI, "copyright-violation", False)]
    assert "Done: #" in shown.text and "emitted copyright-violation" in shown.text
    assert (events[-1].action, events[-1].actor_name, events[-1].actor_via, events[-1].reason) == \
        ("confirm", "mo", "session", "the chorus is the reference's")


async def test_a_plan_shown_before_the_item_changed_is_refused(settings):
    async with desk(settings) as (base, tokens, item_id, parts), httpx.AsyncClient(timeout=10) as http:
        await sign_in(http, base, tokens["mo"])
        page = await http.get(f"{base}/admin/review/items/{item_id}")
        last = re.search(rf'name="expect-{item_id}" value="(\d*)"', page.text).group(1)
        bot = await parts["review"].operators.authenticate(tokens["bot"])
        await parts["review"].desk.propose(bot, [item_id], "reject", reason="it is the uploader's own song")
        stale = await http.post(f"{base}/admin/review/act", data={
            "csrf": csrf_of(page.text), "action": "confirm", "ids": str(item_id), f"expect-{item_id}": last})
        head = await parts["engine"].label_log.head()
    assert stale.status_code == 200 and "changed since you looked" in stale.text
    assert head == 0


async def test_an_agent_sees_the_queue_and_may_only_propose(settings):
    async with desk(settings) as (base, tokens, item_id, parts), httpx.AsyncClient(timeout=10) as http:
        await sign_in(http, base, tokens["bot"])
        page = await http.get(f"{base}/admin/review/items/{item_id}")
        csrf = csrf_of(page.text)
        confirm = await http.post(f"{base}/admin/review/act", data={"csrf": csrf, "action": "confirm", "ids": str(item_id)})
        preview = await http.post(f"{base}/admin/review/preview", data={
            "csrf": csrf, "action": "propose", "decision": "reject", "ids": str(item_id), "reason": "own work"})
        head = await parts["engine"].label_log.head()
        status_after_preview = (await parts["review"].store.items([item_id]))[item_id].status
    assert page.status_code == 200 and 'value="confirm"' not in page.text and 'id="propose"' in page.text
    assert confirm.status_code == 403 and "may not confirm" in confirm.text
    assert preview.status_code == 200 and "open → proposed" in preview.text
    assert head == 0 and status_after_preview == "open"  # a preview writes nothing


async def test_a_revoked_operator_loses_the_page_at_once(settings):
    async with desk(settings) as (base, tokens, item_id, parts), httpx.AsyncClient(timeout=10) as http:
        await sign_in(http, base, tokens["gone"])
        before = await http.get(f"{base}/admin/review")
        root = Actor("system", "test", "admin", "local")
        await parts["review"].operators.revoke(root, "gone")
        after = await http.get(f"{base}/admin/review/items/{item_id}")
    assert before.status_code == 200
    assert after.status_code == 303 and "revoked" in httpx.URL(after.headers["location"]).params["why"]


async def test_a_batch_preview_says_what_each_item_will_emit_and_the_link_reopens_the_selection(settings):
    async with desk(settings) as (base, tokens, item_id, parts), httpx.AsyncClient(timeout=10) as http:
        root = Actor("system", "test", "admin", "local")
        other = (await parts["review"].desk.open(root, URI.replace("3kpage", "3kother"), "copyright-violation",
                                                 reason="second")).steps[0].item_id
        await sign_in(http, base, tokens["mo"])
        queue = await http.get(f"{base}/admin/review")
        csrf = csrf_of(queue.text)
        ids = [str(item_id), str(other)]
        preview = await http.post(f"{base}/admin/review/preview", data={"csrf": csrf, "action": "reject", "ids": ids})
        shared = await http.post(f"{base}/admin/review/batch", data={"csrf": csrf, "ids": ids})
        batch_page = await http.get(f"{base}{shared.headers['location']}")
        head = await parts["engine"].label_log.head()
    assert preview.status_code == 200
    assert f"#{item_id}: open → rejected; emits no label" in preview.text
    assert f"#{other}: open → rejected; emits no label" in preview.text
    assert head == 0
    assert shared.status_code == 303 and "batch=" in shared.headers["location"]
    assert batch_page.status_code == 200 and "shared by mo" in batch_page.text
    assert batch_page.text.count('class="pick" name="ids"') == 2 and "checked" in batch_page.text


async def test_status_takes_a_moderators_token_but_not_an_agents(settings):
    async with desk(settings) as (base, tokens, _item, _parts), httpx.AsyncClient(timeout=10) as http:
        def bearer(name):
            return {"Authorization": f"Bearer {tokens[name]}"}
        mod = await http.get(f"{base}/admin/status", headers=bearer("mo"))
        agent = await http.get(f"{base}/admin/status", headers=bearer("bot"))
        revoked_root = Actor("system", "test", "admin", "local")
        await _parts["review"].operators.revoke(revoked_root, "gone")
        gone = await http.get(f"{base}/admin/status", headers=bearer("gone"))
    assert mod.status_code == 200 and "head" in mod.json()
    assert agent.status_code == 401 and gone.status_code == 401
