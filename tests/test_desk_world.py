"""The admin page's test harness: the desk world opens one item of each kind, with real evidence
read over the JSON API, and chromium starts under our flags."""

from __future__ import annotations

import httpx
import pytest

from tests.browser import SCREENSHOTS, new_page, open_browser, save_screenshot
from tests.desk_world import EMBED_AT, EXCERPT_FROM, EXCERPT_SECONDS, KINDS, REFERENCE, desk_world

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


def near(got: float, want: float, slack: float = 2.0) -> bool:
    return abs(got - want) <= slack


async def test_the_desk_world_has_an_item_of_each_kind_with_its_evidence(settings, tmp_path):
    async with desk_world(settings, tmp_path) as w:
        async with httpx.AsyncClient(base_url=f"{w.base_url}/admin/api/review", headers=w.auth("mod"),
                                     timeout=10) as http:
            listed = {kind: (await http.get("/items", params={"kind": kind})).json()["items"] for kind in KINDS}
            every = (await http.get("/items")).json()["items"]
            shown = (await http.get(f"/items/{w.items['copyright']}")).json()
            agent = await http.get("/items", headers=w.auth("bot"))
            admin = await http.get("/items", headers=w.auth("alice"))
        cleans = [await w.parts["engine"].decisions.history(w.uris[name]) for name in ("clean", "explicit")]

    assert sorted(i["id"] for i in every) == sorted(w.items.values())  # the clean tracks open nothing
    assert agent.status_code == 200 and admin.status_code == 200
    for kind in KINDS:
        (item,) = listed[kind]
        assert item["id"] == w.items[kind] and item["uri"] == w.uris[kind] and item["status"] == "open"

    (copyright,) = listed["copyright"]
    assert copyright["value"] == "copyright-violation"
    (finding,) = copyright["evidence"]
    ev = finding["evidence"]
    assert finding["kind"] == "copyright-match" and finding["scanner"] == "copyright"
    assert ev["ref"] == w.reference and ev["ref_kind"] == "reference"
    assert (ev["title"], ev["artist"]) == (REFERENCE["title"], REFERENCE["artist"])
    assert 8 <= ev["seconds_matched"] < 30  # a partial match: reviewed, not labeled
    assert near(ev["query_start"], EMBED_AT) and near(ev["query_end"], EMBED_AT + EXCERPT_SECONDS)
    assert near(ev["ref_start"], EXCERPT_FROM) and near(ev["ref_end"], EXCERPT_FROM + EXCERPT_SECONDS)
    assert shown["item"]["id"] == w.items["copyright"] and shown["events"][0]["actor_name"] == "policy"

    (cover,) = listed["cover-art"]
    (nsfw,) = cover["evidence"]
    assert cover["value"] == "sexual" and nsfw["kind"] == "nsfw"
    assert 0.6 <= nsfw["evidence"]["score"] < 0.85  # cover-doubtful: between review and label
    assert (nsfw["evidence"]["width"], nsfw["evidence"]["height"]) == (512, 512)

    (text,) = listed["text"]
    (hit,) = text["evidence"]
    assert text["value"] == "offensive-text"
    assert hit["kind"] == "text" and hit["evidence"] == {
        "field": "description", "term": "kys", "matched": "kys", "category": "blocklist", "language": None,
        "excerpt": w.uploads["text"].description, "count": 1, "note": "harassment: 'kill yourself'",
        "field_language": "english"}  # the language the scanner read the field in (issue 21)

    clean, explicit = cleans
    assert [r["action"] for r in clean] == ["none"]
    # Profanity in a title: the scanner finds it, the policy ignores it (text-profanity).
    (decision,) = explicit
    assert decision["action"] == "none"
    assert [(f["kind"], f["evidence"]["term"], f["evidence"]["category"]) for f in decision["evidence"]
            if f["scanner"] == "text"] == [("text", "shit", "profanity")]
    assert w.items == {"copyright": 1, "cover-art": 2, "text": 3}  # one scan at a time: upload order
    assert w.ready_seconds < 90


async def test_chromium_starts_under_our_flags_and_takes_a_screenshot(running):
    async with open_browser() as browser:  # the label server's front door is enough here
        page = await new_page(browser)
        response = await page.goto(f"{running.http_base}/xrpc/_health")
        body = await page.inner_text("body")
        path = await save_screenshot(page, "_smoke-test-delete-me")
        phone = await new_page(browser, mobile=True)
        await phone.set_content('<meta name="viewport" content="width=device-width, initial-scale=1"><p>hi</p>')
        size = await phone.evaluate("[innerWidth, innerHeight, devicePixelRatio, navigator.maxTouchPoints > 0]")
    try:
        assert response.status == 200 and "version" in body
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 1000
        assert size == [390, 844, 2, True]
    finally:
        path.unlink(missing_ok=True)
        try:
            SCREENSHOTS.rmdir()  # only if the smoke test made it: the page's screenshots stay
        except OSError:
            pass
