"""plyr.fm's moderation-service contract, served by this labeler for plyr.fm's backend unchanged.

plyr.fm's backend (`backend/_internal/clients/moderation.py` in zzstoatzz/plyr.fm) talks to its
own moderation service (`services/moderation/`, Rust) over a few JSON endpoints with a shared key
in `X-Moderation-Key`. With `[plyr_compat] enabled`, the daemon answers the same requests at the
same paths from its own parts, so pointing the backend's `MODERATION_SERVICE_URL` and
`MODERATION_LABELER_URL` here (and `MODERATION_AUTH_TOKEN` at the shared key) is the whole move:

- label reads (`/internal/labels`, `labels-by-value`, `active-labels`, `negated-labels`) answer
  from the label log (our labels: latest per uri and value, in force = not negated, not expired);
- `/emit-label` writes through the label log, signed by our key, with a decision row naming the
  backend;
- the event log (`/internal/events`, `events-since`, `events-head`, `overrides`) is `plyr_events`:
  what the backend posts, and a `label_applied` / `label_negated` event per label we write. Posted
  decisions also act on the review desk as the system actor `[plyr_compat] actor`, so the
  moderation event log records them: `override_allow` allows the copyright item, `override_exclude`
  confirms what waits, `acknowledged` resolves it, `takedown` closes it as content deleted,
  `flagged_by_scan` and `reported` open items;
- `/scan` answers from the copyright catalogue (and AudD when `[audd] enabled`), `/scan-image` from
  the cover-art scanner (open_nsfw score, PDQ blocklist), each decided by our policy;
- `/sensitive-images` is a small list of our own, filled by `/scan-image` and the backend;
- `/reports` opens or joins review items through `ReportDesk`, like createReport.

Every endpoint but `GET /sensitive-images` (public, as in plyr.fm) needs the key, compared in
constant time. Errors have the front door's `{error, message}` shape with plyr.fm's statuses.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import tempfile
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import anyio
import structlog
from aiohttp import web

from firehose_mod.config import ConfigError, Settings
from firehose_mod.labels.model import Label, LabelError, validate_label_fields
from firehose_mod.review import states as st
from firehose_mod.review.actors import Actor
from firehose_mod.review.reports import REPO_REF, STRONG_REF, ReportRefused, Subject
from firehose_mod.scan.base import Finding, ScanContext, Track
from firehose_mod.scan.policy import decide
from firehose_mod.server.desk_view import summary
from firehose_mod.server.xrpc import XrpcError, json_response
from firehose_mod.store.decisions import DecisionRow
from firehose_mod.store.label_log import EmitRequest
from firehose_mod.store.open import open_plyr_store
from firehose_mod.store.pg.plyr_compat import PgPlyrStore
from firehose_mod.store.plyr_compat import PlyrStore
from firehose_mod.store.review import ItemQuery
from firehose_mod.syntax import is_atproto_did, is_nsid, is_rkey

log = structlog.get_logger(__name__)

KEY_HEADER = "X-Moderation-Key"
MIN_KEY_LENGTH = 16
COPYRIGHT = "copyright-violation"
JSON_LIMIT = 1024 * 1024  # the backend sends every flagged track's uri in one call
# plyr.fm's vocabularies (services/moderation/src/events.rs, reports.rs).
ACTIONS = ("flagged_by_scan", "reported", "label_applied", "label_negated", "acknowledged", "override_allow",
           "override_exclude", "override_clear", "takedown")
REPORT_REASONS = ("copyright", "abuse", "spam", "explicit", "other")
TARGET_TYPES = ("track", "artist", "album", "playlist", "tag", "comment")
# A plyr.fm report reason as the atproto reason our ReportDesk maps onto a label value to ask about.
REASON_TYPES = {"copyright": "com.atproto.moderation.defs#reasonViolation",
                "explicit": "com.atproto.moderation.defs#reasonSexual",
                "abuse": "com.atproto.moderation.defs#reasonRude",
                "spam": "com.atproto.moderation.defs#reasonSpam",
                "other": "com.atproto.moderation.defs#reasonOther"}
REPORTED_VALUES = {"copyright": COPYRIGHT, "explicit": "sexual", "abuse": "offensive-text"}  # else !warn
# /scan-image's severity (plyr.fm: safe | low | medium | high) for a label our policy would emit.
SEVERITY = {"porn": "high", "!hide": "high", "sexual": "medium", "graphic-media": "medium", "nudity": "low"}
SCAN_DID = "did:web:plyr-compat.invalid"  # the repo of a /scan or /scan-image subject we have no record of
UPLOADS = "plyr-compat"  # DATA_DIR/plyr-compat: /scan-image's upload while it is scanned
SUSTAINED_SECONDS = 30.0  # a local match this long counts as a "sustained song" (AudD: 3 positions)


def load_key(settings: Settings) -> str:
    """The shared key from `[plyr_compat] key` or `key_file`; ConfigError (one line, the fix) otherwise."""
    key, path = settings.plyr_compat_key, settings.plyr_compat_key_file
    if path is not None:
        try:
            mode = path.stat().st_mode & 0o777
            key = path.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"[plyr_compat] key_file: cannot read {path}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"[plyr_compat] key_file: {path} is not text: put the key on one line") from None
        if mode & 0o077:
            raise ConfigError(f"[plyr_compat] key_file: {path} is readable by group or others (mode {mode:o});"
                              f" run: chmod 600 {path}")
    if not key:
        raise ConfigError("[plyr_compat] enabled needs the shared key plyr.fm's backend sends as X-Moderation-Key:"
                          " set FIREHOSE_MOD_PLYR_COMPAT_KEY or [plyr_compat] key_file (a file holding it)")
    if len(key) < MIN_KEY_LENGTH or any(c.isspace() or not c.isprintable() for c in key):
        raise ConfigError(f"[plyr_compat] key must be at least {MIN_KEY_LENGTH} printable characters without spaces;"
                          " make one with: python3 -c 'import secrets; print(secrets.token_urlsafe(32))' and set it"
                          " as MODERATION_AUTH_TOKEN in plyr.fm's backend too")
    return key


@asynccontextmanager
async def open_plyr_compat(settings: Settings, label_log, review, scanning) -> AsyncIterator[PlyrCompat | None]:
    """The compat service over the daemon's parts; None when `[plyr_compat] enabled` is off."""
    if not settings.plyr_compat_enabled:
        yield None
        return
    key = load_key(settings)
    for stale in (settings.data_dir / UPLOADS).glob("*.upload"):  # left by a crash mid-scan
        stale.unlink(missing_ok=True)
    async with open_plyr_store(settings) as store:
        floor = await store.init_mirror()
        log.info("plyr_compat.ready", actor=settings.plyr_compat_actor, mirror_floor=floor)
        yield PlyrCompat(settings, key, store, label_log, review, scanning.engine)


