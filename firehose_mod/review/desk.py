"""`ReviewDesk`: the review actions, for the CLI, the admin API and the triage agent alike.

Every action takes the acting `Actor`, checks its role (and that it was not revoked since it
signed in), plans each selected item (what it would emit or negate, the state it would reach),
and, unless it is a dry run, writes the labels, the decisions behind them and one moderation
event per item in a single label-log transaction. An item that changed between the plan and the
write makes the whole write roll back and the plan start again, so what was shown is what is done.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import structlog

from firehose_mod.review import states as st
from firehose_mod.review.actors import Actor, Operators, require
from firehose_mod.review.plan import Step, plan_step
from firehose_mod.store import LabelLog
from firehose_mod.store.decisions import DecisionRow, DecisionWriter
from firehose_mod.store.review import ItemQuery, ModerationEvent, ReviewItem, ReviewStore
from firehose_mod.store.review_work import Batch, TriageCall

log = structlog.get_logger(__name__)


class DeskBusy(RuntimeError):
    """The selected items kept changing under the action; nothing was written."""


class _Conflict(Exception):
    pass


@dataclass
class Outcome:
    """What an action did (or, for a dry run, would do) to each selected item."""

    action: str
    actor: Actor
    dry_run: bool
    steps: list[Step] = field(default_factory=list)

    @property
    def errors(self) -> list[Step]:
        return [s for s in self.steps if s.error]

    def to_json(self) -> dict:
        return {"action": self.action, "actor": self.actor.to_json(), "dry_run": self.dry_run,
                "items": [s.to_json() for s in self.steps]}


@dataclass
class ItemView:
    """One item as a person decides it: the item, its history, what is in force, the proposal."""

    item: ReviewItem
    events: list[ModerationEvent]
    in_force: list[str]
    proposal: ModerationEvent | None
    triage_calls: list[TriageCall]
    uploader_items: dict[str, int]  # the uploader's items by status (this one included)

    def to_json(self) -> dict:
        from dataclasses import asdict

        return {"item": item_json(self.item), "events": [asdict(e) for e in self.events],
                "in_force": self.in_force, "proposal": asdict(self.proposal) if self.proposal else None,
                "triage_calls": [c.to_json() for c in self.triage_calls], "uploader_items": self.uploader_items}


def item_json(item: ReviewItem) -> dict:
    from dataclasses import asdict

    return {**asdict(item), "did": item.did}


class ReviewDesk:
    def __init__(self, label_log: LabelLog, store: ReviewStore, operators: Operators):
        self.label_log = label_log
        self.store = store
        self.operators = operators
        self.stats: dict[str, int] = {}  # events written by action, plus conflicts retried

    # -- reading ---------------------------------------------------------------------------------
    async def list(self, actor: Actor, query: ItemQuery | None = None) -> list[ReviewItem]:
        """The queue, by default the waiting items oldest first (any role may read it: an agent must)."""
        await self.operators.check_active(actor)
        return await self.store.query(query or ItemQuery())

    async def show(self, actor: Actor, item_id: int) -> ItemView:
        """One item with its history; an operator looking at it means it is never announced again."""
        await self.operators.check_active(actor)
        item = (await self.store.items([item_id])).get(item_id)
        if item is None:
            raise LookupError(f"no review item #{item_id}")
        if actor.kind == "operator":
            await self.store.mark_seen([item_id], actor.name)
        proposal = await self.store.event(item.proposal_event) if item.proposal_event else None
        history: dict[str, int] = {}
        for other in await self.store.query(ItemQuery(statuses=st.STATUSES, uploader=item.did, limit=1000)):
            history[other.status] = history.get(other.status, 0) + 1
        return ItemView(item, await self.store.events(item_id),
                        [x.val for x in await self.label_log.in_force(item.uri)], proposal,
                        await self.store.calls_for(item_id), history)

    async def create_batch(self, actor: Actor, ids: list[int]) -> Batch:
        """A shareable selection (`{public_url}/admin/review?batch=ID`)."""
        await self.operators.check_active(actor)
        found = await self.store.items(ids)
        if missing := [i for i in ids if i not in found]:
            raise LookupError(f"no review item #{missing[0]}")
        return await self.store.create_batch(list(dict.fromkeys(ids)), actor.name)

    async def batch(self, actor: Actor, batch_id: str) -> list[ReviewItem]:
        await self.operators.check_active(actor)
        batch = await self.store.batch(batch_id)
        if batch is None:
            raise LookupError(f"no batch {batch_id!r}")
        items = await self.store.items(batch.items)
        if actor.kind == "operator":
            await self.store.mark_seen(batch.items, actor.name)
        return [items[i] for i in batch.items if i in items]

    # -- acting ----------------------------------------------------------------------------------
    async def confirm(self, actor: Actor, ids: list[int], *, reason: str | None = None,
                      dry_run: bool = False) -> Outcome:
        """Emit the item's label (a violation): confirmed."""
        return await self.act(actor, "confirm", ids, reason=reason, dry_run=dry_run)

    async def reject(self, actor: Actor, ids: list[int], *, reason: str | None = None,
                     dry_run: bool = False) -> Outcome:
        """The finding is wrong: negate the label if it is in force; rejected."""
        return await self.act(actor, "reject", ids, reason=reason, dry_run=dry_run)

    async def allow(self, actor: Actor, ids: list[int], *, reason: str | None = None,
                    dry_run: bool = False) -> Outcome:
        """The finding is right but allowed (licensed, the artist's own): negate if in force; allowed."""
        return await self.act(actor, "allow", ids, reason=reason, dry_run=dry_run)

    async def escalate(self, actor: Actor, ids: list[int], *, reason: str | None = None,
                       dry_run: bool = False) -> Outcome:
        return await self.act(actor, "escalate", ids, reason=reason, dry_run=dry_run)

    async def comment(self, actor: Actor, ids: list[int], *, reason: str) -> Outcome:
        return await self.act(actor, "comment", ids, reason=reason)

    async def propose(self, actor: Actor, ids: list[int], decision: str, *, reason: str,
                      details: dict | None = None, dry_run: bool = False) -> Outcome:
        """Suggest `decision` (confirm, reject, allow, escalate) with a reason; a moderator applies it."""
        if decision not in st.DECISIONS:
            raise ValueError(f"decision {decision!r}: use one of {', '.join(st.DECISIONS)}")
        if not (reason or "").strip():
            raise ValueError("a proposal needs a reason")
        return await self.act(actor, "propose", ids, reason=reason, dry_run=dry_run,
                              extra={"decision": decision, **(details or {})})

    async def accept(self, actor: Actor, ids: list[int], *, reason: str | None = None,
                     dry_run: bool = False) -> Outcome:
        """Apply each item's pending proposal, as the decision it proposed."""
        return await self.act(actor, "accept", ids, reason=reason, dry_run=dry_run)

    async def act(self, actor: Actor, action: str, ids: list[int], *, reason: str | None = None,
                  dry_run: bool = False, extra: dict | None = None,
                  expect: dict[int, int | None] | None = None) -> Outcome:
        """Any action over a selection of items (the batch entry point of the API).

        `expect` maps item ids to the last event the actor saw (the page shows a plan, then
        acts): an item that moved on since is left alone with an error, so what was shown is
        what is done or nothing is."""
        if action not in st.ACTIONS or action in ("open", "delete", "resolve"):
            raise ValueError(f"unknown action {action!r}")
        require(actor, action)
        await self.operators.check_active(actor)
        ids = list(dict.fromkeys(ids))
        for _attempt in range(5):
            items = await self.store.items(ids)
            steps = [await self._plan(actor, action, items.get(i), i, extra) for i in ids]
            for step in steps:
                if expect is not None and not step.error and step.item_id in expect \
                        and expect[step.item_id] != step.last_event:
                    step.error = f"#{step.item_id} changed since you looked at it: look again"
            outcome = Outcome(action, actor, dry_run, steps)
            todo = [s for s in steps if not s.error]
            if dry_run or not todo:
                return outcome
            try:
                await self._write(actor, reason, todo)
            except _Conflict:
                self.stats["conflicts"] = self.stats.get("conflicts", 0) + 1
                continue
            for s in todo:
                self.stats[s.action] = self.stats.get(s.action, 0) + 1
            log.info("review.acted", action=action, actor=actor.name, items=[s.item_id for s in todo],
                     errors=len(outcome.errors))
            return outcome
        raise DeskBusy("the selected items kept changing while this action ran; look again and retry")

    async def _plan(self, actor: Actor, action: str, item: ReviewItem | None, item_id: int, extra) -> Step:
        proposal = None
        if item is not None and item.proposal_event:
            proposal = await self.store.event(item.proposal_event)
        in_force = {x.val: x for x in await self.label_log.in_force(item.uri)} if item else {}
        try:
            return plan_step(actor, action, item, item_id, proposal, in_force, extra)
        except ValueError as exc:  # TransitionError included: this item only, the others go ahead
            return Step(item_id, action, error=str(exc), uri=item.uri if item else None,
                        value=item.value if item else None)

    async def _write(self, actor: Actor, reason: str | None, steps: list[Step]) -> None:
        requests = [r for s in steps for r in s.requests]

        async def record(dw: DecisionWriter, written) -> None:
            stored = {(s.label.uri, s.label.val, s.label.neg): s for s in written}
            for step in steps:
                item = await dw.review.item(step.item_id)
                if item is None or item.last_event != step.last_event:
                    raise _Conflict
                labels, rows = [], []
                for r in step.requests:
                    if (s := stored.pop((r.uri, r.val, r.neg), None)) is not None:
                        labels.append({"seq": s.seq, "val": r.val, "neg": r.neg})
                        rows.append(DecisionRow(item.uri, s.label.cid, "negate" if r.neg else "label", r.val,
                                                origin="human" if actor.kind == "operator" else actor.kind,
                                                rule=f"review #{item.id} {step.action}", evidence=item.evidence,
                                                label_seq=s.seq, actor=actor.name, reason=reason))
                step.event_id = await dw.review.append(item, step.action, actor, reason=reason, labels=labels,
                                                       payload=step.payload)
                step.labels = labels
                await dw.write(rows)

        await self.label_log.emit_many(requests, also=record)

    # -- opening ---------------------------------------------------------------------------------
    async def open(self, actor: Actor, uri: str, value: str, *, reason: str, cid: str | None = None,
                   source: str = "hand", findings: list | None = None, dry_run: bool = False) -> Outcome:
        """Open an item by hand (or, with source="report", from a report: the later issue's entry point)."""
        require(actor, "open")
        await self.operators.check_active(actor)
        if not (reason or "").strip():
            raise ValueError("say why the item is opened (--reason)")
        if cid is None:
            cid, _record = await self.store.track_record(uri)
        step = Step(0, "open", before=None, after=st.OPEN, uri=uri, value=value,
                    payload={"source": source, "cid": cid})
        waiting = [i for i in await self.store.query(ItemQuery(uploader=_did(uri), values=(value,), limit=1000))
                   if i.uri == uri]
        if waiting:
            step.error = f"already waiting as #{waiting[0].id} ({waiting[0].status})"
        outcome = Outcome("open", actor, dry_run, [step])
        if dry_run or step.error:
            return outcome

        async def record(dw: DecisionWriter, _written) -> None:
            opened = await dw.review.open_item(uri, cid, value, reason, findings or [], actor=actor, source=source,
                                               force=True)
            if opened is None:
                step.error = "an item for this uri and value was opened meanwhile"
            else:
                step.item_id = opened
                origin = "human" if actor.kind == "operator" else actor.kind
                await dw.write([DecisionRow(uri, cid, "review", value, origin=origin, rule=f"opened by {source}",
                                            evidence=findings or [], actor=actor.name, reason=reason)])

        await self.label_log.emit_many([], also=record)
        self.stats["open"] = self.stats.get("open", 0) + (0 if step.error else 1)
        return outcome


def _did(uri: str) -> str:
    return uri.removeprefix("at://").split("/", 1)[0]


__all__ = ["DeskBusy", "ItemView", "Outcome", "ReviewDesk", "Step", "item_json"]
