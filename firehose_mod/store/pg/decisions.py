"""Decisions and review writes on PostgreSQL inside a held transaction: store/decisions.py's
`DecisionWriter`, what the PG label log hands `emit_many(also=...)`.

The same `write(rows, reviews)`, `.review`, `.reports`, `.imports` and `resolve_reviews` as
SQLite's writer. `PgDecisionStore` (the reads, and `record` /
`resolve_reviews` in transactions of their own) lives in store/pg/review_decisions.py: it opens a
pool, and the pool module imports the label log, which imports this one.
"""

from __future__ import annotations

import asyncpg

from firehose_mod.store.decisions import DecisionRow, decision_rows
from firehose_mod.store.pg.review_writer import PgReviewWriter
from firehose_mod.store.review import POLICY_ACTOR

__all__ = ["PgDecisionStore", "PgDecisionWriter", "Reviews", "pg_write_decisions"]

Reviews = list[tuple[str, str | None, str, str, list]]


class PgDecisionWriter:
    """Decision and review writes inside the transaction someone else holds on `conn`."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn

    async def write(self, rows: list[DecisionRow], reviews: Reviews = ()) -> int:
        """`pg_write_decisions` in the held transaction; returns the review items opened."""
        return await pg_write_decisions(self._conn, rows, reviews)

    @property
    def review(self) -> PgReviewWriter:
        """Review items and moderation events in the same transaction (the review desk's writes)."""
        return PgReviewWriter(self._conn)

    @property
    def reports(self):
        """Report rows in the same transaction as the review item they open or join."""
        from firehose_mod.store.pg.reports import PgReportWriter

        return PgReportWriter(self._conn)

    @property
    def imports(self):
        """Marks on the rows of a label import, committed with the labels they wrote."""
        from firehose_mod.store.pg.label_import import PgImportRowWriter  # lazy: pool -> label_log -> decisions

        return PgImportRowWriter(self._conn)

    async def resolve_reviews(self, uri: str, resolution: str, actor: str, values: list[str] | None = None) -> int:
        """`PgDecisionStore.resolve_reviews` inside the held transaction (e.g. with a delete's negations)."""
        return await PgReviewWriter(self._conn).close_waiting(uri, resolution, actor, values)

    async def history(self, uri: str) -> list[dict]:
        """The decision rows on `uri`, in order (inside the transaction; for tests and explain)."""
        rows = await self._conn.fetch("SELECT * FROM decisions WHERE uri = $1 ORDER BY id", uri)
        return [dict(r) for r in rows]


async def pg_write_decisions(conn: asyncpg.Connection, rows: list[DecisionRow], reviews: Reviews = ()) -> int:
    """store/decisions.py's `write_decisions` on PostgreSQL, inside a transaction the caller holds."""
    if rows:
        await conn.executemany(
            "INSERT INTO decisions (uri, cid, action, value, origin, rule, policy_version, scanners, evidence,"
            " label_seq, actor, reason, created) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
            decision_rows(rows))
    writer = PgReviewWriter(conn)
    opened = 0
    for uri, cid, value, reason, findings in reviews:  # each opening is a #modEventReport by the policy
        opened += await writer.open_item(uri, cid, value, reason, findings, actor=POLICY_ACTOR) is not None
    return opened


def __getattr__(name: str):
    # `from firehose_mod.store.pg.decisions import PgDecisionStore`, imported on first use (see above).
    if name == "PgDecisionStore":
        from firehose_mod.store.pg.review_decisions import PgDecisionStore

        return PgDecisionStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
