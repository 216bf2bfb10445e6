"""Review items and the moderation event log (SQL only; the rules live in review/states.py).

`moderation_event` is append-only (triggers refuse UPDATE and DELETE). A review item's row in
`review_items` is derived from its events: `ReviewWriter.append` writes the event and the new
state together, inside a transaction the caller holds (the label log's, so the labels an event
emitted or negated commit with it). `rebuild_status` replays the log to check the derivation.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Protocol

import aiosqlite

from firehose_mod.labels.model import now_iso
from firehose_mod.review import states as st
from firehose_mod.store.db import Store
from firehose_mod.store.review_work import ReviewWork
from firehose_mod.store.query import prefix_upper_bound

ITEM_COLUMNS = ("id, uri, cid, value, reason, evidence, state, resolution, resolved_by, resolved_at, created,"
                " status, review_state, kind, source, proposal_event, last_event, updated")
EVENT_COLUMNS = ("id, item_id, uri, cid, value, event_type, action, state_before, state_after, actor_kind,"
                 " actor_name, actor_via, reason, labels, payload, created")


class ActorRef(Protocol):
    kind: str  # operator | agent | system
    name: str
    via: str  # token | local | builtin


@dataclass(frozen=True, slots=True)
class BuiltinActor:
    """firehose-mod itself as an actor (the policy opening items, a delete closing them)."""

    kind: str
    name: str
    via: str = "builtin"


POLICY_ACTOR = BuiltinActor("system", "policy")


@dataclass(frozen=True, slots=True)
class ReviewItem:
    """One review item: what is in doubt (uri, value), its evidence, and its state now."""

    id: int
    uri: str
    cid: str | None
    value: str
    reason: str
    evidence: list
    state: str  # open | resolved (coarse: waiting or not)
    resolution: str | None
    resolved_by: str | None
    resolved_at: str | None
    created: str
    status: str = st.OPEN  # see review/states.py
    review_state: str = "reviewOpen"
    kind: str = "other"
    source: str = "scan"  # scan | report | hand
    proposal_event: int | None = None
    last_event: int | None = None
    updated: str | None = None

    @property
    def did(self) -> str:
        """The uploader: the repo in the item's at:// URI."""
        return self.uri.removeprefix("at://").split("/", 1)[0]


@dataclass(frozen=True, slots=True)
class ModerationEvent:
    id: int
    item_id: int
    uri: str
    cid: str | None
    value: str
    event_type: str
    action: str
    state_before: str | None
    state_after: str
    actor_kind: str
    actor_name: str
    actor_via: str
    reason: str | None
    labels: list = field(default_factory=list)  # [{seq, val, neg}]
    payload: dict = field(default_factory=dict)
    created: str = ""


def item_from_row(row) -> ReviewItem:
    values = list(row)
    values[5] = json.loads(values[5])
    return ReviewItem(*values)


def event_from_row(row) -> ModerationEvent:
    values = list(row)
    values[13], values[14] = json.loads(values[13]), json.loads(values[14])
    return ModerationEvent(*values)


def _json(findings) -> str:
    out = [f if isinstance(f, dict) else _as_dict(f) for f in findings or []]
    return json.dumps(out, default=str)


def _as_dict(f) -> dict:
    from dataclasses import asdict, is_dataclass

    return asdict(f) if is_dataclass(f) else dict(f)


class ReviewRules:
    """What opening an item and an event on it do, whatever the backend: the state derived from the
    event (review/states.py); each backend has only its SQL (`_decided`, `_insert_item`,
    `_set_last_event`, `_insert_event`, `_set_status`, `waiting_for`)."""

    async def open_item(self, uri: str, cid: str | None, value: str, reason: str, findings, *,
                        actor: ActorRef, source: str = "scan", force: bool = False) -> int | None:
        """Open an item and record its #modEventReport; None when it is not opened.

        Not opened: an item for (uri, value) is still waiting, or (unless `force`) a person
        already decided (uri, value) for this very cid: a rescan must not ask the same question again.
        """
        if not force and await self._decided(uri, cid, value):
            return None
        evidence = _json(findings)
        kind = st.item_kind(json.loads(evidence), source)
        now = now_iso()
        item_id = await self._insert_item((uri, cid, value, reason, evidence, now, kind, source, now))
        if item_id is None:  # one for (uri, value) is waiting (the review_open index)
            return None
        payload = {"source": source, "kind": kind, "evidence": json.loads(evidence)}
        event_id = await self._insert_event(item_id, uri, cid, value, "modEventReport", "open", None, st.OPEN,
                                            actor, reason, [], payload, now)
        await self._set_last_event(item_id, event_id)
        return item_id

    async def close_waiting(self, uri: str, resolution: str, actor: str, values: list[str] | None = None) -> int:
        """Close the waiting items of `uri` as the system actor `actor`: "content-deleted" is a
        #recordEvent (op delete), any other resolution a #modEventAcknowledge. Returns how many."""
        action = "delete" if resolution == "content-deleted" else "resolve"
        items = await self.waiting_for(uri, values)
        for item in items:
            await self.append(item, action, BuiltinActor("system", actor), reason=resolution)
        return len(items)

    async def append(self, item: ReviewItem, action: str, actor: ActorRef, *, reason: str | None = None,
                     labels: list[dict] = (), payload: dict | None = None) -> int:
        """Record `action` on `item` and derive its new state; TransitionError if it does not apply."""
        after = st.next_status(action, item.status)
        labels = list(labels)
        etype = st.event_type(action, any(not x["neg"] for x in labels), any(x["neg"] for x in labels))
        now = now_iso()
        event_id = await self._insert_event(item.id, item.uri, item.cid, item.value, etype, action, item.status,
                                            after, actor, reason, labels, payload or {}, now)
        proposal = event_id if action == "propose" else (item.proposal_event if after == item.status else None)
        closed = st.is_closed(after)
        # resolution, resolved_by, resolved_at: the closing decision (legacy "resolve" keeps its free text)
        resolved = ((reason if action == "resolve" else after), actor.name, now) if closed else (None, None, None)
        await self._set_status(item.id, after, st.review_state(after), "resolved" if closed else "open", proposal,
                               event_id, now, resolved)
        return event_id


