"""Dead letters: upstream input that ingest could not use, each kept once for the operator.

A letter's fingerprint covers where it came from and what it holds (source, cursor, reason,
DID, URI, detail, raw bytes), so reading the same input again (Jetstream resumes 5 s before
its cursor, a replay, a backfill page read twice) finds the letter already kept.
"""

from __future__ import annotations

import hashlib

from firehose_mod.events import DeadLetter
from firehose_mod.store.db import Store

MAX_DETAIL = 2000
MAX_RAW = 65536


def fingerprint(d: DeadLetter) -> bytes:
    """SHA-256 over the letter's identity and content, as stored (detail and raw truncated)."""
    h = hashlib.sha256()
    for part in (d.source, str(d.cursor), d.reason, d.did or "", d.uri or "", d.detail[:MAX_DETAIL]):
        h.update(part.encode(errors="replace") + b"\0")
    h.update(d.raw[:MAX_RAW])
    return h.digest()


class DeadLetterTable(Store):
    """The `dead_letters` table: written inside the ingest commit, read by the operator."""

    async def _keep_dead_letter(self, source: str, d: DeadLetter, now: str) -> bool:
        """Keep `d` (inside the caller's transaction); False when it is already kept."""
        cur = await self._db.execute(
            "INSERT INTO dead_letters (source, cursor, reason, detail, did, uri, raw, created, fingerprint)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (fingerprint) DO NOTHING",
            (source, d.cursor, d.reason, d.detail[:MAX_DETAIL], d.did, d.uri, d.raw[:MAX_RAW], now, fingerprint(d)),
        )
        return cur.rowcount > 0

    async def dead_letters(self, limit: int = 50) -> list[dict]:
        """The latest letters, newest first (without their raw bytes)."""
        async with self._reading(
            "SELECT id, source, cursor, reason, detail, did, uri, created FROM dead_letters ORDER BY id DESC LIMIT ?",
            (limit,),
        ) as cur:
            cols = [c[0] for c in cur.description]
            return [dict(zip(cols, r)) for r in await cur.fetchall()]

    async def dead_letter_count(self) -> int:
        async with self._reading("SELECT count(*) FROM dead_letters") as cur:
            return (await cur.fetchone())[0]
