"""store/decisions.py's `DecisionStore` over PostgreSQL: the reads of decisions and the review
queue (what the scan engine, explain and the policy commands use), and `record` /
`resolve_reviews` in transactions of their own. The writes inside the label log's transaction
are store/pg/decisions.py's `PgDecisionWriter`.
"""

from __future__ import annotations

import json
from typing import Self

import asyncpg

from firehose_mod.store.db import SchemaError
from firehose_mod.store.decisions import DecisionRow
from firehose_mod.store.pg.decisions import Reviews, pg_write_decisions
from firehose_mod.store.pg.label_log import DatabaseUnreachable
from firehose_mod.store.pg.pool import PgPoolStore
from firehose_mod.store.pg.review import pg_events_for_uri
from firehose_mod.store.pg.review_writer import PgReviewWriter
from firehose_mod.store.pg.schema import SCHEMA_VERSION, WRITE_LOCK
from firehose_mod.store.query import prefix_upper_bound
from firehose_mod.store.review import ITEM_COLUMNS, ModerationEvent, ReviewItem, item_from_row

__all__ = ["PgDecisionStore"]


class PgDecisionStore(PgPoolStore):
    """store/decisions.py's `DecisionStore` over PostgreSQL."""

    APPLICATION = "firehose-mod decisions"

    @classmethod
    async def open(cls, url: str, *, connections: int | None = None, readonly: bool = False) -> Self:
        """Connect (and migrate); `readonly` (a dry run): connections the server keeps read-only,
        on a database some writable process already migrated (SchemaError otherwise)."""
        if not readonly:
            return await super().open(url, connections=connections)
        pool = await _read_only_pool(url, connections or cls.CONNECTIONS, cls.APPLICATION)
        return cls(pool)

    async def record(self, rows: list[DecisionRow], reviews: Reviews = ()) -> int:
        """Write decisions and open review items (uri, cid, value, reason, findings) in one transaction.

        A review item already open for (uri, value) is not opened twice; returns how many opened.
        """
        async with self._pool.acquire() as conn, conn.transaction():
            await _event_order(conn)
            return await pg_write_decisions(conn, rows, reviews)

    async def automatic_values(self, uri: str) -> dict[str, str]:
        """For each value on `uri`, the origin of its latest label/negate decision (policy or human)."""
        latest: dict[str, str] = {}
        for value, origin, action in await self._label_decisions(uri, "value, origin, action"):
            latest[value] = origin if action == "label" else f"negated-by-{origin}"
        return latest

    async def overruled(self, uri: str, cid: str | None) -> set[str]:
        """Values whose latest label decision on `uri` is a negation a person (or an agent the
        policy let act) made for version `cid`: a scan of that same version must not undo it."""
        rows = await self._label_decisions(uri, "value, origin, action, cid")
        latest = {value: (origin, action, c) for value, origin, action, c in rows}
        return {v for v, (origin, action, c) in latest.items()
                if action == "negate" and origin not in ("policy", "delete") and c == cid}

    async def _label_decisions(self, uri: str, columns: str) -> list:
        return await self._pool.fetch(f"SELECT {columns} FROM decisions WHERE uri = $1"
                                      " AND action IN ('label', 'negate') ORDER BY id", uri)

    async def history(self, uri: str) -> list[dict]:
        rows = [dict(r) for r in await self._pool.fetch("SELECT * FROM decisions WHERE uri = $1 ORDER BY id", uri)]
        for r in rows:
            r["scanners"] = json.loads(r["scanners"])
            r["evidence"] = json.loads(r["evidence"])
        return rows

    # -- review queue -----------------------------------------------------------------------
    async def open_reviews(self, uri: str | None = None, limit: int = 100) -> list[ReviewItem]:
        if uri:
            return await self._items(f"SELECT {ITEM_COLUMNS} FROM review_items WHERE state = 'open' AND uri = $1"
                                     " ORDER BY id LIMIT $2", uri, limit)
        return await self._items(f"SELECT {ITEM_COLUMNS} FROM review_items WHERE state = 'open' ORDER BY id LIMIT $1",
                                 limit)

    async def settled_reviews(self, uri: str, cid: str | None) -> set[str]:
        """Values a review of `uri` at `cid` would not open: an item waits, or a person decided this version."""
        rows = await self._pool.fetch(
            "SELECT DISTINCT value FROM review_items WHERE uri = $1 AND (state = 'open'"
            " OR (cid IS NOT DISTINCT FROM $2 AND status IN ('confirmed', 'rejected', 'allowed')))", uri, cid)
        return {r[0] for r in rows}

    async def reviews_for(self, uri: str) -> list[ReviewItem]:
        return await self._items(f"SELECT {ITEM_COLUMNS} FROM review_items WHERE uri = $1 ORDER BY id", uri)

    async def resolve_reviews(self, uri: str, resolution: str, actor: str, values: list[str] | None = None) -> int:
        """Close the waiting review items of `uri` (optionally only `values`); returns how many.

        "content-deleted" records a #recordEvent (op delete); any other resolution a
        #modEventAcknowledge with the resolution as its reason. Both by the system actor `actor`.
        """
        async with self._pool.acquire() as conn, conn.transaction():
            await _event_order(conn)
            return await PgReviewWriter(conn).close_waiting(uri, resolution, actor, values)

    async def review_events(self, uri: str) -> list[ModerationEvent]:
        """The moderation event log of `uri` (every item on it), in order."""
        return await pg_events_for_uri(self._pool, uri)

    async def counts(self) -> dict[str, int]:
        out = {"open": 0, "resolved": 0}
        out.update({r[0]: r[1] for r in await self._pool.fetch("SELECT state, count(*) FROM review_items"
                                                                  " GROUP BY state")})
        return out

    async def uris_under(self, prefix: str) -> dict[str, tuple[int, str]]:
        """{uri: (decisions, latest decision time)} for every uri starting with `prefix` (an index range)."""
        where, args = _prefix_range(prefix)
        rows = await self._pool.fetch(f"SELECT uri, count(*), max(created) FROM decisions WHERE {where}"
                                      " GROUP BY uri ORDER BY uri", *args)
        return {uri: (n, latest) for uri, n, latest in rows}

    async def open_reviews_under(self, prefix: str) -> list[ReviewItem]:
        """The open review items of every uri starting with `prefix`, by uri then id."""
        where, args = _prefix_range(prefix)
        return await self._items(f"SELECT {ITEM_COLUMNS} FROM review_items WHERE state = 'open' AND {where}"
                                 " ORDER BY uri, id", *args)

    async def _items(self, sql: str, *args) -> list[ReviewItem]:
        return [item_from_row(r) for r in await self._pool.fetch(sql, *args)]


