"""Tracks and their versions, the repo events of their authors, and rescan progress.

A version is applied only if it is newer than the one stored (by repo `rev`); a backfill
(no rev) never overrides what a live source applied. Repo events are unique by
(source, cursor, did, kind).
"""

from __future__ import annotations

import json
from typing import Literal

from firehose_mod.events import RepoEvent, TrackEvent
from firehose_mod.labels.model import now_iso
from firehose_mod.store.db import Store

Verdict = Literal["apply", "rescan", "known"]


def verdict(ev: TrackEvent, stored: tuple[str | None, str, int] | None, rescan: bool) -> Verdict:
    """What to do with `ev` given the stored (cid, rev, deleted) of its track (None: unknown)."""
    if stored is None:
        return "apply"
    cid, rev, deleted = stored
    if rescan and ev.operation != "delete" and not deleted and cid == ev.cid:
        return "rescan"
    if ev.rev and rev and ev.rev <= rev:
        return "known"  # a replayed or out-of-order event: a newer version is applied
    if not ev.rev and rev:
        return "known"  # backfill never overrides what a live source applied
    if ev.operation == "delete" and deleted:
        return "known"
    if ev.operation != "delete" and not deleted and cid == ev.cid:
        return "known"  # same version: an update that changed nothing
    return "apply"


class TrackTable(Store):
    """The `tracks`, `repo_events` and `rescans` tables."""

    async def _stored_version(self, uri: str) -> tuple[str | None, str, int] | None:
        async with self._db.execute("SELECT cid, rev, deleted FROM tracks WHERE uri = ?", (uri,)) as cur:
            return await cur.fetchone()

    async def _save_version(self, ev: TrackEvent, now: str) -> None:
        """Make `ev` the track's current version (inside the caller's transaction)."""
        deleted = ev.operation == "delete"
        await self._db.execute(
            "INSERT INTO tracks (uri, did, rkey, cid, rev, record, deleted, first_seen, updated)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (uri) DO UPDATE SET cid = excluded.cid,"
            " rev = excluded.rev, record = coalesce(excluded.record, tracks.record), deleted = excluded.deleted,"
            " updated = excluded.updated",
            (ev.uri, ev.did, ev.rkey, ev.cid, ev.rev, None if deleted else json.dumps(ev.record),
             int(deleted), now, now),
        )

    async def _record_repo_event(self, ev: RepoEvent, source: str, now: str) -> bool:
        """Keep an identity or account event (inside the caller's transaction); False if known."""
        cur = await self._db.execute(
            "INSERT OR IGNORE INTO repo_events (did, kind, active, status, handle, source, cursor, created)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (ev.did, ev.kind, None if ev.active is None else int(ev.active), ev.status, ev.handle,
             source, ev.cursor, now),
        )
        return cur.rowcount > 0

    async def _account_active(self, did: str) -> bool | None:
        """The `active` of the DID's latest recorded account event (None: none recorded, or unknown)."""
        async with self._db.execute(
            "SELECT active FROM repo_events WHERE did = ? AND kind = 'account' ORDER BY id DESC LIMIT 1", (did,)
        ) as cur:
            row = await cur.fetchone()
        return None if row is None or row[0] is None else bool(row[0])

    async def tracks_page(self, after_uri: str, limit: int, *, since: str | None = None,
                          uris: list[str] | None = None) -> list[tuple[str, str, dict]]:
        """(uri, cid, record) of live tracks after `after_uri` in uri order: a rescan's pages."""
        sql = "SELECT uri, cid, record FROM tracks WHERE deleted = 0 AND record IS NOT NULL AND uri > ?"
        params: list = [after_uri]
        if since is not None:
            sql += " AND updated >= ?"
            params.append(since)
        if uris:
            sql += f" AND uri IN ({', '.join('?' * len(uris))})"
            params += uris
        async with self._reading(sql + " ORDER BY uri LIMIT ?", (*params, limit)) as cur:
            return [(u, c or "", json.loads(r)) for u, c, r in await cur.fetchall()]

    async def known_dids(self) -> set[str]:
        """DIDs that have published tracks: whose identity and account events we keep."""
        async with self._reading("SELECT DISTINCT did FROM tracks") as cur:
            return {r[0] for r in await cur.fetchall()}

    async def track_count(self) -> int:
        """Live (not deleted) tracks."""
        async with self._reading("SELECT count(*) FROM tracks WHERE deleted = 0") as cur:
            return (await cur.fetchone())[0]

    async def rescan_state(self, key: str) -> dict | None:
        async with self._reading("SELECT last_uri, checked, changed, finished FROM rescans WHERE key = ?",
                                 (key,)) as cur:
            row = await cur.fetchone()
        return None if row is None else dict(zip(("last_uri", "checked", "changed", "finished"), row))

    async def save_rescan(self, key: str, last_uri: str, checked: int, changed: int, finished: bool) -> None:
        now = now_iso()
        await self._write(
            "INSERT INTO rescans (key, last_uri, checked, changed, finished, started, updated)"
            " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (key) DO UPDATE SET last_uri = excluded.last_uri,"
            " checked = excluded.checked, changed = excluded.changed, finished = excluded.finished,"
            " updated = excluded.updated",
            (key, last_uri, checked, changed, int(finished), now, now),
        )
