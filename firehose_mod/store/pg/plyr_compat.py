"""plyr.fm compatibility's SQL on PostgreSQL: store/plyr_compat.py's `PlyrStore`, same methods.

The tables are migration 5's (store/pg/schema.py), the rules store/plyr_compat.py's. Every write
to `plyr_events` (a posted event, the labels mirrored before it) holds one transaction-level
advisory lock, so the event ids commit in id order whichever process writes them: a backend
reading `events-since` never passes an id that commits later, and a label is mirrored once.
"""

from __future__ import annotations

from datetime import UTC, datetime

import asyncpg

from firehose_mod.labels.model import now_iso, parse_datetime
from firehose_mod.store.pg.pool import PgPoolStore
from firehose_mod.store.pg.scan_queue import rowcount
from firehose_mod.store.plyr_compat import EVENT_COLUMNS, OVERRIDE_ACTIONS, PlyrEvent

__all__ = ["PgPlyrStore"]

# pg_advisory_xact_lock key of writing plyr_events (store/pg/schema.py lists the others); fixed forever.
EVENTS_LOCK = 0x66_6D_5F_70_6C_79  # "fm_ply"
_PAGE = 500
_REPORT_FIELDS = ("reporter_did", "reporter_handle", "target_type", "target_id", "target_name", "target_url",
                  "target_uri", "reason", "description", "screenshot_url")
# A string audioUrl of a track's record (JSON text), else NULL (as json_extract and the isinstance check).
_AUDIO_URL = ("CASE WHEN jsonb_typeof(record::jsonb -> 'audioUrl') = 'string'"
              " THEN record::jsonb ->> 'audioUrl' END")


