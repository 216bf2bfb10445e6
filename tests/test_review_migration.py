"""A database from before the desk: its review items get their history synthesised, once."""

from __future__ import annotations

import json

import pytest

from firehose_mod.store import db as dbmod
from firehose_mod.store.review import ReviewStore

pytestmark = pytest.mark.anyio
COPY = [{"scanner": "copyright", "kind": "copyright-match", "score": 0.7, "evidence": {}}]
TEXT = [{"scanner": "text", "kind": "text", "score": 1.0, "evidence": {"term": "x"}}]


async def test_items_from_before_the_desk_get_events_and_states(tmp_path, monkeypatch):
    path = tmp_path / "old.sqlite3"
    monkeypatch.setattr(dbmod, "MIGRATIONS", dbmod.MIGRATIONS[:8])
    conn = await dbmod.open_db(path)
    rows = [("at://did:plc:a/fm.plyr.track/1", "copyright-violation", json.dumps(COPY), "open", None, None),
            ("at://did:plc:a/fm.plyr.track/2", "sexual", json.dumps(TEXT), "resolved", "content-deleted",
             "firehose-mod"),
            ("at://did:plc:a/fm.plyr.track/3", "porn", "[]", "resolved", "licensed", "did:plc:moderator")]
    for uri, value, evidence, state, resolution, by in rows:
        await conn.execute(
            "INSERT INTO review_items (uri, cid, value, reason, evidence, state, resolution, resolved_by, resolved_at,"
            " created) VALUES (?, NULL, ?, 'policy rule r', ?, ?, ?, ?, ?, '2026-11-01T00:00:00.000Z')",
            (uri, value, evidence, state, resolution, by, "2026-11-02T00:00:00.000Z" if by else None))
    await conn.close()
    monkeypatch.undo()

    store = await ReviewStore.open(path)
    try:
        items = await store.items([1, 2, 3])
        assert [(i.status, i.review_state, i.kind, i.resolution) for i in items.values()] == [
            ("open", "reviewOpen", "copyright", None),
            ("content-deleted", "reviewClosed", "text", "content-deleted"),
            ("resolved", "reviewClosed", "other", "licensed")]
        events = [await store.events(i) for i in (1, 2, 3)]
        assert [[(e.event_type, e.actor_name) for e in ev] for ev in events] == [
            [("modEventReport", "policy")],
            [("modEventReport", "policy"), ("recordEvent", "firehose-mod")],
            [("modEventReport", "policy"), ("modEventAcknowledge", "did:plc:moderator")]]
        assert events[0][0].payload["evidence"] == COPY and items[3].last_event == events[2][-1].id
        assert await store.rebuild_status() == {i: items[i].status for i in items}
    finally:
        await store.close()
