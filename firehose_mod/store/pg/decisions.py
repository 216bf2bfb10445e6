"""Decision rows in the PostgreSQL label log's own write transaction (emit_many's `also`).

The same `write(rows, reviews)` as store/decisions.py's `DecisionWriter`, over the PG
`decisions` table. The review queue, reports and import marks are not on PostgreSQL yet:
asking for them raises NotImplementedError, so nothing is silently written elsewhere.
"""

from __future__ import annotations

import json

import asyncpg

from firehose_mod.labels.model import now_iso
from firehose_mod.store.decisions import DecisionRow, _finding_json

_NOT_YET = "the review queue, reports and import marks are not on PostgreSQL yet (issue #17): use SQLite"


class PgDecisionWriter:
    """Decision writes inside the label log's transaction on `conn`."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn

    async def write(self, rows: list[DecisionRow], reviews: list[tuple[str, str | None, str, str, list]] = ()) -> int:
        """Insert `rows` in the held transaction; review items are not supported yet (returns 0 opened)."""
        if reviews:
            raise NotImplementedError(_NOT_YET)
        now = now_iso()
        await self._conn.executemany(
            "INSERT INTO decisions (uri, cid, action, value, origin, rule, policy_version, scanners, evidence,"
            " label_seq, actor, reason, created) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
            [(r.uri, r.cid, r.action, r.value, r.origin, r.rule, r.policy_version,
              json.dumps(r.scanners or {}, sort_keys=True), _finding_json(r.evidence), r.label_seq,
              r.actor, r.reason, now) for r in rows],
        )
        return 0

    @property
    def review(self):
        raise NotImplementedError(_NOT_YET)

    @property
    def reports(self):
        raise NotImplementedError(_NOT_YET)

    @property
    def imports(self):
        raise NotImplementedError(_NOT_YET)

    async def resolve_reviews(self, uri: str, resolution: str, actor: str, values: list[str] | None = None) -> int:
        raise NotImplementedError(_NOT_YET)

    async def history(self, uri: str) -> list[dict]:
        """The decision rows on `uri`, in order (inside the transaction; for tests and explain)."""
        rows = await self._conn.fetch("SELECT * FROM decisions WHERE uri = $1 ORDER BY id", uri)
        return [dict(r) for r in rows]
