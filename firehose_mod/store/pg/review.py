"""Review items and the moderation event log on PostgreSQL: store/review.py's `ReviewStore` (reads,
seen marks and, through `PgReviewWork`, the desk's bookkeeping) over a pool; the writes inside
a held transaction are `PgReviewWriter` (store/pg/review_writer.py, re-exported here). The row
helpers, column lists and rules are store/review.py's and review/states.py's: only the SQL differs.
"""

from __future__ import annotations

import json

from firehose_mod.labels.model import now_iso
from firehose_mod.review import states as st
from firehose_mod.store.pg.review_work import PgReviewWork
from firehose_mod.store.pg.review_writer import PgReviewWriter
from firehose_mod.store.query import prefix_upper_bound
from firehose_mod.store.review import (
    EVENT_COLUMNS, ITEM_COLUMNS, ItemQuery, ModerationEvent, ReviewItem, event_from_row, item_from_row,
)

__all__ = ["PgReviewStore", "PgReviewWriter", "pg_events_for_uri"]


class PgReviewStore(PgReviewWork):
    """store/review.py's `ReviewStore` over PostgreSQL: reads of items and events, the seen
    marks, and the desk's bookkeeping (`PgReviewWork`), each on a pooled connection."""

    APPLICATION = "firehose-mod review"

    async def items(self, ids) -> dict[int, ReviewItem]:
        ids = [int(i) for i in ids]
        if not ids:
            return {}
        rows = await self._pool.fetch(f"SELECT {ITEM_COLUMNS} FROM review_items WHERE id = ANY($1::bigint[])", ids)
        return {r[0]: item_from_row(r) for r in rows}

    async def query(self, q: ItemQuery) -> list[ReviewItem]:
        where: list[str] = []
        args: list = []

        def arg(value) -> str:
            args.append(value)
            return f"${len(args)}"

        for column, values, kind in (("status", q.statuses, "text"), ("kind", q.kinds, "text"),
                                     ("value", q.values, "text"), ("id", q.ids, "bigint")):
            if values:
                where.append(f"{column} = ANY({arg(list(values))}::{kind}[])")
        if q.uploader:  # the account itself (reported as a whole) and its records
            prefix = f"at://{q.uploader}/"
            upper = prefix_upper_bound(prefix)
            where.append(f"(uri = {arg(q.uploader)} OR (uri >= {arg(prefix)} AND uri < {arg(upper)}))")
        if q.after_id is not None:
            where.append(f"id {'<' if q.newest_first else '>'} {arg(q.after_id)}")
        sql = f"SELECT {ITEM_COLUMNS} FROM review_items" + (f" WHERE {' AND '.join(where)}" if where else "")
        sql += f" ORDER BY id {'DESC' if q.newest_first else 'ASC'} LIMIT {arg(q.limit)}"
        return [item_from_row(r) for r in await self._pool.fetch(sql, *args)]

    async def counts(self) -> dict[str, int]:
        """Items per status (every status present, zero when none)."""
        rows = await self._pool.fetch("SELECT status, count(*) FROM review_items GROUP BY status")
        found = {r[0]: r[1] for r in rows}
        return {s: found.get(s, 0) for s in st.STATUSES}

    async def events(self, item_id: int) -> list[ModerationEvent]:
        rows = await self._pool.fetch(f"SELECT {EVENT_COLUMNS} FROM moderation_event WHERE item_id = $1 ORDER BY id",
                                      item_id)
        return [event_from_row(r) for r in rows]

    async def event(self, event_id: int) -> ModerationEvent | None:
        row = await self._pool.fetchrow(f"SELECT {EVENT_COLUMNS} FROM moderation_event WHERE id = $1", event_id)
        return event_from_row(row) if row else None

    async def track_record(self, uri: str) -> tuple[str | None, dict | None]:
        """(cid, record) of the stored track at `uri`, (None, None) when ingest never saw it."""
        row = await self._pool.fetchrow("SELECT cid, record, deleted FROM tracks WHERE uri = $1", uri)
        if row is None or row[2]:
            return None, None
        return row[0], json.loads(row[1]) if row[1] else None

    async def handle(self, did: str) -> str | None:
        """The uploader's handle as their latest identity event gave it (None when never seen)."""
        return await self._pool.fetchval("SELECT handle FROM repo_events WHERE did = $1 AND handle IS NOT NULL"
                                         " ORDER BY id DESC LIMIT 1", did)

    async def kind_counts(self, statuses) -> dict[str, int]:
        """Items per kind among `statuses` (the admin page's tabs)."""
        rows = await self._pool.fetch("SELECT kind, count(*) FROM review_items WHERE status = ANY($1::text[])"
                                      " GROUP BY kind", list(statuses))
        found = {r[0]: r[1] for r in rows}
        return {k: found.get(k, 0) for k in st.KINDS}

    async def mark_seen(self, ids, who: str) -> None:
        """Remember that an operator looked at these items: they are never announced (again)."""
        now = now_iso()
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.executemany(
                "INSERT INTO review_attention (item_id, seen, seen_by) VALUES ($1, $2, $3)"
                " ON CONFLICT (item_id) DO UPDATE SET seen = coalesce(review_attention.seen, excluded.seen),"
                " seen_by = coalesce(review_attention.seen_by, excluded.seen_by)", [(i, now, who) for i in ids])

    async def rebuild_status(self) -> dict[int, str]:
        """Every item's status replayed from the event log alone (must equal review_items.status)."""
        out: dict[int, str] = {}
        for item_id, action in await self._pool.fetch("SELECT item_id, action FROM moderation_event ORDER BY id"):
            out[item_id] = st.OPEN if action == "open" else st.next_status(action, out[item_id])
        return out


async def pg_events_for_uri(pool, uri: str) -> list[ModerationEvent]:
    """Every moderation event on `uri` in order (explain), read through `pool`."""
    rows = await pool.fetch(f"SELECT {EVENT_COLUMNS} FROM moderation_event WHERE uri = $1 ORDER BY id", uri)
    return [event_from_row(r) for r in rows]
