"""Notices when items wait: a signed webhook, a Bluesky DM through a local stand-in, at most
one per interval, never about seen or announced items, retried with backoff."""

from __future__ import annotations

import json
import time

import anyio
import httpx
import pytest
from structlog.testing import capture_logs

from firehose_mod.review.notify import SIGNATURE_HEADER, Notifier, NotifyConfig, verify_signature
from tests.conftest import uri
from tests.fakes.chat import FakeChatPDS
from tests.fakes.webhook import FakeWebhook

pytestmark = pytest.mark.anyio
SECRET = "s3cret-for-hmac"
RECIPIENT = "did:plc:moderatorabcdefghijklmno"


@pytest.fixture
def hook():
    with FakeWebhook() as server:
        yield server


class Clock:
    def __init__(self):
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def notifier(d, hook=None, clock=None, **kw) -> Notifier:
    config = NotifyConfig("https://labeler.example", webhook_url=hook.url if hook else "", webhook_secret=SECRET,
                          interval=600.0, backoff=5.0, **kw)
    return Notifier(d.store, config, client=httpx.AsyncClient(trust_env=False), clock=clock or Clock())


async def test_waiting_items_are_announced_once_in_a_signed_webhook(d, hook):
    ids = [await d.scan_opens(uri(n)) for n in range(2)]
    n = notifier(d, hook)
    batch = await n.tick()
    [request] = hook.requests
    assert verify_signature(SECRET, request["body"], request["headers"][SIGNATURE_HEADER.lower()])
    assert not verify_signature("another secret", request["body"], request["headers"][SIGNATURE_HEADER.lower()])
    assert not verify_signature(SECRET, request["body"] + b" ", request["headers"][SIGNATURE_HEADER.lower()])
    payload = json.loads(request["body"])
    assert payload["url"] == f"https://labeler.example/admin/review?batch={batch.id}"
    assert [i["id"] for i in payload["items"]] == ids and payload["items"][0]["kind"] == "copyright"
    assert request["headers"]["content-type"] == "application/json"
    assert n.metrics["webhook_sent"] == 1 and (await d.store.batch(batch.id)).items == ids


async def test_at_most_one_notice_per_interval_and_never_twice_for_an_item(d, hook):
    clock = Clock()
    await d.scan_opens(uri(1))
    n = notifier(d, hook, clock)
    await n.tick()
    late = await d.scan_opens(uri(2))
    assert await n.tick() is None and len(hook.requests) == 1  # within the interval
    clock.now += 601
    second = await n.tick()
    assert second.items == [late] and len(hook.requests) == 2
    clock.now += 601
    assert await n.tick() is None and len(hook.requests) == 2  # nothing new waits


async def test_items_an_operator_has_seen_are_not_announced(d, hook):
    seen = await d.scan_opens(uri(1))
    await d.desk.show(d.moderator, seen)
    assert await notifier(d, hook).tick() is None and hook.requests == []
    shared = await d.scan_opens(uri(2))
    batch = await d.desk.create_batch(d.moderator, [shared])
    await d.desk.batch(d.moderator, batch.id)  # opening a shared batch link counts as seeing it
    assert await notifier(d, hook).tick() is None


async def test_a_failed_webhook_is_retried_with_backoff_and_the_desk_goes_on(d):
    clock = Clock()
    with FakeWebhook(fail_times=2) as hook:
        item_id = await d.scan_opens(uri(1))
        n = notifier(d, hook, clock)
        with capture_logs() as logs:
            first = await n.tick()
        assert n.metrics["webhook_failed"] == 1 and any(e["event"] == "notify.undelivered" for e in logs)
        await d.desk.confirm(d.moderator, [item_id])  # the desk is not held up by the notice
        await n.tick()
        assert len(hook.requests) == 1  # still backing off
        clock.now += 5
        await n.tick()
        clock.now += 9  # the second backoff is 10 s
        assert len(hook.requests) == 2 and (await n.tick()).id == first.id
        clock.now += 1
        await n.tick()
        assert len(hook.requests) == 3 and n.metrics["webhook_sent"] == 1
        assert {json.loads(r["body"])["batch"] for r in hook.requests} == {first.id}
        assert (await d.store.undelivered_notice()) is None


async def test_run_survives_an_unreachable_webhook(d):
    await d.scan_opens(uri(1))
    config = NotifyConfig("https://labeler.example", webhook_url="http://127.0.0.1:9/nothing-listens",
                          webhook_secret=SECRET, interval=600.0, poll=0.05, backoff=0.01)
    n = Notifier(d.store, config)
    with anyio.move_on_after(0.5):
        await n.run()
    assert n.metrics["webhook_failed"] >= 2 and n.metrics["notices"] == 1


async def test_a_dm_goes_through_the_chat_proxy_and_is_not_resent_when_the_webhook_fails(d):
    clock = Clock()
    with FakeChatPDS() as pds, FakeWebhook(fail_times=1) as hook:
        await d.scan_opens(uri(1))
        n = notifier(d, hook, clock, dm_recipients=(RECIPIENT,), dm_handle="bot.example.com",
                     dm_password="app-pass-word", dm_service=pds.url)
        batch = await n.tick()
        [sent] = pds.sent
        assert sent["message"]["text"] == (f"1 review items waiting on firehose-mod (1 copyright):"
                                           f" https://labeler.example/admin/review?batch={batch.id}")
        convo = next(c for c in pds.calls if c["nsid"] == "chat.bsky.convo.getConvoForMembers")
        assert convo["query"]["members"] == [RECIPIENT] and sent["convoId"] == "3kconvo" + RECIPIENT[-6:]
        assert n.metrics == {**n.metrics, "dm_sent": 1, "webhook_failed": 1}
        clock.now += 5
        await n.tick()
        assert len(pds.sent) == 1 and len(hook.requests) == 2 and n.metrics["webhook_sent"] == 1