class PgPlyrStore(PgPoolStore):
    """The compat tables, and reads of the label log and review queue, over a PostgreSQL database."""

    APPLICATION = "firehose-mod plyr-compat"
    CONNECTIONS = 4  # the backend's requests come concurrently

    async def _events_locked(self, db: asyncpg.Connection) -> None:
        await db.execute("SELECT pg_advisory_xact_lock($1)", EVENTS_LOCK)

    # -- the event log ----------------------------------------------------------------------
    async def init_mirror(self) -> int:
        """Remember where label mirroring starts (the label log's head when compatibility is first
        enabled: history from before is never announced as new); returns the floor."""
        async with self._pool.acquire() as db, db.transaction():
            await self._events_locked(db)
            floor = await db.fetchval("SELECT value FROM plyr_state WHERE key = 'mirror_floor'")
            if floor is not None:
                return floor
            floor = await db.fetchval("SELECT coalesce(max(seq), 0) FROM labels")
            await db.execute("INSERT INTO plyr_state (key, value) VALUES ('mirror_floor', $1)", floor)
            return floor

    async def catch_up(self, src: str) -> int:
        """Mirror our labels written since the last mirrored one as events; returns how many (the
        actor, reason and notes as store/plyr_compat.py's catch_up says)."""
        async with self._pool.acquire() as db, db.transaction():
            await self._events_locked(db)
            return await self._catch_up(db, src)

    async def _catch_up(self, db: asyncpg.Connection, src: str) -> int:
        state = {k: v for k, v in await db.fetch("SELECT key, value FROM plyr_state")}
        after = state.get("mirrored_to", state.get("mirror_floor", 0))
        total = 0
        while True:
            # Labels commit in seq order (the label log's write lock), so none can appear below `after` later.
            rows = await db.fetch(
                "SELECT l.seq, l.src, l.uri, l.val, l.neg, l.cts,"
                " (SELECT coalesce(d.actor, d.origin) FROM decisions d WHERE d.uri = l.uri AND d.label_seq = l.seq"
                "  ORDER BY d.id LIMIT 1),"
                " (SELECT coalesce(d.reason, d.rule) FROM decisions d WHERE d.uri = l.uri AND d.label_seq = l.seq"
                "  ORDER BY d.id LIMIT 1)"
                " FROM labels l WHERE l.seq > $1 ORDER BY l.seq LIMIT $2", after, _PAGE)
            if not rows:
                break
            ours = [(uri, "label_negated" if neg else "label_applied", f"labeler:{who}" if who else "labeler",
                     val, why, cts, seq)
                    for seq, label_src, uri, val, neg, cts, who, why in rows if label_src == src]
            if ours:  # another labeler's label (an import) is not ours to announce
                await db.executemany(
                    "INSERT INTO plyr_events (subject_uri, subject_track_id, action, actor, reason, notes, created_at,"
                    " label_seq) VALUES ($1, (SELECT subject_track_id FROM plyr_events WHERE subject_uri = $1"
                    " AND subject_track_id IS NOT NULL ORDER BY id DESC LIMIT 1), $2, $3, $4, $5, $6, $7)", ours)
                total += len(ours)
            after = rows[-1][0]
        if after != state.get("mirrored_to"):
            await db.execute("INSERT INTO plyr_state (key, value) VALUES ('mirrored_to', $1)"
                             " ON CONFLICT (key) DO UPDATE SET value = excluded.value", after)
        return total

    async def record(self, *, subject_uri: str, subject_track_id: int | None, action: str, actor: str,
                     reason: str | None, notes: str | None, src: str) -> int:
        """Append an event the backend posted (after mirroring the labels before it); its id."""
        async with self._pool.acquire() as db, db.transaction():
            await self._events_locked(db)
            await self._catch_up(db, src)
            return await db.fetchval(
                "INSERT INTO plyr_events (subject_uri, subject_track_id, action, actor, reason, notes, created_at)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
                subject_uri, subject_track_id, action, actor, reason, notes, now_iso())

    async def events_since(self, after_id: int, limit: int) -> list[PlyrEvent]:
        rows = await self._pool.fetch(f"SELECT {EVENT_COLUMNS} FROM plyr_events WHERE id > $1 ORDER BY id LIMIT $2",
                                      after_id, limit)
        return [PlyrEvent(*r) for r in rows]

    async def head(self) -> int:
        return await self._pool.fetchval("SELECT coalesce(max(id), 0) FROM plyr_events")

    async def overrides(self) -> dict[str, str]:
        """Standing overrides: the latest override_* event per subject, unless it is a clear."""
        rows = await self._pool.fetch("SELECT subject_uri, action FROM plyr_events WHERE action = ANY($1::text[])"
                                      " ORDER BY id", list(OVERRIDE_ACTIONS))
        latest = {uri: action for uri, action in rows}
        return {uri: action.removeprefix("override_") for uri, action in latest.items() if action != "override_clear"}

    # -- labels and the review queue, in plyr.fm's terms ------------------------------------
    async def in_force_by_uri(self, uris: list[str], src: str) -> dict[str, list[str]]:
        """{uri: [values in force]} for the uris holding any label of `src` in force."""
        return await self._in_force("s.uri", uris, src)

    async def in_force_by_value(self, values: list[str], src: str) -> dict[str, list[str]]:
        """{uri: [values in force]} for every uri holding a label of `src` with one of `values` in force."""
        return await self._in_force("s.val", values, src)

    async def _in_force(self, column: str, keys: list[str], src: str) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        now = datetime.now(UTC)
        rows = await self._pool.fetch(
            "SELECT s.uri, s.val, l.neg, l.exp FROM label_state s JOIN labels l ON l.seq = s.seq"
            f" WHERE s.src = $1 AND {column} = ANY($2::text[]) ORDER BY s.uri, s.val", src, list(dict.fromkeys(keys)))
        for uri, val, neg, exp in rows:
            if not neg and (exp is None or parse_datetime(exp) > now):
                out.setdefault(uri, []).append(val)
        return out

    async def dismissed(self, uris: list[str], value: str, src: str, decided: tuple[str, ...]) -> list[str]:
        """The uris whose `value` was withdrawn (store/plyr_compat.py's dismissed says when)."""
        uris = list(dict.fromkeys(uris))
        rows = await self._pool.fetch(
            "SELECT s.uri, l.neg, l.exp FROM label_state s JOIN labels l ON l.seq = s.seq"
            " WHERE s.src = $1 AND s.val = $2 AND s.uri = ANY($3::text[])", src, value, uris)
        labels = {uri: (bool(neg), exp) for uri, neg, exp in rows}
        rows = await self._pool.fetch("SELECT uri, status FROM review_items WHERE value = $1 AND uri = ANY($2::text[])"
                                      " ORDER BY id", value, uris)
        latest_item = {uri: status for uri, status in rows}
        now = datetime.now(UTC)
        out = []
        for uri in uris:
            neg, exp = labels.get(uri, (False, None))
            in_force = uri in labels and not neg and (exp is None or parse_datetime(exp) > now)
            if neg or (not in_force and latest_item.get(uri) in decided):
                out.append(uri)
        return out

    async def track_by_audio_url(self, audio_url: str) -> tuple[str, str, str | None, str] | None:
        """(uri, did, cid, rkey) of the newest live track whose record's audioUrl is `audio_url`."""
        row = await self._pool.fetchrow(f"SELECT uri, did, cid, rkey FROM tracks WHERE NOT deleted"
                                        f" AND {_AUDIO_URL} = $1 ORDER BY updated DESC LIMIT 1", audio_url)
        return tuple(row) if row else None

    async def audio_url(self, uri: str) -> str | None:
        return await self._pool.fetchval(f"SELECT {_AUDIO_URL} FROM tracks WHERE uri = $1 AND NOT deleted", uri)

    # -- sensitive images -------------------------------------------------------------------
    async def sensitive_images(self) -> tuple[list[str], list[str]]:
        """(image_ids, urls) of the images flagged and not removed, newest first."""
        rows = await self._pool.fetch("SELECT image_id, url FROM plyr_sensitive_images WHERE removed IS NULL"
                                      " ORDER BY id DESC")
        return [i for i, _ in rows if i is not None], [u for _, u in rows if u is not None]

    async def add_sensitive_image(self, image_id: str | None, url: str | None, reason: str | None,
                                  flagged_by: str | None) -> int:
        return await self._pool.fetchval(
            "INSERT INTO plyr_sensitive_images (image_id, url, reason, flagged_by, flagged_at)"
            " VALUES ($1, $2, $3, $4, $5) RETURNING id", image_id, url, reason, flagged_by, now_iso())

    async def remove_sensitive_image(self, image_id: int, removed_by: str) -> bool:
        """Take an entry off the list (kept, marked removed); False when there was none to remove."""
        return rowcount(await self._pool.execute(
            "UPDATE plyr_sensitive_images SET removed = $1, removed_by = $2 WHERE id = $3 AND removed IS NULL",
            now_iso(), removed_by, image_id)) > 0

    # -- reports ----------------------------------------------------------------------------
    async def add_report(self, body: dict, *, report_id: int | None, item_id: int | None,
                         routed: str | None) -> int:
        """Keep a relayed report as received, with what it opened (our report and item) or why not."""
        marks = ", ".join(f"${i}" for i in range(1, len(_REPORT_FIELDS) + 5))
        return await self._pool.fetchval(
            f"INSERT INTO plyr_reports ({', '.join(_REPORT_FIELDS)}, report_id, item_id, not_routed, created_at)"
            f" VALUES ({marks}) RETURNING id",
            *(body.get(f) for f in _REPORT_FIELDS), report_id, item_id, routed, now_iso())