class ReviewWriter(ReviewRules):
    """Item and event writes inside a transaction someone else holds (see `DecisionWriter.review`)."""

    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db

    async def _insert_item(self, row: tuple) -> int | None:
        async with self._db.execute(
            "INSERT OR IGNORE INTO review_items (uri, cid, value, reason, evidence, created, kind, source, updated,"
            " status, review_state) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'open', 'reviewOpen') RETURNING id", row,
        ) as cur:
            found = await cur.fetchone()
        return found[0] if found else None

    async def _set_last_event(self, item_id: int, event_id: int) -> None:
        await self._db.execute("UPDATE review_items SET last_event = ? WHERE id = ?", (event_id, item_id))

    async def _decided(self, uri: str, cid: str | None, value: str) -> bool:
        async with self._db.execute(
            "SELECT 1 FROM review_items WHERE uri = ? AND value = ? AND cid IS ? AND status IN (?, ?, ?) LIMIT 1",
            (uri, value, cid, *sorted(st.DECIDED)),
        ) as cur:
            return await cur.fetchone() is not None

    async def item(self, item_id: int) -> ReviewItem | None:
        """The item as this transaction sees it (what an action checks its plan against)."""
        async with self._db.execute(f"SELECT {ITEM_COLUMNS} FROM review_items WHERE id = ?", (item_id,)) as cur:
            row = await cur.fetchone()
        return item_from_row(row) if row else None

    async def waiting_for(self, uri: str, values: list[str] | None = None) -> list[ReviewItem]:
        sql = f"SELECT {ITEM_COLUMNS} FROM review_items WHERE uri = ? AND state = 'open'"
        params: list = [uri]
        if values:
            sql += f" AND value IN ({', '.join('?' * len(values))})"
            params += values
        async with self._db.execute(sql + " ORDER BY id", params) as cur:
            return [item_from_row(r) for r in await cur.fetchall()]

    async def _set_status(self, item_id: int, status: str, review_state: str, state: str, proposal: int | None,
                          event_id: int, now: str, resolved: tuple) -> None:
        await self._db.execute(
            "UPDATE review_items SET status = ?, review_state = ?, state = ?, proposal_event = ?, last_event = ?,"
            " updated = ?, resolution = ?, resolved_by = ?, resolved_at = ? WHERE id = ?",
            (status, review_state, state, proposal, event_id, now, *resolved, item_id),
        )

    async def _insert_event(self, item_id, uri, cid, value, etype, action, before, after, actor: ActorRef,
                            reason, labels, payload, now) -> int:
        async with self._db.execute(
            "INSERT INTO moderation_event (item_id, uri, cid, value, event_type, action, state_before, state_after,"
            " actor_kind, actor_name, actor_via, reason, labels, payload, created)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
            (item_id, uri, cid, value, etype, action, before, after, actor.kind, actor.name, actor.via, reason,
             json.dumps(labels), json.dumps(payload, default=str), now),
        ) as cur:
            (event_id,) = await cur.fetchone()
        return event_id


@dataclass(frozen=True, slots=True)
class ItemQuery:
    """A selection of the queue: by status, kind, value, uploader; newest or oldest first."""

    statuses: tuple[str, ...] = tuple(sorted(st.WAITING))
    kinds: tuple[str, ...] = ()
    values: tuple[str, ...] = ()
    uploader: str | None = None  # a DID
    ids: tuple[int, ...] = ()
    newest_first: bool = False
    limit: int = 100
    after_id: int | None = None  # paging: continue past this id (in the chosen order)