@dataclass
class _OneFile:
    """The `Media` of an uploaded image: this file and nothing else."""

    path: Path

    async def audio(self, track: Track) -> Path | None:
        return None

    async def image(self, track: Track) -> Path | None:
        return self.path


class PlyrCompat:
    """plyr.fm's endpoints; `add_routes(router)` serves them on the front door."""

    def __init__(self, settings: Settings, key: str, store: PlyrStore | PgPlyrStore, label_log, review, engine):
        self.settings = settings
        self._key_digest = hashlib.sha256(key.encode()).digest()
        self.store = store
        self.label_log = label_log
        self.review = review  # ReviewServices: desk, store, reports (ReportDesk)
        self.engine = engine
        name = settings.plyr_compat_actor
        # Opens items, comments, resolves (the system's role) ...
        self.system = Actor("system", name, "system", "shared-key")
        # ... and decides them: plyr.fm's moderators act through its backend, which we trust with the key.
        self.deciding = Actor("system", name, "moderator", "shared-key")
        self._flagged: OrderedDict[str, list[dict]] = OrderedDict()  # audio_url -> /scan's flagged findings

    def add_routes(self, r: web.UrlDispatcher) -> None:
        ep = self._endpoint
        r.add_post("/scan", ep(self.scan))
        r.add_post("/scan-image", ep(self.scan_image, body=None,
                                     max_body=self.settings.media_max_image_mb * 1024 * 1024 + 64 * 1024))
        r.add_post("/emit-label", ep(self.emit_label))
        r.add_post("/reports", ep(self.create_report))
        r.add_get("/sensitive-images", ep(self.sensitive_images, body=None, public=True))
        r.add_post("/internal/active-labels", ep(self.active_labels))
        r.add_post("/internal/labels", ep(self.label_values))
        r.add_post("/internal/labels-by-value", ep(self.labels_by_value))
        r.add_post("/internal/negated-labels", ep(self.negated_labels))
        r.add_post("/internal/sensitive-images", ep(self.add_sensitive_image))
        r.add_post("/internal/sensitive-images/remove", ep(self.remove_sensitive_image))
        r.add_post("/internal/events", ep(self.record_event))
        r.add_get("/internal/overrides", ep(self.overrides, body=None))
        r.add_get("/internal/events-since", ep(self.events_since, body=None))
        r.add_get("/internal/events-head", ep(self.events_head, body=None))

    # -- the door ---------------------------------------------------------------------------
    def authorised(self, request: web.Request) -> bool:
        """Exactly one X-Moderation-Key holding the key (compared as SHA-256 digests in constant time)."""
        sent = request.headers.getall(KEY_HEADER, [])
        if len(sent) != 1:
            return False
        digest = hashlib.sha256(sent[0].encode("utf-8", "surrogateescape")).digest()
        return hmac.compare_digest(digest, self._key_digest)

    def _endpoint(self, fn: Callable[..., Awaitable[web.StreamResponse]], *, body: str | None = "json",
                  public: bool = False, max_body: int = JSON_LIMIT):
        async def handler(request: web.Request) -> web.StreamResponse:
            if not public and not self.authorised(request):
                raise XrpcError("AuthenticationRequired",
                                f"send the shared key in {KEY_HEADER} ([plyr_compat] key here, MODERATION_AUTH_TOKEN"
                                " in plyr.fm's backend)", 401)
            if body == "json":
                return await fn(await _json_object(request, max_body))
            return await fn(request)

        handler.max_body = max_body  # read by the front door's body limit (server/xrpc.py)
        return handler

    # -- label reads ------------------------------------------------------------------------
    async def label_values(self, body: dict) -> web.Response:
        """{"uris"} -> {"labels": {uri: [values in force]}} (uris without any are left out)."""
        uris = _strings(body, "uris")
        return json_response({"labels": await self.store.in_force_by_uri(uris, self.settings.did)})

    async def labels_by_value(self, body: dict) -> web.Response:
        values = _strings(body, "values")
        return json_response({"labels": await self.store.in_force_by_value(values, self.settings.did)})

    async def active_labels(self, body: dict) -> web.Response:
        """{"uris"} -> {"active_uris"}: those with copyright-violation in force."""
        uris = _strings(body, "uris")
        found = await self.store.in_force_by_uri(uris, self.settings.did)
        return json_response({"active_uris": [u for u in dict.fromkeys(uris) if COPYRIGHT in found.get(u, ())]})

    async def negated_labels(self, body: dict) -> web.Response:
        """{"uris"} -> {"negated_uris"}: those whose copyright flag was withdrawn (store.dismissed)."""
        uris = _strings(body, "uris")
        dismissed = await self.store.dismissed(uris, COPYRIGHT, self.settings.did, (st.REJECTED, st.ALLOWED))
        return json_response({"negated_uris": dismissed})

    # -- emitting ---------------------------------------------------------------------------
    async def emit_label(self, body: dict) -> web.Response:
        """{"uri", "val"="copyright-violation", "cid"?, "neg"?, "context"?} -> {"seq", "label"}."""
        uri = _string(body, "uri")
        val = _string(body, "val", default=COPYRIGHT)
        cid = _string(body, "cid", required=False)
        neg = body.get("neg", False)
        context = body.get("context")
        if not isinstance(neg, bool):
            raise _unprocessable("neg must be true or false")
        if context is not None and not isinstance(context, dict):
            raise _unprocessable("context must be an object")
        try:
            validate_label_fields(uri, val, cid)
        except LabelError as exc:
            raise XrpcError("BadRequest", str(exc)) from None
        if neg and cid is None:  # the negation names the version it withdraws, as the desk's do
            current = next((x for x in await self.label_log.in_force(uri) if x.val == val), None)
            cid = current.cid if current is not None else None
        actor = self.settings.plyr_compat_actor

        async def record(dw, written) -> None:
            if written:
                evidence = [{"scanner": "plyr.fm", "kind": "plyr-context", "score": None, "value": val,
                             "evidence": context}] if context else []
                await dw.write([DecisionRow(uri, cid, "negate" if neg else "label", val, origin=actor,
                                            rule="plyr.fm /emit-label", evidence=evidence, label_seq=written[0].seq,
                                            actor=actor)])

        written = await self.label_log.emit_many([EmitRequest(uri, val, cid=cid, neg=neg)], also=record)
        log.info("plyr_compat.emit_label", uri=uri, val=val, neg=neg, written=bool(written))
        if written:
            return json_response({"seq": written[0].seq, "label": _label_json(written[0].label), "written": True})
        # Nothing changed (the label is in force already; nothing in force to negate): what stands.
        src = self.settings.did
        standing = [s for s in await self.label_log.history(uri) if s.label.val == val and s.label.src == src]
        last = standing[-1] if standing else None
        return json_response({"seq": last.seq if last else 0, "label": _label_json(last.label) if last else None,
                              "written": False})

    # -- the event log ----------------------------------------------------------------------
    async def record_event(self, body: dict) -> web.Response:
        """{"subject_uri", "subject_track_id"?, "action", "actor", "reason"?, "notes"?} -> {"id"}."""
        uri = _string(body, "subject_uri")
        track_id = body.get("subject_track_id")
        if track_id is not None and (not isinstance(track_id, int) or isinstance(track_id, bool)):
            raise _unprocessable("subject_track_id must be an integer or null")
        action = _string(body, "action")
        if action not in ACTIONS:
            raise _unprocessable(f"unknown action {action[:60]!r}: expected one of {', '.join(ACTIONS)}")
        actor = _string(body, "actor")
        reason = _string(body, "reason", required=False)
        notes = _string(body, "notes", required=False)
        if not actor.strip():
            raise XrpcError("BadRequest", "actor is required — an unattributed action is not an audit trail")
        event_id = await self.store.record(subject_uri=uri, subject_track_id=track_id, action=action, actor=actor,
                                           reason=reason, notes=notes, src=self.settings.did)
        log.info("plyr_compat.event", id=event_id, subject=uri, action=action, actor=actor)
        try:
            await self._on_desk(event_id, uri, track_id, action, actor, reason, notes)
        except Exception as exc:  # noqa: BLE001 - the event is recorded (the contract); the desk is ours to fix
            log.warning("plyr_compat.desk_failed", id=event_id, action=action, subject=uri, error=str(exc)[:300])
        return json_response({"id": event_id})

    async def overrides(self, request: web.Request) -> web.Response:
        return json_response({"overrides": await self.store.overrides()})

    async def events_head(self, request: web.Request) -> web.Response:
        await self.store.catch_up(self.settings.did)
        return json_response({"latest_id": await self.store.head()})

    async def events_since(self, request: web.Request) -> web.Response:
        after = _query_int(request, "after_id", 0)
        limit = max(1, min(200, _query_int(request, "limit", 50)))
        await self.store.catch_up(self.settings.did)
        return json_response({"events": [e.to_json() for e in await self.store.events_since(after, limit)]})

    # -- what a posted event does on the review desk -----------------------------------------
    async def _on_desk(self, event_id: int, uri: str, track_id, action: str, actor: str, reason, notes) -> None:
        if not _subject_ok(uri):
            return  # plyr.fm's log takes any string; the desk holds records and accounts only
        why = f"plyr.fm {action} by {actor}" + (f": {reason}" if reason else "")
        extra = {"plyr_event": event_id, "plyr_actor": actor, "plyr_action": action, "notes": notes,
                 "subject_track_id": track_id}
        desk = self.review.desk
        if action == "flagged_by_scan":
            findings = list(self._flagged.get(await self.store.audio_url(uri) or "", []))
            findings.append({"scanner": "plyr.fm", "kind": "plyr-flag", "score": None, "value": COPYRIGHT,
                             "evidence": {"actor": actor, "reason": reason, "notes": notes,
                                          "subject_track_id": track_id}})
            await self._open_or_comment(uri, COPYRIGHT, why, "scan", findings, extra)
        elif action == "reported":
            value = REPORTED_VALUES.get(reason or "", "!warn")
            finding = {"scanner": "report", "kind": "report", "score": None, "value": value,
                       "evidence": {"reporter": actor, "reason_type": reason, "reason": notes, "via": "plyr.fm"}}
            await self._open_or_comment(uri, value, why, "report", [finding], extra)
        elif action == "override_allow":
            # plyr.fm's allow lifts the copyright assertion only (adult labels are the listener's choice).
            items = await self._items(uri, (COPYRIGHT,), st.WAITING | {st.CONFIRMED})
            if not items and COPYRIGHT in {x.val for x in await self.label_log.in_force(uri)}:
                opened = await desk.open(self.system, uri, COPYRIGHT, reason=why, source="hand",
                                         findings=[{"scanner": "plyr.fm", "kind": "plyr-override", "score": None,
                                                    "value": COPYRIGHT, "evidence": extra}])
                items = [s.item_id for s in opened.steps if not s.error]
            if items:
                await desk.act(self.deciding, "allow", items, reason=why, extra=extra)
        elif action == "override_exclude":
            items = await self._items(uri, (), st.WAITING)
            if items:
                await desk.act(self.deciding, "confirm", items, reason=why, extra=extra)
        elif action in ("acknowledged", "takedown"):
            await self._close_waiting(uri, "resolve" if action == "acknowledged" else "delete", why, extra)
        # override_clear, label_applied, label_negated: recorded in plyr.fm's log only (the label
        # log has ours; a cleared override changes no item).

    async def _items(self, uri: str, values: tuple[str, ...], statuses) -> list[int]:
        did = uri.removeprefix("at://").split("/", 1)[0]
        found = await self.review.store.query(ItemQuery(statuses=tuple(sorted(statuses)), values=values,
                                                        uploader=did, limit=1000))
        return [i.id for i in found if i.uri == uri]

    async def _open_or_comment(self, uri: str, value: str, why: str, source: str, findings: list[dict],
                               extra: dict) -> None:
        outcome = await self.review.desk.open(self.system, uri, value, reason=why, source=source, findings=findings)
        if outcome.steps[0].error:  # an item for (uri, value) waits: the event joins it
            waiting = await self._items(uri, (value,), st.WAITING)
            if waiting:
                await self.review.desk.act(self.system, "comment", waiting[:1], reason=why, extra=extra)

    async def _close_waiting(self, uri: str, action: str, why: str, extra: dict) -> None:
        """acknowledged -> resolve (#modEventAcknowledge), takedown -> delete (#recordEvent), as the system."""
        async def record(dw, _written) -> None:
            for item in await dw.review.waiting_for(uri):
                await dw.review.append(item, action, self.system, reason=why, payload=extra)

        await self.label_log.emit_many([], also=record)

    # -- scanning ---------------------------------------------------------------------------
    async def scan(self, body: dict) -> web.Response:
        """{"audio_url"} -> matches, is_flagged (our policy), the dominant match, raw_response."""
        audio_url = _string(body, "audio_url")
        if not audio_url.startswith(("https://", "http://")):
            raise XrpcError("BadRequest", "audio_url must be an https:// URL")
        only = {s.name for s in self.engine.scanners} & {"copyright", "audd"}
        if not only:
            raise XrpcError("ScanNotConfigured", "no audio scanner is enabled here: add copyright to [scan] scanners"
                                                 " (and import a catalogue), or enable [audd]", 503)
        track = await self._audio_track(audio_url)
        result = await self.engine.scan(track, only=only)
        failed = {**result.unavailable, **result.failures}
        if failed and set(failed) >= only:
            raise XrpcError("ScanFailed", "; ".join(f"{k}: {v}" for k, v in sorted(failed.items()))[:500], 502)
        plan = await self.engine.plan(track, result)
        flags = [d for d in (*plan.emit, *plan.review) if d.value == COPYRIGHT]
        findings = [f for f in result.findings if f.kind == "copyright-match"]
        matches = [m for f in sorted(findings, key=lambda f: -float(f.evidence.get("seconds_matched") or 0))
                   for m in _matches(f)]
        dominant, pct = _dominant(matches)
        out = {
            "matches": matches,
            "is_flagged": bool(flags),
            "dominant_match_pct": pct,
            "sustained_song_count": _sustained(matches),
            "highest_score": max((m["score"] for m in matches), default=0),
            "raw_response": {
                "labeler": self.settings.did, "track": None if track.did == SCAN_DID else track.uri,
                "findings": [asdict(f) for f in result.findings], "failures": failed, "versions": result.versions,
                "decisions": {"label": [(d.value, d.rule) for d in plan.emit],
                              "review": [(d.value, d.rule) for d in plan.review]},
            },
        }
        if dominant is not None:
            out["dominant_match"] = dominant
        if flags:
            self._flagged[audio_url] = [asdict(f) for f in findings]
            self._flagged.move_to_end(audio_url)
            while len(self._flagged) > 1000:
                self._flagged.popitem(last=False)
        log.info("plyr_compat.scan", url=audio_url[:200], track=out["raw_response"]["track"], matches=len(matches),
                 flagged=bool(flags))
        return json_response(out)

    async def _audio_track(self, audio_url: str) -> Track:
        """The track with this audioUrl if ingest saw it (its own upload is then no match, its self
        labels count); else a stand-in nobody's upload is excluded for."""
        known = await self.store.track_by_audio_url(audio_url)
        if known is None:
            digest = hashlib.sha256(audio_url.encode()).hexdigest()[:24]
            return Track(f"at://{SCAN_DID}/fm.plyr.track/{digest}", SCAN_DID, digest, "", {"audioUrl": audio_url})
        uri, did, cid, rkey = known
        _cid, record = await self.review.store.track_record(uri)
        labels = (record or {}).get("labels")
        return Track(uri, did, rkey, cid or "", {"audioUrl": audio_url, **({"labels": labels} if labels else {})})

    async def scan_image(self, request: web.Request) -> web.Response:
        """multipart `image` (+ `image_id`) -> {is_safe, reason, severity, violated_categories}."""
        image, content_type, image_id = await self._image_upload(request)
        scanner = next((s for s in self.engine.scanners if s.name == "cover-art"), None)
        if scanner is None:
            raise XrpcError("ImageModerationNotConfigured", "the cover-art scanner is not enabled: add cover-art to"
                                                            " [scan] scanners", 503)
        work = self.settings.data_dir / UPLOADS
        work.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=work, suffix=".upload")
        path = Path(name)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(image)
            track = Track(f"at://{SCAN_DID}/fm.plyr.image/{hashlib.sha256(image).hexdigest()[:24]}", SCAN_DID, "image",
                          "", {"imageUrl": image_id})
            ctx = ScanContext(media=_OneFile(path), run_cpu=self.engine.ctx.run_cpu)
            try:
                with anyio.fail_after(self.engine.timeout):
                    findings = await scanner.scan(track, ctx)
            except Exception as exc:  # noqa: BLE001 - plyr.fm's ClaudeError: a 502 the backend logs
                raise XrpcError("ScanFailed", f"{type(exc).__name__}: {exc}"[:300], 502) from None
        finally:
            path.unlink(missing_ok=True)
        plan = decide(self.engine.policy, track, findings, set())
        categories = sorted({d.value for d in plan.emit})
        is_safe = not categories
        reason = None
        severity = "low" if plan.review and is_safe else "safe"
        if not is_safe:
            severity = max((SEVERITY.get(v, "medium") for v in categories), key=("low", "medium", "high").index)
            if any(d.rule == "pdq-blocklist" for d in plan.emit):
                severity = "high"
            reason = "; ".join(f"{d.value}: {summary(_finding_dict(d.findings[0]))} (rule {d.rule})" for d in plan.emit)
            await self.store.add_sensitive_image(image_id, None, reason, f"{self.settings.plyr_compat_actor}:cover-art")
        log.info("plyr_compat.scan_image", image_id=image_id[:100], bytes=len(image), content_type=content_type,
                 is_safe=is_safe, categories=categories, review=[d.value for d in plan.review])
        return json_response({"is_safe": is_safe, "reason": reason, "severity": severity,
                              "violated_categories": categories})

    async def _image_upload(self, request: web.Request) -> tuple[bytes, str, str]:
        limit = self.settings.media_max_image_mb * 1024 * 1024
        try:
            reader = await request.multipart()
        except (AssertionError, ValueError, KeyError) as exc:
            raise XrpcError("BadRequest", f"multipart error: {exc or 'expected multipart/form-data'}") from None
        image = image_id = None
        content_type = "image/png"
        try:
            while (part := await reader.next()) is not None:
                if part.name == "image":
                    content_type = part.headers.get("Content-Type", content_type)
                    image = await _read_part(part, limit, "image")
                elif part.name == "image_id":
                    image_id = (await _read_part(part, 1000, "image_id")).decode("utf-8", "replace")
                else:
                    await part.release()
        except (ValueError, AssertionError) as exc:
            raise XrpcError("BadRequest", f"multipart error: {exc}") from None
        if image is None:
            raise XrpcError("BadRequest", "missing 'image' field")
        if image_id is None:
            raise XrpcError("BadRequest", "missing 'image_id' field")
        return image, content_type, image_id

    # -- sensitive images -------------------------------------------------------------------
    async def sensitive_images(self, request: web.Request) -> web.Response:
        image_ids, urls = await self.store.sensitive_images()
        return json_response({"image_ids": image_ids, "urls": urls})

    async def add_sensitive_image(self, body: dict) -> web.Response:
        image_id, url = _string(body, "image_id", required=False), _string(body, "url", required=False)
        reason, flagged_by = _string(body, "reason", required=False), _string(body, "flagged_by", required=False)
        if image_id is None and url is None:
            raise XrpcError("BadRequest", "at least one of image_id or url must be provided")
        new_id = await self.store.add_sensitive_image(image_id, url, reason, flagged_by)
        log.info("plyr_compat.sensitive_image_added", id=new_id, image_id=image_id, url=(url or "")[:200],
                 flagged_by=flagged_by)
        return json_response({"id": new_id, "message": "sensitive image added"})

    async def remove_sensitive_image(self, body: dict) -> web.Response:
        entry = body.get("id")
        if not isinstance(entry, int) or isinstance(entry, bool):
            raise _unprocessable("id must be an integer")
        removed = await self.store.remove_sensitive_image(entry, self.settings.plyr_compat_actor)
        log.info("plyr_compat.sensitive_image_removed", id=entry, removed=removed)
        return json_response({"removed": removed, "message": f"sensitive image {entry} "
                                                             f"{'removed' if removed else 'not found'}"})

    # -- reports ----------------------------------------------------------------------------
    async def create_report(self, body: dict) -> web.Response:
        """plyr.fm's report -> {"report_id"}; a track (its at:// URI) or an account (its DID)
        opens or joins a review item through ReportDesk; other targets are kept, not routed."""
        for name in ("reporter_did", "target_type", "target_id", "reason"):
            _string(body, name)
        for name in ("reporter_handle", "target_name", "target_url", "target_uri", "description", "screenshot_url"):
            _string(body, name, required=False)
        reason, target_type = body["reason"], body["target_type"]
        if reason not in REPORT_REASONS:
            raise XrpcError("BadRequest", f"invalid reason: {reason[:60]}. valid: {list(REPORT_REASONS)}")
        if target_type not in TARGET_TYPES:
            raise XrpcError("BadRequest", f"invalid target_type: {target_type[:60]}. valid: {list(TARGET_TYPES)}")
        subject, why_not = await self._report_subject(body)
        report_id = item_id = None
        if subject is not None:
            reports = self.review.reports
            meta = {k: body.get(k) for k in ("target_type", "target_id", "target_name", "target_url",
                                             "reporter_handle", "screenshot_url") if body.get(k) is not None}
            try:
                received = await reports.receive_about(body["reporter_did"], self.settings.plyr_compat_actor,
                                                       REASON_TYPES[reason], body.get("description"), subject,
                                                       {"name": "plyr.fm", "meta": meta})
            except ReportRefused as exc:
                why_not = str(exc)
            else:
                report_id = received["id"]
                stored = await reports.store.get(report_id)
                item_id = stored.item_id if stored else None
        plyr_id = await self.store.add_report(body, report_id=report_id, item_id=item_id, routed=why_not)
        if body.get("target_uri"):  # as plyr.fm's service did: the report is a `reported` event in its log
            target_id = body["target_id"]
            await self.store.record(subject_uri=body["target_uri"], action="reported", reason=reason,
                                    subject_track_id=int(target_id) if target_id.isdigit() and len(target_id) < 19
                                    else None, actor=f"user:{body['reporter_did']}", notes=body.get("description"),
                                    src=self.settings.did)
        log.info("plyr_compat.report", id=plyr_id, reporter=body["reporter_did"], target_type=target_type,
                 reason=reason, item=item_id, not_routed=why_not)
        return json_response({"report_id": plyr_id})

    async def _report_subject(self, body: dict) -> tuple[Subject | None, str | None]:
        uri, target_type, target_id = body.get("target_uri"), body["target_type"], body["target_id"]
        if uri:
            parts = uri.removeprefix("at://").split("/")
            if not uri.startswith("at://") or len(parts) != 3 or not is_atproto_did(parts[0]) \
                    or not is_nsid(parts[1]) or not is_rkey(parts[2]):
                return None, f"target_uri {uri[:200]!r} is not a record's at://DID/collection/rkey URI"
            collections = self.review.reports.collections
            if not any(parts[1] == c or (c.endswith(".*") and parts[1].startswith(c[:-1])) for c in collections):
                return None, f"this labeler holds {', '.join(collections)} records, not {parts[1][:100]}"
            cid, _record = await self.review.store.track_record(uri)
            raw = {"$type": STRONG_REF, "uri": uri, **({"cid": cid} if cid else {})}
            return Subject(raw, uri, cid, parts[0]), None
        if target_type == "artist" and is_atproto_did(target_id):
            return Subject({"$type": REPO_REF, "did": target_id}, target_id, None, target_id), None
        return None, f"a plyr.fm {target_type} report names no atproto record or account (no target_uri)"


