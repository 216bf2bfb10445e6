"""plyr.fm compatibility's SQL (the rules live in compat/plyr.py).

- `plyr_events`: plyr.fm's moderation event log as its backend reads it (`/internal/events-since`,
  `/internal/events-head`, `/internal/overrides`), append-only. Rows are the events the backend
  posts (`/internal/events`) and, mirrored from the label log on demand (`catch_up`), one
  `label_applied` / `label_negated` event per label of ours written since compatibility was
  first enabled (`plyr_state`: `mirror_floor`, then `mirrored_to`, the last seq looked at), so
  the ids are one gap-free, total cursor.
- `plyr_sensitive_images`: the blur list (`/sensitive-images`); a removal is recorded, never deleted.
- `plyr_reports`: the reports the backend relays (`/reports`), as received, with what they opened.
- Reads of the label log and the review queue in plyr.fm's terms (in force by uri or value,
  dismissed), on this store's read connection.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from firehose_mod.labels.model import now_iso, parse_datetime
from firehose_mod.store.db import Store

EVENT_COLUMNS = "id, subject_uri, subject_track_id, action, actor, reason, notes, created_at"
OVERRIDE_ACTIONS = ("override_allow", "override_exclude", "override_clear")
_CHUNK = 400


@dataclass(frozen=True, slots=True)
class PlyrEvent:
    id: int
    subject_uri: str
    subject_track_id: int | None
    action: str
    actor: str
    reason: str | None
    notes: str | None
    created_at: str

    def to_json(self) -> dict:
        from dataclasses import asdict

        return asdict(self)


class PlyrStore(Store):
    """The compat tables on one writer connection; reads on the store's read connection."""

    # -- the event log ----------------------------------------------------------------------
    async def init_mirror(self) -> int:
        """Remember where label mirroring starts (the label log's head when compatibility is first
        enabled: history from before is never announced as new); returns the floor."""
        async with self._lock, self._transaction() as db:
            async with db.execute("SELECT value FROM plyr_state WHERE key = 'mirror_floor'") as cur:
                row = await cur.fetchone()
            if row is not None:
                return row[0]
            async with db.execute("SELECT coalesce(max(seq), 0) FROM labels") as cur:
                (floor,) = await cur.fetchone()
            await db.execute("INSERT INTO plyr_state (key, value) VALUES ('mirror_floor', ?)", (floor,))
            return floor

    async def catch_up(self, src: str) -> int:
        """Mirror our labels written since the last mirrored one as events; returns how many. The
        event's actor is `labeler:` and who wrote the label (the decision's actor, else its origin:
        policy, delete, ...), its reason the label value, its notes the decision's reason or rule."""
        async with self._lock, self._transaction() as db:
            return await self._catch_up(db, src)

    async def _catch_up(self, db, src: str) -> int:
        async with db.execute("SELECT key, value FROM plyr_state") as cur:
            state = dict(await cur.fetchall())
        after = state.get("mirrored_to", state.get("mirror_floor", 0))
        total = 0
        while True:
            # Who wrote the label (the decision behind it) names the event's actor and notes: a probe
            # of decisions_by_label on the label's seq (migration 18), d.uri = l.uri kept as a filter.
            async with db.execute(
                "SELECT l.seq, l.src, l.uri, l.val, l.neg, l.cts,"
                " (SELECT coalesce(d.actor, d.origin) FROM decisions d WHERE d.label_seq = l.seq AND d.uri = l.uri"
                "  ORDER BY d.id LIMIT 1),"
                " (SELECT coalesce(d.reason, d.rule) FROM decisions d WHERE d.label_seq = l.seq AND d.uri = l.uri"
                "  ORDER BY d.id LIMIT 1)"
                " FROM labels l WHERE l.seq > ? ORDER BY l.seq LIMIT 500",
                (after,),
            ) as cur:
                rows = await cur.fetchall()
            if not rows:
                break
            for seq, label_src, uri, val, neg, cts, who, why in rows:
                if label_src != src:  # another labeler's label (an import): not ours to announce
                    continue
                await db.execute(
                    "INSERT INTO plyr_events (subject_uri, subject_track_id, action, actor, reason, notes, created_at,"
                    " label_seq) VALUES (?, (SELECT subject_track_id FROM plyr_events WHERE subject_uri = ?"
                    " AND subject_track_id IS NOT NULL ORDER BY id DESC LIMIT 1), ?, ?, ?, ?, ?, ?)",
                    (uri, uri, "label_negated" if neg else "label_applied", f"labeler:{who}" if who else "labeler",
                     val, why, cts, seq),
                )
                total += 1
            after = rows[-1][0]
        if after != state.get("mirrored_to"):
            await db.execute("INSERT INTO plyr_state (key, value) VALUES ('mirrored_to', ?)"
                             " ON CONFLICT (key) DO UPDATE SET value = excluded.value", (after,))
        return total

    async def record(self, *, subject_uri: str, subject_track_id: int | None, action: str, actor: str,
                     reason: str | None, notes: str | None, src: str) -> int:
        """Append an event the backend posted (after mirroring the labels before it); its id."""
        async with self._lock, self._transaction() as db:
            await self._catch_up(db, src)
            async with db.execute(
                "INSERT INTO plyr_events (subject_uri, subject_track_id, action, actor, reason, notes, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id",
                (subject_uri, subject_track_id, action, actor, reason, notes, now_iso()),
            ) as cur:
                (event_id,) = await cur.fetchone()
        return event_id

    async def events_since(self, after_id: int, limit: int) -> list[PlyrEvent]:
        async with self._reading(f"SELECT {EVENT_COLUMNS} FROM plyr_events WHERE id > ? ORDER BY id LIMIT ?",
                                 (after_id, limit)) as cur:
            return [PlyrEvent(*r) for r in await cur.fetchall()]

    async def head(self) -> int:
        async with self._reading("SELECT coalesce(max(id), 0) FROM plyr_events") as cur:
            return (await cur.fetchone())[0]

    async def overrides(self) -> dict[str, str]:
        """Standing overrides: the latest override_* event per subject, unless it is a clear."""
        async with self._reading(
            f"SELECT subject_uri, action FROM plyr_events WHERE action IN ({', '.join('?' * len(OVERRIDE_ACTIONS))})"
            " ORDER BY id", OVERRIDE_ACTIONS
        ) as cur:
            latest = {uri: action for uri, action in await cur.fetchall()}
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
        keys = list(dict.fromkeys(keys))
        for i in range(0, len(keys), _CHUNK):
            chunk = keys[i:i + _CHUNK]
            await self._current(out, f"{column} IN ({', '.join('?' * len(chunk))})", chunk, src)
        return out

    async def _current(self, out: dict[str, list[str]], where: str, params: list, src: str) -> None:
        now = datetime.now(UTC)
        async with self._reading(
            f"SELECT s.uri, s.val, l.neg, l.exp FROM label_state s JOIN labels l ON l.seq = s.seq"
            f" WHERE s.src = ? AND {where} ORDER BY s.uri, s.val", (src, *params)
        ) as cur:
            for uri, val, neg, exp in await cur.fetchall():
                if not neg and (exp is None or parse_datetime(exp) > now):
                    out.setdefault(uri, []).append(val)

    async def dismissed(self, uris: list[str], value: str, src: str, decided: tuple[str, ...]) -> list[str]:
        """The uris whose `value` was withdrawn: its latest label is a negation (a person's, a rescan's
        or a delete's), or, nothing in force, the latest review item about it was decided as one of
        `decided` (rejected, allowed): a person dismissed the flag without a label ever written."""
        uris = list(dict.fromkeys(uris))
        out: set[str] = set()
        for i in range(0, len(uris), _CHUNK):
            chunk = uris[i:i + _CHUNK]
            marks = ", ".join("?" * len(chunk))
            async with self._reading(
                f"SELECT s.uri, l.neg, l.exp FROM label_state s JOIN labels l ON l.seq = s.seq"
                f" WHERE s.src = ? AND s.val = ? AND s.uri IN ({marks})", (src, value, *chunk)
            ) as cur:
                labels = {uri: (bool(neg), exp) for uri, neg, exp in await cur.fetchall()}
            async with self._reading(
                f"SELECT uri, status FROM review_items WHERE value = ? AND uri IN ({marks}) ORDER BY id",
                (value, *chunk)
            ) as cur:
                latest_item = {uri: status for uri, status in await cur.fetchall()}
            now = datetime.now(UTC)
            for uri in chunk:
                neg, exp = labels.get(uri, (False, None))
                in_force = uri in labels and not neg and (exp is None or parse_datetime(exp) > now)
                if neg or (not in_force and latest_item.get(uri) in decided):
                    out.add(uri)
        return [u for u in uris if u in out]

    async def track_by_audio_url(self, audio_url: str) -> tuple[str, str, str | None, str] | None:
        """(uri, did, cid, rkey) of the newest live track whose record's audioUrl is `audio_url`."""
        async with self._reading(
            "SELECT uri, did, cid, rkey FROM tracks WHERE deleted = 0 AND json_extract(record, '$.audioUrl') = ?"
            " ORDER BY updated DESC LIMIT 1", (audio_url,)
        ) as cur:
            row = await cur.fetchone()
        return tuple(row) if row else None

    async def audio_url(self, uri: str) -> str | None:
        async with self._reading("SELECT json_extract(record, '$.audioUrl') FROM tracks WHERE uri = ? AND deleted = 0",
                                 (uri,)) as cur:
            row = await cur.fetchone()
        return row[0] if row and isinstance(row[0], str) else None

    # -- sensitive images -------------------------------------------------------------------
    async def sensitive_images(self) -> tuple[list[str], list[str]]:
        """(image_ids, urls) of the images flagged and not removed, newest first."""
        async with self._reading("SELECT image_id, url FROM plyr_sensitive_images WHERE removed IS NULL"
                                 " ORDER BY id DESC") as cur:
            rows = await cur.fetchall()
        return [i for i, _ in rows if i is not None], [u for _, u in rows if u is not None]

    async def add_sensitive_image(self, image_id: str | None, url: str | None, reason: str | None,
                                  flagged_by: str | None) -> int:
        async with self._lock, self._transaction() as db:
            async with db.execute(
                "INSERT INTO plyr_sensitive_images (image_id, url, reason, flagged_by, flagged_at)"
                " VALUES (?, ?, ?, ?, ?) RETURNING id", (image_id, url, reason, flagged_by, now_iso())
            ) as cur:
                return (await cur.fetchone())[0]

    async def remove_sensitive_image(self, image_id: int, removed_by: str) -> bool:
        """Take an entry off the list (kept, marked removed); False when there was none to remove."""
        return await self._write(
            "UPDATE plyr_sensitive_images SET removed = ?, removed_by = ? WHERE id = ? AND removed IS NULL",
            (now_iso(), removed_by, image_id)) > 0

    # -- reports ----------------------------------------------------------------------------
    async def add_report(self, body: dict, *, report_id: int | None, item_id: int | None,
                         routed: str | None) -> int:
        """Keep a relayed report as received, with what it opened (our report and item) or why not."""
        fields = ("reporter_did", "reporter_handle", "target_type", "target_id", "target_name", "target_url",
                  "target_uri", "reason", "description", "screenshot_url")
        async with self._lock, self._transaction() as db:
            async with db.execute(
                f"INSERT INTO plyr_reports ({', '.join(fields)}, report_id, item_id, not_routed, created_at)"
                f" VALUES ({', '.join('?' * (len(fields) + 4))}) RETURNING id",
                (*(body.get(f) for f in fields), report_id, item_id, routed, now_iso()),
            ) as cur:
                return (await cur.fetchone())[0]


__all__ = ["OVERRIDE_ACTIONS", "PlyrEvent", "PlyrStore"]
