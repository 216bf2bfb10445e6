"""Transparency summaries on PostgreSQL: store/transparency.py's `TransparencyStore`, same methods.

Reads the moderation event log (store/pg/review.py's tables) and keeps one row per batch in
`transparency_posts` (migration 5 of store/pg/schema.py). Batches tile the log as on SQLite:
`create` checks what is covered and what waits under a transaction-level advisory lock, so two
posters on one database make one batch per stretch (the other gets BatchRaced).
"""

from __future__ import annotations

import json

from firehose_mod.labels.model import now_iso
from firehose_mod.store.pg.pool import PgPoolStore
from firehose_mod.store.review import EVENT_COLUMNS, ModerationEvent, event_from_row
from firehose_mod.store.transparency import _POST_COLUMNS, BatchRaced, PostRow, _post

__all__ = ["PgTransparencyStore"]

# pg_advisory_xact_lock key of making a batch (store/pg/schema.py lists the others); fixed forever.
BATCH_LOCK = 0x66_6D_5F_74_72_61  # "fm_tra"
_E_COLUMNS = ", ".join(f"e.{c.strip()}" for c in EVENT_COLUMNS.split(","))


class PgTransparencyStore(PgPoolStore):
    """`transparency_posts`, and reads of the moderation event log, over a PostgreSQL database."""

    APPLICATION = "firehose-mod transparency"

    async def events_after(self, after: int, upto: int | None = None) -> list[tuple[ModerationEvent, str]]:
        """(event, its item's kind) for every moderation event with after < id <= upto, in order."""
        sql = (f"SELECT {_E_COLUMNS}, i.kind FROM moderation_event e JOIN review_items i ON i.id = e.item_id"
               " WHERE e.id > $1" + (" AND e.id <= $2" if upto is not None else "") + " ORDER BY e.id")
        rows = await self._pool.fetch(sql, *((after,) if upto is None else (after, upto)))
        return [(event_from_row(r[:-1]), r[-1]) for r in rows]

    async def first_decision_after(self, after: int) -> tuple[int, str] | None:
        """(id, created) of the first decision (confirm, reject, allow) after event `after`."""
        row = await self._pool.fetchrow("SELECT id, created FROM moderation_event WHERE id > $1 AND action IN"
                                        " ('confirm', 'reject', 'allow') ORDER BY id LIMIT 1", after)
        return (row[0], row[1]) if row else None

    async def covered(self) -> int:
        """The last moderation event id any batch covers (0: none yet)."""
        return await self._pool.fetchval("SELECT coalesce(max(last_event), 0) FROM transparency_posts")

    async def pending(self) -> PostRow | None:
        """The oldest batch not posted yet."""
        row = await self._pool.fetchrow(f"SELECT {_POST_COLUMNS} FROM transparency_posts WHERE posted IS NULL"
                                        " ORDER BY id LIMIT 1")
        return _post(row) if row else None

    async def last(self) -> PostRow | None:
        """The newest batch, posted or not."""
        row = await self._pool.fetchrow(f"SELECT {_POST_COLUMNS} FROM transparency_posts ORDER BY id DESC LIMIT 1")
        return _post(row) if row else None

    async def posts(self, limit: int = 20) -> list[PostRow]:
        rows = await self._pool.fetch(f"SELECT {_POST_COLUMNS} FROM transparency_posts ORDER BY id DESC LIMIT $1",
                                      limit)
        return [_post(r) for r in rows]

    async def create(self, after_event: int, last_event: int, period_start: str, period_end: str, summary: dict,
                     text: str, rkey: str) -> PostRow:
        """Record a new batch; BatchRaced when the stretch after `after_event` already has one, or
        another batch is still waiting to be posted."""
        async with self._pool.acquire() as db, db.transaction():
            await db.execute("SELECT pg_advisory_xact_lock($1)", BATCH_LOCK)
            covered, waiting = await db.fetchrow(
                "SELECT coalesce(max(last_event), 0), count(*) FILTER (WHERE posted IS NULL) FROM transparency_posts")
            if covered != after_event or waiting:
                raise BatchRaced(f"the summary batch after event {after_event} was made elsewhere")
            row = await db.fetchrow(
                "INSERT INTO transparency_posts (after_event, last_event, period_start, period_end, summary, text,"
                f" rkey, created) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING {_POST_COLUMNS}",
                after_event, last_event, period_start, period_end, json.dumps(summary, sort_keys=True), text, rkey,
                now_iso())
        return _post(row)

    async def attempt(self, post_id: int) -> None:
        """Count an attempt before it is made (a crash mid-attempt still counts)."""
        await self._pool.execute("UPDATE transparency_posts SET attempts = attempts + 1 WHERE id = $1", post_id)

    async def failed(self, post_id: int, error: str) -> None:
        await self._pool.execute("UPDATE transparency_posts SET last_error = $1 WHERE id = $2", error[:500], post_id)

    async def posted(self, post_id: int, uri: str, cid: str | None) -> None:
        await self._pool.execute("UPDATE transparency_posts SET uri = $1, cid = $2, posted = $3, last_error = NULL"
                                 " WHERE id = $4 AND posted IS NULL", uri, cid, now_iso(), post_id)

    async def handles(self, dids) -> dict[str, str]:
        """The latest handle identity events gave each DID (those never seen are left out)."""
        dids = list(dict.fromkeys(dids))
        rows = await self._pool.fetch(
            "SELECT DISTINCT ON (did) did, handle FROM repo_events WHERE did = ANY($1::text[]) AND handle IS NOT NULL"
            " ORDER BY did, id DESC", dids)
        found = {r[0]: r[1] for r in rows}
        return {did: found[did] for did in dids if did in found}
