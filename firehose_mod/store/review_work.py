"""The review desk's working records (SQL only): LLM triage calls and what each cost, shareable
batches of items, and which items operators have seen or been told about.

Unlike the moderation event log these are bookkeeping, not history: a notice's delivery state
changes as it is retried. Nothing here decides anything about an item.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass

from firehose_mod.labels.model import now_iso
from firehose_mod.store.db import Store

# Triage outcomes after which an item is not sent to the model again.
FINAL_OUTCOMES = ("proposed", "needs-human", "refused", "malformed", "unknown-category")
NOT_CONFIGURED = "not-configured"  # a notice channel that is off counts as delivered


@dataclass(frozen=True, slots=True)
class TriageCall:
    id: int
    item_id: int
    agent: str
    provider: str
    model: str
    outcome: str
    verdict: str | None
    error: str | None
    attempts: int
    input_tokens: int
    output_tokens: int
    cost_usd: float
    seconds: float | None
    created: str

    def to_json(self) -> dict:
        return {k: getattr(self, k) for k in self.__slots__}


@dataclass(frozen=True, slots=True)
class Batch:
    id: str
    items: list[int]
    created: str
    created_by: str
    notify: bool
    webhook_sent: str | None
    dm_sent: str | None
    attempts: int
    last_error: str | None

    @property
    def delivered(self) -> bool:
        return self.webhook_sent is not None and self.dm_sent is not None


_CALL_COLUMNS = ("id, item_id, agent, provider, model, outcome, verdict, error, attempts, input_tokens,"
                 " output_tokens, cost_usd, seconds, created")
_BATCH_COLUMNS = "id, items, created, created_by, notify, webhook_sent, dm_sent, attempts, last_error"


def _batch(row) -> Batch:
    values = list(row)
    values[1], values[4] = json.loads(values[1]), bool(values[4])
    return Batch(*values)


class ReviewWork(Store):
    # -- triage ---------------------------------------------------------------------------------
    async def record_call(self, item_id: int, agent: str, provider: str, model: str, outcome: str, *,
                          verdict: str | None = None, error: str | None = None, attempts: int = 1,
                          input_tokens: int = 0, output_tokens: int = 0, cost_usd: float = 0.0,
                          seconds: float | None = None) -> int:
        async with self._lock, self._transaction() as db:
            async with db.execute(
                "INSERT INTO triage_calls (item_id, agent, provider, model, outcome, verdict, error, attempts,"
                " input_tokens, output_tokens, cost_usd, seconds, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " RETURNING id",
                (item_id, agent, provider, model, outcome, verdict, (error or "")[:500] or None, attempts,
                 input_tokens, output_tokens, cost_usd, seconds, now_iso()),
            ) as cur:
                (call_id,) = await cur.fetchone()
        return call_id

    async def spend_since(self, since: str) -> float:
        """US dollars spent on triage calls made at or after `since` (an atproto datetime)."""
        async with self._reading("SELECT coalesce(sum(cost_usd), 0) FROM triage_calls WHERE created >= ?",
                                 (since,)) as cur:
            (spent,) = await cur.fetchone()
        return float(spent)

    async def calls_for(self, item_id: int) -> list[TriageCall]:
        async with self._reading(f"SELECT {_CALL_COLUMNS} FROM triage_calls WHERE item_id = ? ORDER BY id",
                                 (item_id,)) as cur:
            return [TriageCall(*r) for r in await cur.fetchall()]

    async def triage_candidates(self, kinds: tuple[str, ...], limit: int, max_calls: int) -> list[int]:
        """Open items of `kinds` (oldest first) the model has not answered yet, tried fewer than `max_calls` times."""
        marks = ", ".join("?" * len(kinds))
        finals = ", ".join("?" * len(FINAL_OUTCOMES))
        async with self._reading(
            f"SELECT r.id FROM review_items r WHERE r.status = 'open' AND r.kind IN ({marks})"
            f" AND NOT EXISTS (SELECT 1 FROM triage_calls c WHERE c.item_id = r.id AND c.outcome IN ({finals}))"
            f" AND (SELECT count(*) FROM triage_calls c WHERE c.item_id = r.id) < ? ORDER BY r.id LIMIT ?",
            (*kinds, *FINAL_OUTCOMES, max_calls, limit),
        ) as cur:
            return [r[0] for r in await cur.fetchall()]

    # -- batches ---------------------------------------------------------------------------------
    async def create_batch(self, ids: list[int], created_by: str) -> Batch:
        """A shareable selection of items (the admin page's `?batch=` link)."""
        return await self._insert_batch(ids, created_by, notify=False, channels=())

    async def batch(self, batch_id: str) -> Batch | None:
        async with self._reading(f"SELECT {_BATCH_COLUMNS} FROM review_batches WHERE id = ?", (batch_id,)) as cur:
            row = await cur.fetchone()
        return _batch(row) if row else None

    async def _insert_batch(self, ids: list[int], created_by: str, *, notify: bool, channels) -> Batch:
        batch_id = secrets.token_urlsafe(9)
        off = {c: None if c in channels else NOT_CONFIGURED for c in ("webhook", "dm")}
        async with self._lock, self._transaction() as db:
            async with db.execute(
                f"INSERT INTO review_batches (id, items, created, created_by, notify, webhook_sent, dm_sent)"
                f" VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING {_BATCH_COLUMNS}",
                (batch_id, json.dumps(list(ids)), now_iso(), created_by, int(notify), off["webhook"], off["dm"]),
            ) as cur:
                batch = _batch(await cur.fetchone())
            if notify:
                await db.executemany(
                    "INSERT INTO review_attention (item_id, batch) VALUES (?, ?)"
                    " ON CONFLICT (item_id) DO UPDATE SET batch = coalesce(batch, excluded.batch)",
                    [(i, batch_id) for i in ids])
        return batch

    # -- notices -----------------------------------------------------------------------------------
    async def unannounced(self, limit: int) -> list[int]:
        """Waiting items nobody has seen or been told about, oldest first."""
        async with self._reading(
            "SELECT r.id FROM review_items r INDEXED BY review_state LEFT JOIN review_attention a ON a.item_id = r.id"
            " WHERE r.state = 'open' AND a.item_id IS NULL ORDER BY r.id LIMIT ?", (limit,)
        ) as cur:
            return [r[0] for r in await cur.fetchall()]

    async def create_notice(self, ids: list[int], channels) -> Batch:
        """A batch to announce on `channels` (webhook, dm); its items are never announced again."""
        return await self._insert_batch(ids, "notifier", notify=True, channels=set(channels))

    async def undelivered_notice(self) -> Batch | None:
        """The oldest notice some channel has not delivered yet."""
        async with self._reading(
            f"SELECT {_BATCH_COLUMNS} FROM review_batches WHERE notify = 1 AND (webhook_sent IS NULL OR dm_sent IS NULL)"
            " ORDER BY created LIMIT 1"
        ) as cur:
            row = await cur.fetchone()
        return _batch(row) if row else None

    async def last_notice(self) -> str | None:
        """When the last notice was made (at most one per interval)."""
        async with self._reading("SELECT max(created) FROM review_batches WHERE notify = 1") as cur:
            (last,) = await cur.fetchone()
        return last

    async def notice_sent(self, batch_id: str, channel: str) -> None:
        column = {"webhook": "webhook_sent", "dm": "dm_sent"}[channel]
        await self._write(f"UPDATE review_batches SET {column} = ? WHERE id = ?", (now_iso(), batch_id))

    async def notice_failed(self, batch_id: str, error: str) -> None:
        await self._write("UPDATE review_batches SET attempts = attempts + 1, last_error = ? WHERE id = ?",
                          (error[:500], batch_id))
