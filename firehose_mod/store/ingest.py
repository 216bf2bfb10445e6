"""The ingest side of the database, as one façade: source cursors and the ingest commit.

`IngestStore.commit` writes a batch of events and advances the source cursor in ONE
transaction, so the cursor never runs ahead of the work it covers and a crash between
two batches repeats at most work that is then recognised as already done:
- a track version is applied only if it is newer than the one stored (`tracks.verdict`),
- a scan job is unique by (uri, cid, operation) (`scan_queue`),
- repo events are unique by (source, cursor, did, kind), dead letters by their
  fingerprint (`dead_letters`).

An `#account` event that makes a DID active again (its last recorded account event was not
active, or none is recorded) queues, in the same transaction, a rescan of its live tracks whose
latest scan found the media unavailable: a deactivated account's PDS refuses its blobs.

The SQL of each concern lives in its own module; `IngestStore` combines them over one
writer connection, so callers keep one object.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import structlog

from firehose_mod.events import DeadLetter, RepoEvent, TrackEvent
from firehose_mod.labels.model import now_iso
from firehose_mod.store.dead_letters import DeadLetterTable
from firehose_mod.store.scan_queue import ScanJob, ScanQueue
from firehose_mod.store.tracks import TrackTable, verdict

__all__ = ["CommitResult", "IngestStore", "ScanJob"]

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class CommitResult:
    enqueued: int
    duplicates: int
    dead: int  # dead letters kept (those already kept are not counted again)


def _activates(ev: RepoEvent) -> bool:
    """An account event saying the account is active (again)."""
    return ev.kind == "account" and ev.active is True


class IngestStore(TrackTable, ScanQueue, DeadLetterTable):
    """Typed access to the ingest tables; one writer connection."""

    async def cursor(self, source: str) -> int | None:
        """The saved cursor of `source`, or None if it never committed."""
        async with self._reading("SELECT cursor FROM source_cursors WHERE source = ?", (source,)) as cur:
            row = await cur.fetchone()
        return row[0] if row else None

    async def set_cursors(self, rows: dict[str, int | None]) -> None:
        """Set (or, with None, delete) `source_cursors` rows in one transaction, whatever they held
        (a replay's window; `commit` only ever moves a cursor forward)."""
        now = now_iso()
        async with self._lock, self._transaction() as db:
            for source, cursor in rows.items():
                if cursor is None:
                    await db.execute("DELETE FROM source_cursors WHERE source = ?", (source,))
                else:
                    await db.execute(
                        "INSERT INTO source_cursors (source, cursor, updated) VALUES (?, ?, ?)"
                        " ON CONFLICT (source) DO UPDATE SET cursor = excluded.cursor, updated = excluded.updated",
                        (source, cursor, now))

    async def commit(
        self, source: str, cursor: int | None, events: Sequence[TrackEvent | RepoEvent],
        dead: Sequence[DeadLetter] = (), *, rescan: bool = False,
    ) -> CommitResult:
        """Apply `events`, keep `dead` letters and advance `source`'s cursor, atomically.

        With `rescan` (a replay), a version that is already known is scanned again.
        """
        async with self._lock:
            return await self._commit(source, cursor, events, dead, rescan)

    async def _commit(self, source, cursor, events, dead, rescan=False) -> CommitResult:
        now = now_iso()
        enqueued = duplicates = kept = 0
        reactivated: list[tuple[str, int]] = []
        async with self._transaction():
            for ev in events:
                if isinstance(ev, TrackEvent):
                    new = await self._apply_track(ev, source, now, rescan)
                    enqueued += new
                else:
                    was_active = await self._account_active(ev.did) if _activates(ev) else None
                    new = await self._record_repo_event(ev, source, now)
                    if new and _activates(ev) and not was_active:
                        n = await self._enqueue_unavailable_rescans(ev.did, source, ev.cursor, now)
                        enqueued += n
                        if n:
                            reactivated.append((ev.did, n))
                duplicates += not new
            for d in dead:
                kept += await self._keep_dead_letter(source, d, now)
            if cursor is not None:
                await self._db.execute(
                    "INSERT INTO source_cursors (source, cursor, updated) VALUES (?, ?, ?)"
                    " ON CONFLICT (source) DO UPDATE SET cursor = max(cursor, excluded.cursor),"
                    " updated = excluded.updated",
                    (source, cursor, now),
                )
        for did, n in reactivated:  # logged once committed
            log.info("ingest.reactivated_rescan", did=did, count=n)
        return CommitResult(enqueued, duplicates, kept)

    async def _apply_track(self, ev: TrackEvent, source: str, now: str, rescan: bool = False) -> bool:
        """Record the event and enqueue its scan; False when it is already known or older."""
        what = verdict(ev, await self._stored_version(ev.uri), rescan)
        if what == "rescan":
            return await self._enqueue_rescan(ev, source, now)
        if what == "known":
            return False
        await self._save_version(ev, now)
        return await self._enqueue(ev, source, now)

    async def counts(self) -> dict[str, int]:
        """Jobs by state, dead letters and tracks: for status and metrics."""
        return {**await self.job_counts(), "dead_letters": await self.dead_letter_count(),
                "tracks": await self.track_count()}
