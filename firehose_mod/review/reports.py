"""Reports and appeals: `com.atproto.moderation.createReport` turned into review items.

A report (anyone, about a track or an account) opens a review item for the label value its
reason points at, or joins the one already waiting (a comment event naming the reporter). A
report with `reasonAppeal` from the subject's own author, about a label of ours in force, is an
appeal: it opens (or joins) an `appeal` item per label in question; rejecting it negates the
label (overturned, with the reviewer's reason), confirming it records why the label stands.
An appeal by anyone else is a report. Nothing a report says is ever published by itself: only
a person's decision emits a label.

An appeal against `copyright-violation` is a counter-notice: it must carry the statements a
counter-notice needs (17 U.S.C. 512(g)(3)); what is missing is recorded with the report, shown
on the desk beside the notice, and told to the author by `getAppeals`. Reports are rate-limited
per reporter and per subject (counted from the stored reports, so a restart does not reset them).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import structlog

from firehose_mod.labels.model import now_iso
from firehose_mod.review import states as st
from firehose_mod.review.desk import ReviewDesk
from firehose_mod.store.decisions import DecisionRow, DecisionWriter
from firehose_mod.store.reports import ReportStore
from firehose_mod.store.review import BuiltinActor, ItemQuery
from firehose_mod.syntax import is_atproto_did

log = structlog.get_logger(__name__)

REPORTS_ACTOR = BuiltinActor("system", "reports")
REPO_REF = "com.atproto.admin.defs#repoRef"
STRONG_REF = "com.atproto.repo.strongRef"
APPEALS = frozenset({"com.atproto.moderation.defs#reasonAppeal", "tools.ozone.report.defs#reasonAppeal"})
COPYRIGHT = "copyright-violation"
MAX_REASON = 20000  # the lexicon's maxLength (bytes); maxGraphemes 2000 is checked too


def value_for(reason_type: str) -> str:
    """The label value a report's reason asks about (the review item's question): one of the
    values the declaration lists (labels/declaration.py); anything else asks about `!warn`."""
    name = reason_type.rsplit("#", 1)[-1].removeprefix("reason")
    if name.startswith("ChildSafety") or name in ("SexualAbuseContent", "SexualNCII", "SexualDeepfake"):
        return "!hide"
    if name.startswith("Sexual"):
        return "sexual"
    if name in ("Rude",) or name.startswith("Harassment") or name in ("ViolenceThreats",):
        return "offensive-text"
    if name == "ViolenceGraphicContent":
        return "graphic-media"
    if name in ("Violation", "RuleOther"):
        return COPYRIGHT  # on a music host, "violates the rules" is most often someone else's music
    return "!warn"


class ReportRefused(ValueError):
    """An invalid report (InvalidRequest) or one over a rate limit (`rate_limited`)."""

    def __init__(self, message: str, *, rate_limited: bool = False):
        super().__init__(message)
        self.rate_limited = rate_limited


# -- counter-notices ---------------------------------------------------------------------------
COUNTER_NOTICE_PARTS = {
    "good_faith": (("a statement under penalty of perjury that you believe in good faith the track was labeled"
                    " by mistake or misidentification"),
                   lambda t: "perjury" in t and "good faith" in t and ("mistake" in t or "misidentif" in t)),
    "jurisdiction": ("your consent to the jurisdiction of a court for your address",
                     lambda t: "consent" in t and "jurisdiction" in t),
    "service": ("that you will accept service of process from the person who complained",
                lambda t: "service of process" in t),
    "contact": ("your name, address and telephone number",
                lambda t: "address" in t and re.search(r"\+?\d[\d\s().-]{6,}\d", t) is not None),
    "signature": ("your physical or electronic signature (for example a last line `/s/ Your Name`)",
                  lambda t: re.search(r"(^|\n)\s*(/s/|signed:)\s*\S", t) is not None),
}


def counter_notice(text: str | None) -> dict:
    """Which parts of a counter-notice `text` has: {"complete", "missing": [descriptions]}."""
    t = (text or "").casefold()
    missing = [desc for _key, (desc, found) in COUNTER_NOTICE_PARTS.items() if not found(t)]
    return {"complete": not missing, "missing": missing}


# -- receiving ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Subject:
    raw: dict
    uri: str  # at:// URI of a record, or the account's DID
    cid: str | None
    did: str


def parse_subject(subject: object, collections: tuple[str, ...]) -> Subject:
    if not isinstance(subject, dict):
        raise ReportRefused("subject must be a com.atproto.repo.strongRef or com.atproto.admin.defs#repoRef object")
    kind = subject.get("$type")
    if kind == REPO_REF:
        did = subject.get("did")
        if not is_atproto_did(did):
            raise ReportRefused("subject.did must be a did:plc or did:web")
        return Subject({"$type": REPO_REF, "did": did}, did, None, did)
    if kind == STRONG_REF:
        uri, cid = subject.get("uri"), subject.get("cid")
        if not isinstance(uri, str) or not uri.startswith("at://") or not isinstance(cid, str) or not cid:
            raise ReportRefused("a strongRef subject needs an at:// uri and a cid")
        parts = uri.removeprefix("at://").split("/")
        if len(parts) != 3 or not is_atproto_did(parts[0]) or not parts[2]:
            raise ReportRefused(f"subject.uri {uri[:200]!r} is not a record's at://DID/collection/rkey URI")
        if not any(parts[1] == c or (c.endswith(".*") and parts[1].startswith(c[:-1])) for c in collections):
            raise ReportRefused(f"this labeler takes reports on {', '.join(collections)} records and on accounts,"
                                f" not on {parts[1][:100]}")
        return Subject({"$type": STRONG_REF, "uri": uri, "cid": cid}, uri, cid, parts[0])
    raise ReportRefused(f"subject $type {str(kind)[:100]!r}: use {STRONG_REF} or {REPO_REF}")


@dataclass
class ReportLimits:
    per_reporter_hour: int = 30
    per_subject_hour: int = 200


class ReportDesk:
    """What createReport and getAppeals do, over the review desk and the reports table."""

    def __init__(self, desk: ReviewDesk, store: ReportStore, *, collections: tuple[str, ...] = ("fm.plyr.track",),
                 limits: ReportLimits | None = None):
        self.desk, self.store, self.collections = desk, store, collections
        self.limits = limits or ReportLimits()
        self.stats: dict[str, int] = {}

    def _count(self, what: str) -> None:
        self.stats[what] = self.stats.get(what, 0) + 1

    async def receive(self, reporter: str, via_service: str | None, body: dict) -> dict:
        """Store a report, open or join its review items; the lexicon's output object."""
        reason_type, reason = body.get("reasonType"), body.get("reason")
        if not isinstance(reason_type, str) or not reason_type or len(reason_type) > 200:
            raise ReportRefused("reasonType is required (com.atproto.moderation.defs#reason...)")
        if reason is not None and (not isinstance(reason, str) or len(reason.encode()) > MAX_REASON):
            raise ReportRefused(f"reason must be a string of at most {MAX_REASON} bytes")
        subject = parse_subject(body.get("subject"), self.collections)
        mod_tool = body.get("modTool") if isinstance(body.get("modTool"), dict) else None
        return await self.receive_about(reporter, via_service, reason_type, reason, subject, mod_tool)

    async def receive_about(self, reporter: str, via_service: str | None, reason_type: str, reason: str | None,
                            subject: Subject, mod_tool: dict | None = None) -> dict:
        """`receive` for a subject already parsed (a report relayed by a trusted service, which
        may name a record by its at:// URI alone: its cid is then the one ingest saw, if any)."""
        hour_ago = (datetime.now(UTC) - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        if await self.store.since(reporter=reporter, after=hour_ago) >= self.limits.per_reporter_hour:
            self._count("rate_limited")
            raise ReportRefused(f"at most {self.limits.per_reporter_hour} reports an hour per account", rate_limited=True)
        if await self.store.since(subject_uri=subject.uri, after=hour_ago) >= self.limits.per_subject_hour:
            self._count("rate_limited")
            raise ReportRefused("this subject has had too many reports in the last hour; it is being looked at",
                                rate_limited=True)
        appeal = reason_type in APPEALS and reporter == subject.did
        if appeal:
            values = [x.val for x in await self.desk.label_log.in_force(subject.uri)]
            if not values:
                raise ReportRefused(f"nothing to appeal: no label of this labeler is in force on {subject.uri}")
        else:
            values = [value_for(reason_type)]
        created = now_iso()
        report_ids = await self._write(reporter, via_service, reason_type, reason, subject, appeal, values, mod_tool,
                                       created)
        self._count("appeals" if appeal else "reports")
        log.info("report.received", id=report_ids[0], reporter=reporter, reason_type=reason_type,
                 subject=subject.uri, appeal=appeal, values=values)
        out = {"id": report_ids[0], "reasonType": reason_type, "subject": subject.raw, "reportedBy": reporter,
               "createdAt": created}
        if reason is not None:
            out["reason"] = reason
        return out

    async def _write(self, reporter, via_service, reason_type, reason, subject: Subject, appeal: bool,
                     values: list[str], mod_tool, created: str) -> list[int]:
        """One report row per value, each opening or joining its item, in one transaction."""
        source = "appeal" if appeal else "report"
        ids: list[int] = []
        cid = subject.cid
        if cid is None and subject.uri.startswith("at://"):
            cid, _record = await self.desk.store.track_record(subject.uri)

        async def record(dw: DecisionWriter, _written) -> None:
            ids.clear()
            for value in values:
                notice = counter_notice(reason) if appeal and value == COPYRIGHT else None
                finding = {"scanner": source, "kind": source, "score": None, "value": value,
                           "evidence": {"reporter": reporter, "reason_type": reason_type, "reason": reason,
                                        **({"counter_notice": notice} if notice else {})}}
                why = f"{source} by {reporter}: {reason_type.rsplit('#', 1)[-1]}"
                waiting = [i for i in await self.desk.store.query(ItemQuery(
                    uploader=subject.did, values=(value,), limit=1000)) if i.uri == subject.uri]
                if waiting:
                    item = waiting[0]
                    await dw.review.append(item, "comment", REPORTS_ACTOR, reason=f"{why}: {reason or ''}".strip(": "),
                                           payload={"joined": source, "reporter": reporter})
                    item_id = item.id
                else:
                    item_id = await dw.review.open_item(subject.uri, cid, value, why, [finding], actor=REPORTS_ACTOR,
                                                        source=source, force=True)
                    await dw.write([DecisionRow(subject.uri, cid, "review", value, origin="report",
                                                rule=f"opened by {source}", evidence=[finding], actor=reporter,
                                                reason=reason)])
                ids.append(await dw.reports.add(
                    reporter=reporter, via_service=via_service, reason_type=reason_type, reason=reason,
                    subject=subject.raw, subject_uri=subject.uri, subject_cid=subject.cid, subject_did=subject.did,
                    appeal=appeal, value=value, item_id=item_id, counter_notice=notice, mod_tool=mod_tool,
                    created=created))

        await self.desk.label_log.emit_many([], also=record)
        return ids

    async def appeals(self, did: str) -> list[dict]:
        """`did`'s appeals and where each stands (what getAppeals answers)."""
        out = []
        reports = await self.store.appeals_by(did)
        items = await self.desk.store.items({r.item_id for r in reports if r.item_id})
        for r in reports:
            item = items.get(r.item_id)
            view = {"id": r.id, "subject": r.subject, "label": r.value, "createdAt": r.created,
                    "status": appeal_status(item.status if item else None)}
            if item is not None and item.status not in st.WAITING:
                last = await self.desk.store.event(item.last_event) if item.last_event else None
                if last is not None:
                    view["decidedAt"], view["decisionReason"] = last.created, last.reason
            if r.counter_notice is not None:
                view["counterNotice"] = r.counter_notice
            out.append(view)
        return out


def appeal_status(status: str | None) -> str:
    if status in st.WAITING or status is None:
        return "pending"
    if status in (st.REJECTED, st.ALLOWED):
        return "granted"  # the label was negated
    if status == st.CONFIRMED:
        return "upheld"
    return "closed"
