"""Operators and agents as named actors: tokens shown once and stored hashed, roles, revocation."""

from __future__ import annotations

import hashlib
import sqlite3

import pytest

from firehose_mod.review.actors import Actor, Forbidden, Unauthenticated
from tests.conftest import uri

pytestmark = pytest.mark.anyio


async def test_a_token_is_shown_once_and_only_its_hash_is_stored(d, settings):
    row, token = await d.operators.add(d.admin, "carol", "moderator")
    assert token.startswith("fhm_") and len(token) > 40
    db = sqlite3.connect(settings.db_path)
    try:
        stored = db.execute("SELECT token_hash FROM operators WHERE name = 'carol'").fetchone()[0]
        dump = "\n".join(db.iterdump())
    finally:
        db.close()
    assert stored == hashlib.sha256(token.encode()).digest() and token not in dump
    actor = await d.operators.authenticate(token)
    assert actor == Actor("operator", "carol", "moderator", "token")


@pytest.mark.parametrize("token", [None, "", "Bearer x", "fhm_" + "A" * 43, "fhm_wrong"])
async def test_missing_or_unknown_tokens_are_refused(d, token):
    with pytest.raises(Unauthenticated):
        await d.operators.authenticate(token)


async def test_an_agent_token_may_propose_but_not_confirm(d):
    _row, token = await d.operators.add(d.admin, "llm-2", "agent")
    agent = await d.operators.authenticate(token)
    assert (agent.kind, agent.role) == ("agent", "agent")
    item_id = await d.scan_opens(uri(1))
    for action in ("confirm", "reject", "allow", "escalate", "accept"):
        with pytest.raises(Forbidden, match=f"agent 'llm-2' \\(agent\\) may not {action}"):
            await getattr(d.desk, action)(agent, [item_id])
    with pytest.raises(Forbidden):
        await d.desk.open(agent, uri(2), "porn", reason="x")
    outcome = await d.desk.propose(agent, [item_id], "confirm", reason="a full copy")
    assert outcome.steps[0].after == "proposed" and await d.label_log.count() == 0


async def test_a_revoked_token_is_refused_even_for_a_session_that_holds_it(d):
    _row, token = await d.operators.add(d.admin, "dave", "moderator")
    dave = await d.operators.authenticate(token)
    item_id = await d.scan_opens(uri(1))
    revoked = await d.operators.revoke(d.admin, "dave")
    assert revoked.revoked and revoked.revoked_by == "alice"
    with pytest.raises(Unauthenticated, match="revoked"):
        await d.operators.authenticate(token)
    with pytest.raises(Unauthenticated, match="revoked"):
        await d.desk.confirm(dave, [item_id])  # signed in before the revocation
    with pytest.raises(Unauthenticated, match="revoked"):
        await d.operators.local("dave")
    assert await d.label_log.count() == 0
    with pytest.raises(ValueError, match="already revoked"):
        await d.operators.revoke(d.admin, "dave")


async def test_only_admins_manage_operators_and_names_are_never_reused(d, settings):
    for actor in (d.moderator, d.agent):
        with pytest.raises(Forbidden, match="may not manage-operators"):
            await d.operators.add(actor, "eve", "admin")
        with pytest.raises(Forbidden):
            await d.operators.revoke(actor, "bot")
        with pytest.raises(Forbidden):
            await d.operators.list(actor)
    await d.operators.revoke(d.admin, "bot")
    with pytest.raises(ValueError, match="names are never reused"):
        await d.operators.add(d.admin, "bot", "agent")
    with pytest.raises(ValueError, match="role"):
        await d.operators.add(d.admin, "frank", "owner")
    with pytest.raises(ValueError, match="operator name"):
        await d.operators.add(d.admin, "bad name", "moderator")
    assert [o.name for o in await d.operators.list(d.admin)] == ["alice", "mo", "bot"]
    db = sqlite3.connect(settings.db_path)
    try:
        for sql in ("DELETE FROM operators WHERE name = 'mo'", "UPDATE operators SET role = 'admin' WHERE name = 'mo'",
                    "UPDATE operators SET revoked = NULL WHERE name = 'bot'"):
            with pytest.raises(sqlite3.IntegrityError):
                db.execute(sql)
    finally:
        db.close()


async def test_the_first_admin_is_bootstrapped_only_while_there_is_none(d):
    assert await d.operators.bootstrap("root") is None  # alice is an admin
    await d.operators.revoke(d.admin, "alice")
    root = await d.operators.bootstrap("root")
    assert (root.name, root.role, root.via) == ("local:root", "admin", "local")
