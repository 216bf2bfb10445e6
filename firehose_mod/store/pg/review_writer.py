"""Review item and moderation event writes on PostgreSQL: store/review.py's `ReviewWriter`, inside
a transaction someone else holds (the label log's, so the labels an event emitted or negated
commit with it; `PgDecisionWriter.review`). The rules live in review/states.py and the row
helpers in store/review.py: only the SQL differs.

`moderation_event` is append-only (triggers, migration 4 of store/pg/schema.py). The items about
to change are read `FOR NO KEY UPDATE`: a writer outside the label log's lock
(`PgDecisionStore.record`, `resolve_reviews`) then waits for the item instead of deriving a state
from a stale one. This module imports nothing that opens a pool, so the label log can import it.
"""

from __future__ import annotations

import json

from firehose_mod.review import states as st
from firehose_mod.store.review import ITEM_COLUMNS, ActorRef, ReviewItem, ReviewRules, item_from_row

__all__ = ["PgReviewWriter"]


class PgReviewWriter(ReviewRules):
    """Item and event writes inside a transaction someone else holds on `conn` (`PgDecisionWriter.review`)."""

    def __init__(self, conn) -> None:
        self._conn = conn

    async def _insert_item(self, row: tuple) -> int | None:
        # One being opened by another transaction is waited for, then found (ON CONFLICT).
        return await self._conn.fetchval(
            "INSERT INTO review_items (uri, cid, value, reason, evidence, created, kind, source, updated, status,"
            " review_state) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'open', 'reviewOpen')"
            " ON CONFLICT DO NOTHING RETURNING id", *row)

    async def _set_last_event(self, item_id: int, event_id: int) -> None:
        await self._conn.execute("UPDATE review_items SET last_event = $1 WHERE id = $2", event_id, item_id)

    async def _decided(self, uri: str, cid: str | None, value: str) -> bool:
        found = await self._conn.fetchval(
            "SELECT 1 FROM review_items WHERE uri = $1 AND value = $2 AND cid IS NOT DISTINCT FROM $3"
            " AND status = ANY($4::text[]) LIMIT 1", uri, value, cid, sorted(st.DECIDED))
        return found is not None

    async def item(self, item_id: int) -> ReviewItem | None:
        """The item as this transaction sees it (what an action checks its plan against), locked
        until the transaction ends."""
        row = await self._conn.fetchrow(f"SELECT {ITEM_COLUMNS} FROM review_items WHERE id = $1 FOR NO KEY UPDATE",
                                        item_id)
        return item_from_row(row) if row else None

    async def waiting_for(self, uri: str, values: list[str] | None = None) -> list[ReviewItem]:
        sql = f"SELECT {ITEM_COLUMNS} FROM review_items WHERE uri = $1 AND state = 'open'"
        args: list = [uri]
        if values:
            sql += " AND value = ANY($2::text[])"
            args.append(list(values))
        rows = await self._conn.fetch(sql + " ORDER BY id FOR NO KEY UPDATE", *args)
        return [item_from_row(r) for r in rows]

    async def _set_status(self, item_id: int, status: str, review_state: str, state: str, proposal: int | None,
                          event_id: int, now: str, resolved: tuple) -> None:
        await self._conn.execute(
            "UPDATE review_items SET status = $1, review_state = $2, state = $3, proposal_event = $4, last_event = $5,"
            " updated = $6, resolution = $7, resolved_by = $8, resolved_at = $9 WHERE id = $10",
            status, review_state, state, proposal, event_id, now, *resolved, item_id)

    async def _insert_event(self, item_id, uri, cid, value, etype, action, before, after, actor: ActorRef,
                            reason, labels, payload, now) -> int:
        return await self._conn.fetchval(
            "INSERT INTO moderation_event (item_id, uri, cid, value, event_type, action, state_before, state_after,"
            " actor_kind, actor_name, actor_via, reason, labels, payload, created)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15) RETURNING id",
            item_id, uri, cid, value, etype, action, before, after, actor.kind, actor.name, actor.via, reason,
            json.dumps(labels), json.dumps(payload, default=str), now)
