"""Shared set-up for the review desk tests: a real database, the desk, its operators."""

from __future__ import annotations

from contextlib import asynccontextmanager
from dataclasses import dataclass

import pytest

from firehose_mod.review.actors import Actor, Operators, system_actor
from firehose_mod.review.desk import ReviewDesk
from firehose_mod.store import LabelLog
from firehose_mod.store.decisions import DecisionStore
from firehose_mod.store.operators import OperatorStore
from firehose_mod.store.review import ReviewStore

CID1 = "bafyreidlq2zhh7zu7tqz224aj37vup2xi6w2j2vcf4outqa6klo3pb23jm"
CID2 = "bafyreiguonpdujs6c3xoap2zogfzwxidagoapwfwyupzbwr2mzxoye5lgu"
FINDING = {"scanner": "copyright", "kind": "copyright-match", "score": 0.7, "value": "copyright-violation",
           "evidence": {"ref": "warriors.flac", "seconds_matched": 21.5, "query_start": 12.0, "query_end": 33.5,
                        "ref_start": 40.0, "ref_end": 61.5}}


@dataclass
class Desk:
    desk: ReviewDesk
    store: ReviewStore
    operators: Operators
    decisions: DecisionStore
    label_log: LabelLog
    admin: Actor
    moderator: Actor
    agent: Actor

    async def scan_opens(self, uri: str, value: str = "copyright-violation", cid: str | None = CID1,
                         findings: list | None = None) -> int:
        """An item opened the way the scan engine opens one (DecisionStore.record)."""
        await self.decisions.record([], [(uri, cid, value, "policy rule copyright-review", findings or [FINDING])])
        items = await self.decisions.open_reviews(uri)
        return next(i.id for i in items if i.value == value)


@asynccontextmanager
async def open_desk(settings, label_log: LabelLog):
    store = await ReviewStore.open(settings.db_path)
    operator_store = await OperatorStore.open(settings.db_path)
    decisions = await DecisionStore.open(settings.db_path)
    operators = Operators(operator_store)
    try:
        root = system_actor("test-bootstrap")
        root = Actor(root.kind, root.name, "admin", "local")
        actors = []
        for name, role in (("alice", "admin"), ("mo", "moderator"), ("bot", "agent")):
            row, _token = await operators.add(root, name, role)
            actors.append(Actor.of(row, "local"))
        yield Desk(ReviewDesk(label_log, store, operators), store, operators, decisions, label_log, *actors)
    finally:
        for s in (store, operator_store, decisions):
            await s.close()


@pytest.fixture
async def d(settings, label_log):
    """The desk with three operators (alice admin, mo moderator, bot agent) over a real database."""
    async with open_desk(settings, label_log) as desk:
        yield desk
