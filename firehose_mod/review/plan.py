"""Planning one item's part of a review action (pure): the state it reaches, the labels it
would emit or negate, and what the event will say (the proposal accepted or overturned)."""

from __future__ import annotations

from dataclasses import dataclass, field

from firehose_mod.labels.model import Label
from firehose_mod.review import states as st
from firehose_mod.store.label_log import EmitRequest
from firehose_mod.store.review import ModerationEvent, ReviewItem


@dataclass
class Step:
    """One item's part of an action: planned, then (unless a dry run or an error) written."""

    item_id: int
    action: str  # what is recorded: for `accept`, the decision the proposal named
    before: str | None = None
    after: str | None = None
    emit: list[str] = field(default_factory=list)
    negate: list[str] = field(default_factory=list)
    error: str | None = None
    uri: str | None = None
    value: str | None = None
    payload: dict = field(default_factory=dict)
    requests: list[EmitRequest] = field(default_factory=list)
    last_event: int | None = None  # the item's last event when planned: the write checks it is unchanged
    event_id: int | None = None
    labels: list[dict] = field(default_factory=list)  # written: [{seq, val, neg}]

    def to_json(self) -> dict:
        return {"id": self.item_id, "uri": self.uri, "value": self.value, "action": self.action,
                "from": self.before, "to": self.after, "emit": self.emit, "negate": self.negate,
                "details": self.payload, "event": self.event_id, "labels": self.labels, "error": self.error}


def plan_step(actor, action: str, item: ReviewItem | None, item_id: int, proposal: ModerationEvent | None,
              in_force: dict[str, Label], extra: dict | None) -> Step:
    """The step `action` makes on `item`; ValueError (or TransitionError) when it does not apply."""
    if item is None:
        raise ValueError(f"no review item #{item_id}")
    payload = dict(extra or {})
    recorded = action
    if action == "accept":
        if proposal is None or item.status != st.PROPOSED:
            raise ValueError(f"#{item.id} has no pending proposal to accept ({item.status})")
        recorded = proposal.payload.get("decision", "")
        if actor.role == "system" and recorded != "reject":
            raise ValueError(f"#{item.id}: firehose-mod applies only proposals to reject (false positives)")
        payload = {"accepted_proposal": proposal.id, "proposed_by": proposal.actor_name}
    elif proposal is not None and recorded in st.DECISIONS:
        agrees = proposal.payload.get("decision") == recorded
        payload.update({"proposal": proposal.id, "proposed_by": proposal.actor_name,
                        "agrees_with_proposal": agrees})
    after = st.next_status(recorded, item.status)
    if item.status in st.DECIDED and recorded in st.DECISIONS:
        payload["overturns"] = item.status
    step = Step(item.id, recorded, item.status, after, uri=item.uri, value=item.value, payload=payload,
                last_event=item.last_event)
    current = in_force.get(item.value)
    if recorded == "confirm" and current is None:
        step.emit = [item.value]
        step.requests = [EmitRequest(item.uri, item.value, cid=item.cid)]
    elif recorded in ("reject", "allow") and current is not None:
        step.negate = [item.value]
        step.requests = [EmitRequest(item.uri, item.value, cid=current.cid, neg=True)]
    return step
