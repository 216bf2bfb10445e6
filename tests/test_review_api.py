"""The review desk's JSON API on the daemon's front door: named operators' tokens, roles on the server."""

from __future__ import annotations

from dataclasses import replace

import anyio
import httpx
import pytest

from firehose_mod.daemon import run_daemon
from firehose_mod.review.actors import Actor, system_actor

from tests.stream_client import Received, collect, subscribe

pytestmark = pytest.mark.anyio

URI = "at://did:plc:ewvi7nxzyoun6zhxrhs64oiz/fm.plyr.track/3kapi"


async def test_an_agent_proposes_a_moderator_accepts_and_the_label_reaches_a_subscriber(settings):
    settings = replace(settings, ingest_source="none", scanners=("self-labels",))
    async with anyio.create_task_group() as tg:
        parts = await tg.start(run_daemon, settings)
        server, review = parts["server"], parts["review"]
        root = system_actor("test-bootstrap")
        root = Actor(root.kind, root.name, "admin", "local")
        tokens = {}
        for name, role in (("mo", "moderator"), ("bot", "agent"), ("gone", "moderator")):
            _row, tokens[name] = await review.operators.add(root, name, role)
        await review.operators.revoke(root, "gone")
        base = f"http://127.0.0.1:{server.port}/admin/api/review"

        def auth(name: str) -> dict:
            return {"Authorization": f"Bearer {tokens[name]}"}

        async with httpx.AsyncClient(timeout=10) as http, subscribe(f"ws://127.0.0.1:{server.port}") as ws:
            anonymous = await http.get(f"{base}/items")
            revoked = await http.get(f"{base}/items", headers=auth("gone"))
            opened = (await http.post(f"{base}/open", headers=auth("mo"), json={
                "uri": URI, "value": "copyright-violation", "reason": "a rights holder wrote in"})).json()
            (item_id,) = [i["id"] for i in opened["items"]]
            agent_confirms = await http.post(f"{base}/confirm", headers=auth("bot"), json={"ids": [item_id]})
            proposed = await http.post(f"{base}/propose", headers=auth("bot"), json={
                "ids": [item_id], "decision": "confirm", "reason": "the whole track matches the reference"})
            dry = (await http.post(f"{base}/accept", headers=auth("mo"), json={"ids": [item_id], "dry_run": True})).json()
            listed = (await http.get(f"{base}/items", headers=auth("bot"), params={"status": "proposed"})).json()
            accepted = (await http.post(f"{base}/accept", headers=auth("mo"), json={"ids": [item_id]})).json()
            got = await collect(ws, Received(), count=1)
            shown = (await http.get(f"{base}/items/{item_id}", headers=auth("mo"))).json()
            missing = await http.get(f"{base}/items/999999", headers=auth("mo"))
            bad = await http.post(f"{base}/reject", headers=auth("mo"), json={"ids": "all"})
        tg.cancel_scope.cancel()
    assert anonymous.status_code == 401 and anonymous.json()["error"] == "AuthRequired"
    assert revoked.status_code == 401 and "revoked" in revoked.json()["message"]
    assert agent_confirms.status_code == 403 and agent_confirms.json()["error"] == "Forbidden"
    assert proposed.status_code == 200
    assert [i["id"] for i in listed["items"]] == [item_id]
    assert dry["dry_run"] is True and "copyright-violation" in str(dry["items"][0])
    assert accepted["items"][0]["labels"] == [{"seq": got.seqs[0], "val": "copyright-violation", "neg": False}]
    assert [(label.uri, label.val, label.neg) for label in got.labels] == [(URI, "copyright-violation", False)]
    assert shown["item"]["status"] == "confirmed"
    assert [e["actor_name"] for e in shown["events"]][-2:] == ["bot", "mo"]
    assert missing.status_code == 404 and bad.status_code == 400