# -- request helpers -----------------------------------------------------------------------------
def _unprocessable(message: str) -> XrpcError:
    """plyr.fm's axum answers a body of the wrong shape with 422."""
    return XrpcError("UnprocessableEntity", message, 422)


async def _read_body(request: web.Request, limit: int) -> bytes:
    chunks, size = [], 0
    async for chunk in request.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > limit:
            raise XrpcError("PayloadTooLarge", f"request bodies are limited to {limit} bytes", 413)
        chunks.append(chunk)
    return b"".join(chunks)


async def _json_object(request: web.Request, limit: int) -> dict:
    if request.content_type != "application/json":
        raise XrpcError("UnsupportedMediaType", "expected Content-Type: application/json", 415)
    raw = await _read_body(request, limit)
    try:
        body = json.loads(raw)
    except ValueError:
        raise XrpcError("BadRequest", "the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise _unprocessable("the body must be a JSON object")
    return body


async def _read_part(part, limit: int, name: str) -> bytes:
    chunks, size = [], 0
    while chunk := await part.read_chunk(64 * 1024):
        size += len(chunk)
        if size > limit:
            raise XrpcError("PayloadTooLarge", f"'{name}' is limited to {limit} bytes", 413)
        chunks.append(chunk)
    return b"".join(chunks)


_MISSING = object()


def _string(body: dict, name: str, *, required: bool = True, default=_MISSING) -> str | None:
    value = body.get(name)
    if value is None:
        if default is not _MISSING:
            return default
        if required:
            raise _unprocessable(f"missing field `{name}`")
        return None
    if not isinstance(value, str):
        raise _unprocessable(f"`{name}` must be a string")
    return value


def _strings(body: dict, name: str) -> list[str]:
    value = body.get(name)
    if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
        raise _unprocessable(f"`{name}` must be a list of strings")
    return value


def _query_int(request: web.Request, name: str, default: int) -> int:
    raw = request.query.get(name)
    if raw in (None, ""):
        return default
    try:
        return int(raw)
    except ValueError:
        raise XrpcError("BadRequest", f"{name} must be an integer, not {raw[:40]!r}") from None


def _subject_ok(uri: str) -> bool:
    """A record's at:// URI or an account's DID: what a review item can be about."""
    if is_atproto_did(uri):
        return True
    parts = uri.removeprefix("at://").split("/")
    return uri.startswith("at://") and len(parts) == 3 and is_atproto_did(parts[0]) and is_nsid(parts[1]) \
        and is_rkey(parts[2])


# -- answer shapes -------------------------------------------------------------------------------
def _label_json(label: Label) -> dict:
    """A label as queryLabels and the JSON stream give it (`sig` as {"$bytes": base64}; plyr.fm's
    service sent serde's array of byte values, which nothing of plyr.fm reads)."""
    return label.to_json()


def _finding_dict(f) -> dict:
    return asdict(f) if isinstance(f, Finding) else dict(f)


def _clock(seconds: float) -> str:
    s = int(max(0.0, seconds))
    return f"{s // 60:02d}:{s % 60:02d}"


def _matches(f: Finding) -> list[dict]:
    """One copyright finding as plyr.fm's AudD matches: {artist, title, album?, score, isrc?,
    timecode?, offset_ms?}, plus our evidence for a local match (ref, seconds, offsets)."""
    ev = f.evidence
    if f.scanner == "audd":
        out = []
        for m in ev.get("matches") or []:
            one = {"artist": m.get("artist") or "Unknown", "title": m.get("title") or "Unknown",
                   "score": int(m.get("score") or 0)}
            for k in ("album", "isrc", "timecode"):
                if m.get(k):
                    one[k] = m[k]
            if isinstance(m.get("offset_s"), (int, float)):
                one["offset_ms"] = int(m["offset_s"] * 1000)
            out.append(one)
        return out
    one = {"artist": ev.get("artist") or "Unknown", "title": ev.get("title") or "Unknown",
           "score": max(0, min(100, round(float(f.score) * 100)))}
    start = ev.get("query_start")
    if isinstance(start, (int, float)):
        one["timecode"], one["offset_ms"] = _clock(start), int(start * 1000)
    for k in ("ref", "ref_kind", "seconds_matched", "query_start", "query_end", "ref_start", "ref_end", "time_scale",
              "pitch_shift", "same_did", "chromaprint_duplicate"):
        if ev.get(k) is not None:
            one[k] = ev[k]
    one["scanner"] = f.scanner
    return [one]


def _dominant(matches: list[dict]) -> tuple[str | None, int]:
    """plyr.fm's dominant match: the song matched most often, and its share of the matches (%)."""
    if not matches:
        return None, 0
    counts = Counter((m["artist"], m["title"]) for m in matches)
    (artist, title), n = counts.most_common(1)[0]
    return f"{artist} - {title}", n * 100 // len(matches)


def _sustained(matches: list[dict]) -> int:
    """Distinct songs heard at 3 positions or more (AudD), or for SUSTAINED_SECONDS (a local match)."""
    positions: dict[tuple[str, str], set] = {}
    long_enough = set()
    for m in matches:
        key = (m["artist"].lower(), m["title"].lower())
        if float(m.get("seconds_matched") or 0) >= SUSTAINED_SECONDS:
            long_enough.add(key)
        where = m.get("timecode") or m.get("offset_ms")
        if where is not None and "seconds_matched" not in m:
            positions.setdefault(key, set()).add(where)
    return len(long_enough | {k for k, v in positions.items() if len(v) >= 3})


__all__ = ["PlyrCompat", "load_key", "open_plyr_compat"]
