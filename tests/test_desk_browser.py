"""The admin page in a real browser (Playwright driving Debian's chromium) against the real daemon.

A moderator signs in with their token, works the queue (a copyright match, a doubtful cover, a
flagged description, all opened by the daemon's own scans of tracks it read from a local
Jetstream), hears both excerpts of the match load, confirms with the keyboard after reading
what it will emit, and the label arrives on an atproto SDK subscribeLabels client. The test
run saves the screenshots the README shows (docs/screenshots/).
"""

from __future__ import annotations

import anyio
import pytest
from atproto import (
    AsyncFirehoseSubscribeLabelsClient,
    models,
    parse_subscribe_labels_message,
)

from tests.browser import new_page, open_browser, save_screenshot
from tests.desk_world import desk_world

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


async def sign_in(page, base: str, token: str) -> None:
    await page.goto(f"{base}/admin/review")
    assert "/admin/login" in page.url  # not signed in: the sign-in page, not the queue
    await page.fill("#token", token)
    await page.click("#login button[type=submit]")
    await page.wait_for_url(f"{base}/admin/review")


async def audio_state(page, which: str) -> dict:
    """Wait until the excerpt's metadata loaded (or it failed); its readyState, duration, error."""
    selector = f'audio.excerpt[data-which="{which}"]'
    await page.wait_for_function(
        f"() => {{ const a = document.querySelector('{selector}'); return a && (a.readyState >= 1 || a.error); }}",
        timeout=30_000)
    return await page.eval_on_selector(
        selector, "a => ({ready: a.readyState, duration: a.duration, error: a.error && a.error.code})")


async def test_a_moderator_works_the_queue_in_a_browser_and_the_label_reaches_a_subscriber(settings, tmp_path):
    async with desk_world(settings, tmp_path) as w:
        base, ids = w.base_url, w.items
        head = await w.parts["engine"].label_log.head()
        labels: list[tuple[str, str, bool]] = []
        client = AsyncFirehoseSubscribeLabelsClient(params={"cursor": head}, base_uri=f"{base.replace('http', 'ws')}/xrpc")

        async def on_message(frame) -> None:
            msg = parse_subscribe_labels_message(frame)
            if isinstance(msg, models.ComAtprotoLabelSubscribeLabels.Labels):
                labels.extend((x.uri, x.val, bool(x.neg)) for x in msg.labels)

        async with anyio.create_task_group() as tg, open_browser() as browser:
            tg.start_soon(client.start, on_message)
            page = await new_page(browser)
            await sign_in(page, base, w.tokens["mod"])
            rows = await page.eval_on_selector_all("tr.item", "rs => rs.map(r => Number(r.dataset.id))")
            assert sorted(rows) == sorted(ids.values())
            assert await page.inner_text(f'tr.item[data-id="{ids["copyright"]}"] td.why') \
                == "13.7 s of “Golden Hour by Major Label Artist” at 0:12.1–0:25.8"
            await save_screenshot(page, "review-queue")

            # The copyright item: both excerpts load from our server, the plan is on the page.
            await page.click(f'tr.item[data-id="{ids["copyright"]}"] a.open')
            await page.wait_for_url(f"{base}/admin/review/items/{ids['copyright']}")
            upload, ref = await audio_state(page, "upload"), await audio_state(page, "ref")
            assert upload["error"] is None and upload["ready"] >= 1 and 14 <= upload["duration"] <= 17, upload
            assert ref["error"] is None and ref["ready"] >= 1 and 14 <= ref["duration"] <= 17, ref
            assert "@nightjar.bsky.social" in await page.inner_text("aside.uploader")
            await save_screenshot(page, "review-item-copyright")

            # Confirm with the keyboard: `c` shows what it will emit, Enter does it.
            await page.keyboard.press("c")
            await page.wait_for_selector("#confirm-dialog[open]")
            plan = await page.inner_text("#confirm-plan")
            assert plan == f"#{ids['copyright']}: open → confirmed; emits copyright-violation"
            assert labels == []  # shown, not done
            await page.keyboard.press("Enter")
            await page.wait_for_url(f"{base}/admin/review/items/{ids['cover-art']}?done=*")
            assert "emitted copyright-violation" in await page.inner_text("p.flash")
            with anyio.fail_after(20):
                while not labels:
                    await anyio.sleep(0.05)
            assert labels == [(w.uris["copyright"], "copyright-violation", False)]

            # The cover: our re-encoded thumbnail, blurred until clicked.
            img = "button.cover img"
            await page.wait_for_function(f"() => document.querySelector('{img}').complete")
            assert await page.eval_on_selector(img, "i => i.naturalWidth") == 320
            assert "blur" in await page.eval_on_selector(img, "i => getComputedStyle(i).filter")
            await save_screenshot(page, "review-item-cover")
            await page.click("button.cover")  # revealed (after a 0.2 s transition)
            await page.wait_for_function(f"() => getComputedStyle(document.querySelector('{img}')).filter === 'none'")

            # The text item: the flagged word highlighted where it stands.
            await page.goto(f"{base}/admin/review/items/{ids['text']}")
            assert "kys" in await page.eval_on_selector_all("mark", "ms => ms.map(m => m.textContent)")

            # A phone: the queue and an item fit the screen's width.
            phone = await new_page(browser, mobile=True)
            await sign_in(phone, base, w.tokens["mod"])
            assert await phone.evaluate("document.documentElement.scrollWidth") <= 390
            await save_screenshot(phone, "review-queue-phone")
            await phone.goto(f"{base}/admin/review/items/{ids['text']}")
            assert await phone.evaluate("document.documentElement.scrollWidth") <= 390
            await save_screenshot(phone, "review-item-phone")
            await client.stop()
            tg.cancel_scope.cancel()

        item = await w.item("copyright")
        assert item.status == "confirmed"


async def test_an_agent_signed_in_sees_no_decision_buttons_and_its_proposal_shows_for_the_moderator(settings, tmp_path):
    async with desk_world(settings, tmp_path) as w, open_browser() as browser:
        base, item_id = w.base_url, w.items["text"]
        bot = await new_page(browser)
        await sign_in(bot, base, w.tokens["bot"])
        await bot.goto(f"{base}/admin/review/items/{item_id}")
        assert await bot.query_selector("#act") is None  # no confirm/reject/allow/escalate form at all
        await bot.select_option("#propose select[name=decision]", "reject")
        await bot.fill("#propose input[name=reason]", "'kys' here quotes a song title, not a threat")
        await bot.click("#propose button[type=submit]")
        await bot.wait_for_selector("#plan")
        assert f"#{item_id}: open → proposed" in await bot.inner_text("#plan")
        await bot.click("#apply button[type=submit]")
        await bot.wait_for_selector("#result")

        mod = await new_page(browser)
        await sign_in(mod, base, w.tokens["mod"])
        await mod.goto(f"{base}/admin/review/items/{item_id}")
        proposal = await mod.inner_text("#proposal")
        assert "bot" in proposal and "reject" in proposal and "quotes a song title" in proposal
        assert await mod.inner_text('#act button[value="accept"] + .plan') == f"#{item_id}: proposed → rejected; emits no label"
        # Sign out: the session ends and the queue asks for a token again.
        await mod.click("header form button")
        await mod.wait_for_url(f"{base}/admin/login")
        await mod.goto(f"{base}/admin/review")
        assert "/admin/login" in mod.url