def _prefix_range(prefix: str) -> tuple[str, list]:
    """`uri` starts with `prefix`, as a range the "C"-collated uri indexes serve (no LIKE wildcards)."""
    upper = prefix_upper_bound(prefix)
    if upper is None:
        return "uri >= $1", [prefix]
    return "uri >= $1 AND uri < $2", [prefix, upper]


async def _event_order(conn: asyncpg.Connection) -> None:
    """Take the label log's write lock, as every transaction that appends moderation events
    inside the label log does: event ids then commit in id order, so a reader going by id (the
    transparency poster's `events_after`) never passes an id that commits later."""
    await conn.execute("SELECT pg_advisory_xact_lock($1)", WRITE_LOCK)


async def _read_only_pool(url: str, connections: int, application: str) -> asyncpg.Pool:
    """A pool whose every transaction is read-only, over a database at this code's schema version."""
    settings = {"application_name": application, "default_transaction_read_only": "on"}
    try:
        pool = await asyncpg.create_pool(url, min_size=1, max_size=connections, server_settings=settings)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise DatabaseUnreachable(url, exc) from exc
    try:
        found = 0
        if await pool.fetchval("SELECT to_regclass('schema_version')") is not None:
            found = await pool.fetchval("SELECT max(version) FROM schema_version")
    except BaseException:
        await pool.close()
        raise
    if found != SCHEMA_VERSION:
        await pool.close()
        raise SchemaError(f"the PostgreSQL database is at schema version {found or 0} and this firehose-mod needs"
                          f" {SCHEMA_VERSION}: a read-only open does not migrate; run a writable command first"
                          " (or the matching firehose-mod)")
    return pool
