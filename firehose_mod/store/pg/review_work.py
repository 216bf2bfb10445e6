"""The review desk's working records on PostgreSQL: store/review_work.py's `ReviewWork`
(triage calls and their cost, shareable batches, notices), the same methods over the tables of
migration 4 of store/pg/schema.py. Bookkeeping, not history: a notice's delivery state changes
as it is retried; nothing here decides anything about an item.
"""

from __future__ import annotations

import json
import secrets

from firehose_mod.labels.model import now_iso
from firehose_mod.store.pg.pool import PgPoolStore
from firehose_mod.store.review_work import (
    _BATCH_COLUMNS, _CALL_COLUMNS, FINAL_OUTCOMES, NOT_CONFIGURED, Batch, TriageCall, _batch,
)

__all__ = ["PgReviewWork"]


class PgReviewWork(PgPoolStore):
    """Triage calls, batches and notices; each write one statement or one short transaction."""

    # -- triage ---------------------------------------------------------------------------------
    async def record_call(self, item_id: int, agent: str, provider: str, model: str, outcome: str, *,
                          verdict: str | None = None, error: str | None = None, attempts: int = 1,
                          input_tokens: int = 0, output_tokens: int = 0, cost_usd: float = 0.0,
                          seconds: float | None = None) -> int:
        return await self._pool.fetchval(
            "INSERT INTO triage_calls (item_id, agent, provider, model, outcome, verdict, error, attempts,"
            " input_tokens, output_tokens, cost_usd, seconds, created)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) RETURNING id",
            item_id, agent, provider, model, outcome, verdict, (error or "")[:500] or None, attempts,
            input_tokens, output_tokens, float(cost_usd), None if seconds is None else float(seconds), now_iso())

    async def spend_since(self, since: str) -> float:
        """US dollars spent on triage calls made at or after `since` (an atproto datetime)."""
        spent = await self._pool.fetchval(
            "SELECT coalesce(sum(cost_usd), 0) FROM triage_calls WHERE created >= $1", since)
        return float(spent)

    async def calls_for(self, item_id: int) -> list[TriageCall]:
        rows = await self._pool.fetch(f"SELECT {_CALL_COLUMNS} FROM triage_calls WHERE item_id = $1 ORDER BY id",
                                      item_id)
        return [TriageCall(*r) for r in rows]

    async def triage_candidates(self, kinds: tuple[str, ...], limit: int, max_calls: int) -> list[int]:
        """Open items of `kinds` (oldest first) the model has not answered yet, tried fewer than `max_calls` times."""
        rows = await self._pool.fetch(
            "SELECT r.id FROM review_items r WHERE r.status = 'open' AND r.kind = ANY($1::text[])"
            " AND NOT EXISTS (SELECT 1 FROM triage_calls c WHERE c.item_id = r.id AND c.outcome = ANY($2::text[]))"
            " AND (SELECT count(*) FROM triage_calls c WHERE c.item_id = r.id) < $3 ORDER BY r.id LIMIT $4",
            list(kinds), list(FINAL_OUTCOMES), max_calls, limit)
        return [r[0] for r in rows]

    # -- batches ---------------------------------------------------------------------------------
    async def create_batch(self, ids: list[int], created_by: str) -> Batch:
        """A shareable selection of items (the admin page's `?batch=` link)."""
        return await self._insert_batch(ids, created_by, notify=False, channels=())

    async def batch(self, batch_id: str) -> Batch | None:
        row = await self._pool.fetchrow(f"SELECT {_BATCH_COLUMNS} FROM review_batches WHERE id = $1", batch_id)
        return _batch(row) if row else None

    async def _insert_batch(self, ids: list[int], created_by: str, *, notify: bool, channels) -> Batch:
        batch_id = secrets.token_urlsafe(9)
        off = {c: None if c in channels else NOT_CONFIGURED for c in ("webhook", "dm")}
        async with self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                f"INSERT INTO review_batches (id, items, created, created_by, notify, webhook_sent, dm_sent)"
                f" VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {_BATCH_COLUMNS}",
                batch_id, json.dumps(list(ids)), now_iso(), created_by, bool(notify), off["webhook"], off["dm"])
            if notify:
                await conn.executemany(
                    "INSERT INTO review_attention (item_id, batch) VALUES ($1, $2)"
                    " ON CONFLICT (item_id) DO UPDATE SET batch = coalesce(review_attention.batch, excluded.batch)",
                    [(i, batch_id) for i in ids])
        return _batch(row)

    # -- notices -----------------------------------------------------------------------------------
    async def unannounced(self, limit: int) -> list[int]:
        """Waiting items nobody has seen or been told about, oldest first."""
        rows = await self._pool.fetch(
            "SELECT r.id FROM review_items r LEFT JOIN review_attention a ON a.item_id = r.id"
            " WHERE r.state = 'open' AND a.item_id IS NULL ORDER BY r.id LIMIT $1", limit)
        return [r[0] for r in rows]

    async def create_notice(self, ids: list[int], channels) -> Batch:
        """A batch to announce on `channels` (webhook, dm); its items are never announced again."""
        return await self._insert_batch(ids, "notifier", notify=True, channels=set(channels))

    async def undelivered_notice(self) -> Batch | None:
        """The oldest notice some channel has not delivered yet."""
        row = await self._pool.fetchrow(
            f"SELECT {_BATCH_COLUMNS} FROM review_batches WHERE notify AND (webhook_sent IS NULL OR dm_sent IS NULL)"
            " ORDER BY created LIMIT 1")
        return _batch(row) if row else None

    async def last_notice(self) -> str | None:
        """When the last notice was made (at most one per interval)."""
        return await self._pool.fetchval("SELECT max(created) FROM review_batches WHERE notify")

    async def notice_sent(self, batch_id: str, channel: str) -> None:
        column = {"webhook": "webhook_sent", "dm": "dm_sent"}[channel]
        await self._pool.execute(f"UPDATE review_batches SET {column} = $1 WHERE id = $2", now_iso(), batch_id)

    async def notice_failed(self, batch_id: str, error: str) -> None:
        await self._pool.execute("UPDATE review_batches SET attempts = attempts + 1, last_error = $1 WHERE id = $2",
                                 error[:500], batch_id)
