"""Telling people that items wait: a signed webhook and, optionally, a Bluesky DM.

At most one notice per `interval`, naming only items nobody has seen (opened with `review
show`, or a batch link) or been told about; each notice is a batch with a link,
`{public_url}/admin/review?batch=ID`. A failed channel is logged and retried with backoff
(doubling, capped at the interval) without sending the other channel twice; nothing here ever
blocks or fails the desk. The webhook body is JSON; its HMAC-SHA256 under the configured secret
is in `X-Firehose-Mod-Signature: sha256=<hex>` (see `verify_signature`).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from dataclasses import dataclass

import anyio
import httpx
import structlog

from firehose_mod.config import Settings
from firehose_mod.labels.model import now_iso, parse_datetime
from firehose_mod.store.review import ReviewStore
from firehose_mod.store.review_work import Batch

log = structlog.get_logger(__name__)

SIGNATURE_HEADER = "X-Firehose-Mod-Signature"


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify_signature(secret: str, body: bytes, header: str | None) -> bool:
    """What a receiver checks: the header is the HMAC-SHA256 of the raw body (constant-time compare)."""
    return bool(header) and hmac.compare_digest(sign(secret, body), header)


@dataclass(frozen=True)
class NotifyConfig:
    link_base: str  # public_url (or this server's address) for the batch link
    webhook_url: str = ""
    webhook_secret: str = ""
    interval: float = 900.0
    dm_recipients: tuple[str, ...] = ()
    dm_handle: str = ""
    dm_password: str = ""
    dm_service: str = "https://bsky.social"
    poll: float = 30.0  # seconds between looks at the queue
    max_items: int = 100  # items named in one notice
    timeout: float = 10.0
    backoff: float = 5.0  # seconds before the first retry of a failed notice

    @classmethod
    def from_settings(cls, s: Settings) -> NotifyConfig:
        return cls((s.public_url or s.endpoint).rstrip("/"), s.notify_webhook_url, s.notify_webhook_secret,
                   s.notify_interval, s.notify_dm_recipients, s.notify_dm_handle, s.notify_dm_password,
                   s.notify_dm_service)

    @property
    def channels(self) -> set[str]:
        return ({"webhook"} if self.webhook_url else set()) | ({"dm"} if self.dm_recipients else set())


class BlueskyDM:
    """Sends a DM from the configured account through the atproto SDK's chat proxy."""

    def __init__(self, config: NotifyConfig):
        self.config = config

    async def send(self, text: str) -> None:
        from atproto import AsyncClient, models

        client = AsyncClient(base_url=self.config.dm_service)
        try:
            try:  # no profile lookup: the sending account's PDS need not serve app.bsky
                await client.login(self.config.dm_handle, self.config.dm_password, fetch_bsky_profile=False)
            except TypeError:  # an atproto SDK from before fetch_bsky_profile
                await client.login(self.config.dm_handle, self.config.dm_password)
            chat = client.with_bsky_chat_proxy()
            convo = chat.chat.bsky.convo
            for did in self.config.dm_recipients:
                found = await convo.get_convo_for_members(models.ChatBskyConvoGetConvoForMembers.Params(members=[did]))
                await convo.send_message(models.ChatBskyConvoSendMessage.Data(
                    convo_id=found.convo.id, message=models.ChatBskyConvoDefs.MessageInput(text=text)))
        finally:
            await client.request.close()


class Notifier:
    def __init__(self, store: ReviewStore, config: NotifyConfig, *, client: httpx.AsyncClient | None = None,
                 dm: BlueskyDM | None = None, clock=time.time):
        self.store, self.config, self.clock = store, config, clock
        self.client = client
        self.dm = dm or (BlueskyDM(config) if config.dm_recipients else None)
        self.metrics = {"notices": 0, "items_announced": 0, "webhook_sent": 0, "webhook_failed": 0,
                        "dm_sent": 0, "dm_failed": 0}
        self._failures = 0
        self._next_try = 0.0

    async def run(self) -> None:
        """Look at the queue every `poll` seconds, for ever; failures are logged, never raised."""
        async with httpx.AsyncClient(trust_env=False) as client:
            self.client = self.client or client
            while True:
                try:
                    await self.tick()
                except Exception as exc:  # noqa: BLE001 (a notice is never worth stopping the daemon)
                    log.warning("notify.failed", error=f"{type(exc).__name__}: {exc}"[:300])
                await anyio.sleep(min(self.config.poll, self.config.interval))

    async def tick(self) -> Batch | None:
        """Retry an undelivered notice when its backoff is over, else make a new one if it is time."""
        now = self.clock()
        pending = await self.store.undelivered_notice()
        if pending is not None:
            if now >= self._next_try:
                await self._deliver(pending)
            return pending
        last = await self.store.last_notice()
        if last is not None and now - parse_datetime(last).timestamp() < self.config.interval:
            return None
        ids = await self.store.unannounced(self.config.max_items)
        if not ids:
            return None
        batch = await self.store.create_notice(ids, self.config.channels)
        self.metrics["notices"] += 1
        self.metrics["items_announced"] += len(ids)
        await self._deliver(batch)
        return batch

    def link(self, batch: Batch) -> str:
        return f"{self.config.link_base}/admin/review?batch={batch.id}"

    async def _deliver(self, batch: Batch) -> None:
        items = await self.store.items(batch.items)
        body = json.dumps({
            "event": "review.waiting", "batch": batch.id, "url": self.link(batch), "count": len(batch.items),
            "items": [{"id": i.id, "uri": i.uri, "value": i.value, "kind": i.kind, "status": i.status,
                       "reason": i.reason, "opened": i.created} for i in items.values()],
            "created": batch.created, "sent": now_iso(),
        }, sort_keys=True).encode()
        errors = []
        for channel, send in (("webhook", lambda: self._post(body, batch)), ("dm", lambda: self._dm(batch, items))):
            if getattr(batch, f"{channel}_sent") is not None:
                continue
            try:
                await send()
            except Exception as exc:  # noqa: BLE001 (logged, retried with backoff)
                self.metrics[f"{channel}_failed"] += 1
                errors.append(f"{channel}: {type(exc).__name__}: {exc}"[:240])
                continue
            self.metrics[f"{channel}_sent"] += 1
            await self.store.notice_sent(batch.id, channel)
        if errors:
            self._failures += 1
            delay = min(self.config.interval, self.config.backoff * 2 ** (self._failures - 1))
            self._next_try = self.clock() + delay
            await self.store.notice_failed(batch.id, "; ".join(errors))
            log.warning("notify.undelivered", batch=batch.id, errors=errors, retry_in_seconds=delay)
        else:
            self._failures = 0
            log.info("notify.sent", batch=batch.id, items=len(batch.items))

    async def _post(self, body: bytes, batch: Batch) -> None:
        client = self.client or httpx.AsyncClient(trust_env=False)
        try:
            response = await client.post(self.config.webhook_url, content=body, timeout=self.config.timeout, headers={
                "Content-Type": "application/json", SIGNATURE_HEADER: sign(self.config.webhook_secret, body),
                "X-Firehose-Mod-Event": "review.waiting", "X-Firehose-Mod-Delivery": batch.id})
            response.raise_for_status()
        finally:
            if client is not self.client:
                await client.aclose()

    async def _dm(self, batch: Batch, items: dict) -> None:
        kinds: dict[str, int] = {}
        for item in items.values():
            kinds[item.kind] = kinds.get(item.kind, 0) + 1
        what = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
        await self.dm.send(f"{len(batch.items)} review items waiting on firehose-mod ({what}): {self.link(batch)}")
