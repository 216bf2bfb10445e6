"""Reports and appeals on PostgreSQL: store/reports.py's `ReportStore` and `ReportWriter`.

`reports` is append-only (triggers, migration 3 of store/pg/schema.py). A report is written by
`PgReportWriter` inside a transaction someone else holds (on SQLite, the label log's, which
opens or joins the review item); `PgReportStore` reads them, and counts them for rate limits.
"""

from __future__ import annotations

import json

import asyncpg

from firehose_mod.store.pg.pool import PgPoolStore
from firehose_mod.store.reports import _COLUMNS, Report, _report

__all__ = ["PgReportStore", "PgReportWriter"]


class PgReportWriter:
    """Report rows inside a transaction someone else holds on `conn`."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn

    async def add(self, *, reporter: str, via_service: str | None, reason_type: str, reason: str | None,
                  subject: dict, subject_uri: str, subject_cid: str | None, subject_did: str, appeal: bool,
                  value: str, item_id: int | None, counter_notice: dict | None, mod_tool: dict | None,
                  created: str) -> int:
        return await self._conn.fetchval(
            "INSERT INTO reports (reporter, via_service, reason_type, reason, subject, subject_uri, subject_cid,"
            " subject_did, appeal, value, item_id, counter_notice, mod_tool, created)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) RETURNING id",
            reporter, via_service, reason_type, reason, json.dumps(subject, sort_keys=True), subject_uri,
            subject_cid, subject_did, bool(appeal), value, item_id,
            json.dumps(counter_notice) if counter_notice is not None else None,
            json.dumps(mod_tool) if mod_tool is not None else None, created)


class PgReportStore(PgPoolStore):
    """Reading the `reports` table over a PostgreSQL database."""

    APPLICATION = "firehose-mod reports"

    async def since(self, *, reporter: str | None = None, subject_uri: str | None = None, after: str) -> int:
        """Reports by `reporter` (or about `subject_uri`) created after `after` (rate limits)."""
        column, value = ("reporter", reporter) if reporter is not None else ("subject_uri", subject_uri)
        return await self._pool.fetchval(f"SELECT count(*) FROM reports WHERE {column} = $1 AND created > $2",
                                         value, after)

    async def for_item(self, item_id: int) -> list[Report]:
        return await self._reports(f"SELECT {_COLUMNS} FROM reports WHERE item_id = $1 ORDER BY id", item_id)

    async def appeals_by(self, did: str, limit: int = 100) -> list[Report]:
        """The appeals `did` filed, newest first."""
        return await self._reports(f"SELECT {_COLUMNS} FROM reports WHERE reporter = $1 AND appeal"
                                   " ORDER BY id DESC LIMIT $2", did, limit)

    async def about(self, uri: str, value: str, *, appeal: bool) -> list[Report]:
        """The reports (or appeals) about `uri` asking about `value`, oldest first."""
        return await self._reports(f"SELECT {_COLUMNS} FROM reports WHERE subject_uri = $1 AND value = $2"
                                   " AND appeal = $3 ORDER BY id LIMIT 200", uri, value, appeal)

    async def get(self, report_id: int) -> Report | None:
        row = await self._pool.fetchrow(f"SELECT {_COLUMNS} FROM reports WHERE id = $1", report_id)
        return _report(row) if row else None

    async def _reports(self, sql: str, *args) -> list[Report]:
        return [_report(r) for r in await self._pool.fetch(sql, *args)]
