"""Reports and appeals as received (SQL only; the rules live in review/reports.py).

`reports` is append-only: a report is written once, in the label log's transaction that opens
or joins its review item (`ReportWriter`, handed out by `DecisionWriter.reports`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import aiosqlite

from firehose_mod.store.db import Store

_COLUMNS = ("id, reporter, via_service, reason_type, reason, subject, subject_uri, subject_cid, subject_did, appeal,"
            " value, item_id, counter_notice, mod_tool, created")


@dataclass(frozen=True, slots=True)
class Report:
    id: int
    reporter: str
    via_service: str | None
    reason_type: str
    reason: str | None
    subject: dict
    subject_uri: str
    subject_cid: str | None
    subject_did: str
    appeal: bool
    value: str
    item_id: int | None
    counter_notice: dict | None
    mod_tool: dict | None
    created: str

    def to_json(self) -> dict:
        from dataclasses import asdict

        return asdict(self)


def _report(row) -> Report:
    v = list(row)
    v[5] = json.loads(v[5])
    v[9] = bool(v[9])
    v[12] = json.loads(v[12]) if v[12] else None
    v[13] = json.loads(v[13]) if v[13] else None
    return Report(*v)


class ReportWriter:
    """Report rows inside a transaction someone else holds."""

    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db

    async def add(self, *, reporter: str, via_service: str | None, reason_type: str, reason: str | None,
                  subject: dict, subject_uri: str, subject_cid: str | None, subject_did: str, appeal: bool,
                  value: str, item_id: int | None, counter_notice: dict | None, mod_tool: dict | None,
                  created: str) -> int:
        async with self._db.execute(
            "INSERT INTO reports (reporter, via_service, reason_type, reason, subject, subject_uri, subject_cid,"
            " subject_did, appeal, value, item_id, counter_notice, mod_tool, created)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
            (reporter, via_service, reason_type, reason, json.dumps(subject, sort_keys=True), subject_uri,
             subject_cid, subject_did, int(appeal), value, item_id,
             json.dumps(counter_notice) if counter_notice is not None else None,
             json.dumps(mod_tool) if mod_tool is not None else None, created),
        ) as cur:
            return (await cur.fetchone())[0]


class ReportStore(Store):
    async def since(self, *, reporter: str | None = None, subject_uri: str | None = None, after: str) -> int:
        """Reports by `reporter` (or about `subject_uri`) created after `after` (rate limits)."""
        column, value = ("reporter", reporter) if reporter is not None else ("subject_uri", subject_uri)
        async with self._reading(f"SELECT count(*) FROM reports WHERE {column} = ? AND created > ?",
                                 (value, after)) as cur:
            return (await cur.fetchone())[0]

    async def for_item(self, item_id: int) -> list[Report]:
        async with self._reading(f"SELECT {_COLUMNS} FROM reports WHERE item_id = ? ORDER BY id", (item_id,)) as cur:
            return [_report(r) for r in await cur.fetchall()]

    async def appeals_by(self, did: str, limit: int = 100) -> list[Report]:
        """The appeals `did` filed, newest first."""
        async with self._reading(f"SELECT {_COLUMNS} FROM reports WHERE reporter = ? AND appeal = 1"
                                 " ORDER BY id DESC LIMIT ?", (did, limit)) as cur:
            return [_report(r) for r in await cur.fetchall()]

    async def about(self, uri: str, value: str, *, appeal: bool) -> list[Report]:
        """The reports (or appeals) about `uri` asking about `value`, oldest first."""
        async with self._reading(f"SELECT {_COLUMNS} FROM reports WHERE subject_uri = ? AND value = ? AND appeal = ?"
                                 " ORDER BY id LIMIT 200", (uri, value, int(appeal))) as cur:
            return [_report(r) for r in await cur.fetchall()]

    async def get(self, report_id: int) -> Report | None:
        async with self._reading(f"SELECT {_COLUMNS} FROM reports WHERE id = ?", (report_id,)) as cur:
            row = await cur.fetchone()
        return _report(row) if row else None
