"""Transparency summaries (SQL only; what they say lives in review/transparency.py).

Reads the moderation event log after a cursor (each event with its item's kind), and keeps one
row per batch in `transparency_posts`: the stretch of the log it covers, its text, the record key
chosen for its post, and once posted the post's URI. Batches tile the log: a batch starts at the
previous one's `last_event` (unique), so a restart neither posts a stretch twice nor skips one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from firehose_mod.labels.model import now_iso
from firehose_mod.store.db import Store
from firehose_mod.store.review import EVENT_COLUMNS, ModerationEvent, event_from_row

_POST_COLUMNS = ("id, after_event, last_event, period_start, period_end, summary, text, rkey, created, attempts,"
                 " last_error, uri, cid, posted")


@dataclass(frozen=True, slots=True)
class PostRow:
    id: int
    after_event: int
    last_event: int
    period_start: str
    period_end: str
    summary: dict
    text: str
    rkey: str
    created: str
    attempts: int
    last_error: str | None
    uri: str | None
    cid: str | None
    posted: str | None

    def to_json(self) -> dict:
        return {k: getattr(self, k) for k in self.__slots__}


def _post(row) -> PostRow:
    values = list(row)
    values[5] = json.loads(values[5])
    return PostRow(*values)


class BatchRaced(RuntimeError):
    """Another poster made the batch for this stretch first (two daemons on one database)."""


class TransparencyStore(Store):
    async def events_after(self, after: int, upto: int | None = None) -> list[tuple[ModerationEvent, str]]:
        """(event, its item's kind) for every moderation event with after < id <= upto, in order."""
        columns = ", ".join(f"e.{c.strip()}" for c in EVENT_COLUMNS.split(","))
        sql = (f"SELECT {columns}, i.kind FROM moderation_event e JOIN review_items i ON i.id = e.item_id"
               " WHERE e.id > ?" + (" AND e.id <= ?" if upto is not None else "") + " ORDER BY e.id")
        async with self._reading(sql, (after,) if upto is None else (after, upto)) as cur:
            return [(event_from_row(r[:-1]), r[-1]) for r in await cur.fetchall()]

    async def first_decision_after(self, after: int) -> tuple[int, str] | None:
        """(id, created) of the first decision (confirm, reject, allow) after event `after`."""
        async with self._reading("SELECT id, created FROM moderation_event WHERE id > ? AND action IN"
                                 " ('confirm', 'reject', 'allow') ORDER BY id LIMIT 1", (after,)) as cur:
            row = await cur.fetchone()
        return (row[0], row[1]) if row else None

    async def covered(self) -> int:
        """The last moderation event id any batch covers (0: none yet)."""
        async with self._reading("SELECT coalesce(max(last_event), 0) FROM transparency_posts") as cur:
            (n,) = await cur.fetchone()
        return n

    async def pending(self) -> PostRow | None:
        """The oldest batch not posted yet."""
        async with self._reading(f"SELECT {_POST_COLUMNS} FROM transparency_posts WHERE posted IS NULL"
                                 " ORDER BY id LIMIT 1") as cur:
            row = await cur.fetchone()
        return _post(row) if row else None

    async def last(self) -> PostRow | None:
        """The newest batch, posted or not."""
        async with self._reading(f"SELECT {_POST_COLUMNS} FROM transparency_posts ORDER BY id DESC LIMIT 1") as cur:
            row = await cur.fetchone()
        return _post(row) if row else None

    async def posts(self, limit: int = 20) -> list[PostRow]:
        async with self._reading(f"SELECT {_POST_COLUMNS} FROM transparency_posts ORDER BY id DESC LIMIT ?",
                                 (limit,)) as cur:
            return [_post(r) for r in await cur.fetchall()]

    async def create(self, after_event: int, last_event: int, period_start: str, period_end: str, summary: dict,
                     text: str, rkey: str) -> PostRow:
        """Record a new batch; BatchRaced when the stretch after `after_event` already has one, or
        another batch is still waiting to be posted."""
        async with self._lock, self._transaction() as db:
            async with db.execute("SELECT coalesce(max(last_event), 0), coalesce(sum(posted IS NULL), 0)"
                                  " FROM transparency_posts") as cur:
                covered, waiting = await cur.fetchone()
            if covered != after_event or waiting:
                raise BatchRaced(f"the summary batch after event {after_event} was made elsewhere")
            async with db.execute(
                "INSERT INTO transparency_posts (after_event, last_event, period_start, period_end, summary, text,"
                f" rkey, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING {_POST_COLUMNS}",
                (after_event, last_event, period_start, period_end, json.dumps(summary, sort_keys=True), text, rkey,
                 now_iso()),
            ) as cur:
                return _post(await cur.fetchone())

    async def attempt(self, post_id: int) -> None:
        """Count an attempt before it is made (a crash mid-attempt still counts)."""
        await self._write("UPDATE transparency_posts SET attempts = attempts + 1 WHERE id = ?", (post_id,))

    async def failed(self, post_id: int, error: str) -> None:
        await self._write("UPDATE transparency_posts SET last_error = ? WHERE id = ?", (error[:500], post_id))

    async def posted(self, post_id: int, uri: str, cid: str | None) -> None:
        await self._write("UPDATE transparency_posts SET uri = ?, cid = ?, posted = ?, last_error = NULL"
                          " WHERE id = ? AND posted IS NULL", (uri, cid, now_iso(), post_id))

    async def handles(self, dids) -> dict[str, str]:
        """The latest handle identity events gave each DID (those never seen are left out)."""
        out: dict[str, str] = {}
        for did in dict.fromkeys(dids):
            async with self._reading("SELECT handle FROM repo_events WHERE did = ? AND handle IS NOT NULL"
                                     " ORDER BY id DESC LIMIT 1", (did,)) as cur:
                row = await cur.fetchone()
            if row:
                out[did] = row[0]
        return out