class ReviewStore(ReviewWork):
    """Reads of items and events, the operator-facing marks (seen), and the desk's bookkeeping
    (`ReviewWork`: triage calls, batches, notices) on one writer connection."""

    async def items(self, ids) -> dict[int, ReviewItem]:
        ids = list(ids)
        out: dict[int, ReviewItem] = {}
        for i in range(0, len(ids), 400):
            chunk = ids[i:i + 400]
            async with self._reading(f"SELECT {ITEM_COLUMNS} FROM review_items WHERE id IN"
                                     f" ({', '.join('?' * len(chunk))})", chunk) as cur:
                out.update({r[0]: item_from_row(r) for r in await cur.fetchall()})
        return out

    async def query(self, q: ItemQuery) -> list[ReviewItem]:
        where, params = [], []
        for column, values in (("status", q.statuses), ("kind", q.kinds), ("value", q.values), ("id", q.ids)):
            if values:
                where.append(f"{column} IN ({', '.join('?' * len(values))})")
                params += list(values)
        if q.uploader:  # the account itself (reported as a whole) and its records
            prefix = f"at://{q.uploader}/"
            where.append("(uri = ? OR (uri >= ? AND uri < ?))")
            params += [q.uploader, prefix, prefix_upper_bound(prefix)]
        if q.after_id is not None:
            where.append("id < ?" if q.newest_first else "id > ?")
            params.append(q.after_id)
        sql = f"SELECT {ITEM_COLUMNS} FROM review_items" + (f" WHERE {' AND '.join(where)}" if where else "")
        sql += f" ORDER BY id {'DESC' if q.newest_first else 'ASC'} LIMIT ?"
        async with self._reading(sql, (*params, q.limit)) as cur:
            return [item_from_row(r) for r in await cur.fetchall()]

    async def counts(self) -> dict[str, int]:
        """Items per status (every status present, zero when none)."""
        async with self._reading("SELECT status, count(*) FROM review_items GROUP BY status") as cur:
            found = dict(await cur.fetchall())
        return {s: found.get(s, 0) for s in st.STATUSES}

    async def events(self, item_id: int) -> list[ModerationEvent]:
        async with self._reading(f"SELECT {EVENT_COLUMNS} FROM moderation_event WHERE item_id = ? ORDER BY id",
                                 (item_id,)) as cur:
            return [event_from_row(r) for r in await cur.fetchall()]

    async def event(self, event_id: int) -> ModerationEvent | None:
        async with self._reading(f"SELECT {EVENT_COLUMNS} FROM moderation_event WHERE id = ?", (event_id,)) as cur:
            row = await cur.fetchone()
        return event_from_row(row) if row else None

    async def track_record(self, uri: str) -> tuple[str | None, dict | None]:
        """(cid, record) of the stored track at `uri`, (None, None) when ingest never saw it."""
        async with self._reading("SELECT cid, record, deleted FROM tracks WHERE uri = ?", (uri,)) as cur:
            row = await cur.fetchone()
        if row is None or row[2]:
            return None, None
        return row[0], json.loads(row[1]) if row[1] else None

    async def handle(self, did: str) -> str | None:
        """The uploader's handle as their latest identity event gave it (None when never seen)."""
        async with self._reading("SELECT handle FROM repo_events WHERE did = ? AND handle IS NOT NULL"
                                 " ORDER BY id DESC LIMIT 1", (did,)) as cur:
            row = await cur.fetchone()
        return row[0] if row else None

    async def kind_counts(self, statuses) -> dict[str, int]:
        """Items per kind among `statuses` (the admin page's tabs)."""
        statuses = list(statuses)
        async with self._reading(f"SELECT kind, count(*) FROM review_items WHERE status IN"
                                 f" ({', '.join('?' * len(statuses))}) GROUP BY kind", statuses) as cur:
            found = dict(await cur.fetchall())
        return {k: found.get(k, 0) for k in st.KINDS}

    async def mark_seen(self, ids, who: str) -> None:
        """Remember that an operator looked at these items: they are never announced (again)."""
        now = now_iso()
        async with self._lock, self._transaction() as db:
            await db.executemany(
                "INSERT INTO review_attention (item_id, seen, seen_by) VALUES (?, ?, ?)"
                " ON CONFLICT (item_id) DO UPDATE SET seen = coalesce(seen, excluded.seen),"
                " seen_by = coalesce(seen_by, excluded.seen_by)", [(i, now, who) for i in ids])

    async def rebuild_status(self) -> dict[int, str]:
        """Every item's status replayed from the event log alone (must equal review_items.status)."""
        out: dict[int, str] = {}
        async with self._reading("SELECT item_id, action FROM moderation_event ORDER BY id") as cur:
            for item_id, action in await cur.fetchall():
                out[item_id] = st.OPEN if action == "open" else st.next_status(action, out[item_id])
        return out


async def events_for_uri(store: Store, uri: str) -> list[ModerationEvent]:
    """Every moderation event on `uri` in order (explain), read through `store`'s read connection."""
    async with store._reading(f"SELECT {EVENT_COLUMNS} FROM moderation_event WHERE uri = ? ORDER BY id",
                              (uri,)) as cur:
        return [event_from_row(r) for r in await cur.fetchall()]
