"""The review item state machine and its mapping onto Ozone's vocabulary (pure, no I/O).

Our states are finer than Ozone's three review states; each maps onto one of them, and each
action is recorded under the `tools.ozone.moderation.defs` event name that fits it:

| our status        | Ozone reviewState | reached by (action -> Ozone event)                           |
| ----------------- | ----------------- | ------------------------------------------------------------ |
| open              | #reviewOpen       | open -> #modEventReport (a scan, a report or a person)        |
| proposed          | #reviewOpen       | propose -> modEventPropose (ours: Ozone has no proposals)     |
| escalated         | #reviewEscalated  | escalate -> #modEventEscalate                                 |
| confirmed         | #reviewClosed     | confirm -> #modEventLabel (createLabelVals) or #modEventAcknowledge when already in force |
| rejected          | #reviewClosed     | reject -> #modEventLabel (negateLabelVals) or #modEventAcknowledge when nothing was in force |
| allowed           | #reviewClosed     | allow -> as reject; "right finding, allowed anyway" (licensed, own work) |
| content-deleted   | #reviewClosed     | delete -> #recordEvent (op: delete)                           |
| resolved          | #reviewClosed     | resolve -> #modEventAcknowledge (closed before the desk existed) |

A comment (#modEventComment) changes no state. Appeals (#modEventResolveAppeal) come with
reports in a later issue. Ozone's `triage` role is our `agent`: it may propose and comment.
"""

from __future__ import annotations

OPEN, PROPOSED, ESCALATED = "open", "proposed", "escalated"
CONFIRMED, REJECTED, ALLOWED = "confirmed", "rejected", "allowed"
CONTENT_DELETED, RESOLVED = "content-deleted", "resolved"

STATUSES = (OPEN, PROPOSED, ESCALATED, CONFIRMED, REJECTED, ALLOWED, CONTENT_DELETED, RESOLVED)
WAITING = frozenset({OPEN, PROPOSED, ESCALATED})  # a human (or the agent) still has to decide
DECIDED = frozenset({CONFIRMED, REJECTED, ALLOWED})  # a decision another decision may overturn

REVIEW_STATE = {OPEN: "reviewOpen", PROPOSED: "reviewOpen", ESCALATED: "reviewEscalated"}

# The decisions a proposal may name, and the actions the desk performs.
DECISIONS = ("confirm", "reject", "allow", "escalate")
ACTIONS = ("open", "propose", "accept", "comment", *DECISIONS, "delete", "resolve")

# action -> (states it may start from, state it leads to; None = unchanged)
TRANSITIONS: dict[str, tuple[frozenset[str], str | None]] = {
    "propose": (frozenset({OPEN, PROPOSED}), PROPOSED),
    "confirm": (WAITING | {REJECTED, ALLOWED}, CONFIRMED),
    "reject": (WAITING | {CONFIRMED, ALLOWED}, REJECTED),
    "allow": (WAITING | {CONFIRMED, REJECTED}, ALLOWED),
    "escalate": (frozenset({OPEN, PROPOSED}), ESCALATED),
    "comment": (frozenset(STATUSES), None),
    "delete": (WAITING, CONTENT_DELETED),
    "resolve": (WAITING, RESOLVED),
}

# What each role may do. `accept` applies the pending proposal (as its decision);
# `system` is firehose-mod itself: the policy opening items, deletes, triage auto-apply.
ROLE_ACTIONS: dict[str, frozenset[str]] = {
    "agent": frozenset({"propose", "comment"}),
    "moderator": frozenset({"open", "propose", "accept", "comment", *DECISIONS}),
    "admin": frozenset({"open", "propose", "accept", "comment", *DECISIONS, "manage-operators"}),
    "system": frozenset({"open", "propose", "accept", "comment", "delete", "resolve"}),
}
ROLES = ("admin", "moderator", "agent")

# What an agent's verdict proposes. NEEDS_HUMAN proposes nothing: it is a comment.
VERDICT_DECISION = {"VIOLATION": "confirm", "FALSE_POSITIVE": "reject"}
VERDICTS = ("FALSE_POSITIVE", "VIOLATION", "NEEDS_HUMAN")


class TransitionError(ValueError):
    """The action does not apply to the item in its current state."""


def review_state(status: str) -> str:
    """Ozone's reviewState token for one of our statuses."""
    return REVIEW_STATE.get(status, "reviewClosed")


def is_closed(status: str) -> bool:
    return status not in WAITING


def next_status(action: str, status: str) -> str:
    """The status after `action` on an item in `status`; TransitionError when it does not apply."""
    starts, after = TRANSITIONS[action]
    if status not in starts:
        raise TransitionError(f"cannot {action} an item that is {status}"
                              + (" (it was already decided this way)" if after == status else ""))
    return status if after is None else after


def event_type(action: str, emitted: bool, negated: bool) -> str:
    """The Ozone event name under which `action` is recorded (see the module table)."""
    if action in ("confirm", "reject", "allow"):
        return "modEventLabel" if (emitted or negated) else "modEventAcknowledge"
    return {
        "open": "modEventReport", "propose": "modEventPropose", "escalate": "modEventEscalate",
        "comment": "modEventComment", "delete": "recordEvent", "resolve": "modEventAcknowledge",
    }[action]


def may(role: str, action: str) -> bool:
    return action in ROLE_ACTIONS.get(role, frozenset())


def item_kind(findings: list[dict], source: str = "scan") -> str:
    """What kind of item a set of findings makes: copyright, cover-art, text, report, appeal or other."""
    if source in ("report", "appeal"):
        return source
    kinds = {f.get("kind") for f in findings if isinstance(f, dict)}
    if "copyright-match" in kinds:
        return "copyright"
    if kinds & {"nsfw", "pdq-match", "cover-unusable"}:
        return "cover-art"
    if "text" in kinds:
        return "text"
    return "other"


KINDS = ("copyright", "cover-art", "text", "report", "appeal", "other")
