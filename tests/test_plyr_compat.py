"""plyr.fm's moderation-service contract on the daemon's front door ([plyr_compat], compat/plyr.py).

`PlyrBackend` below makes each request exactly as plyr.fm's backend client does
(zzstoatzz/plyr.fm backend/src/backend/_internal/clients/moderation.py: the same paths, the
`X-Moderation-Key` header, the same bodies, multipart for /scan-image) and reads the answers the
same way, with the same fail-open / fail-closed fallbacks, minus its redis cache.
"""

from __future__ import annotations

import io
import os
from dataclasses import replace
from typing import Any

import anyio
import httpx
import numpy as np
import pytest
from PIL import Image

from firehose_mod.cli.errors import describe
from firehose_mod.config import ConfigError, load_settings
from firehose_mod.daemon import open_label_log, run_daemon
from firehose_mod.events import TrackEvent
from firehose_mod.review.actors import Actor
from firehose_mod.scan.catalogue import open_catalogue
from firehose_mod.scan.copyright import import_paths
from firehose_mod.scan.cover import decode_cover, pdq_dihedral
from firehose_mod.store.review import ItemQuery

from tests import media as M
from tests.fakes.jetstream import track_record
from tests.fakes.media_server import MediaServer
from tests.test_cover import artwork

pytestmark = pytest.mark.anyio

KEY = "plyr-shared-key-0123456789abcdef"
UPLOADER = "did:plc:ewvi7nxzyoun6zhxrhs64oiz"
OTHER = "did:plc:abcdefghijklmnopqrstuvwx"
CID = "bafyreidlq2zhh7zu7tqz224aj37vup2xi6w2j2vcf4outqa6klo3pb23jm"
COPY = f"at://{UPLOADER}/fm.plyr.track/3kcopy"


def track(n: int, did: str = UPLOADER) -> str:
    return f"at://{did}/fm.plyr.track/3kplyr{n}"


class PlyrBackend:
    """plyr.fm's ModerationClient, request for request (service_url and labeler_url both us)."""

    def __init__(self, base: str, key: str = KEY):
        self.service_url = self.labeler_url = base
        self.auth_token = key
        self.timeout = httpx.Timeout(30)

    def _headers(self) -> dict[str, str]:
        return {"X-Moderation-Key": self.auth_token}

    async def scan(self, audio_url: str) -> dict:
        async with httpx.AsyncClient(timeout=self.timeout) as client:
            response = await client.post(f"{self.service_url}/scan", json={"audio_url": audio_url},
                                         headers=self._headers())
            response.raise_for_status()
            data = response.json()
            return {"is_flagged": data.get("is_flagged", False), "highest_score": data.get("highest_score", 0),
                    "matches": data.get("matches", []), "raw_response": data.get("raw_response", {}), "all": data}

    async def emit_label(self, uri: str, cid: str | None = None, val: str = "copyright-violation",
                         context: dict | None = None) -> tuple[bool, httpx.Response | None]:
        payload: dict[str, Any] = {"uri": uri, "val": val}
        if cid:
            payload["cid"] = cid
        if context:
            payload["context"] = context
        try:
            async with httpx.AsyncClient(timeout=httpx.Timeout(10.0)) as client:
                response = await client.post(f"{self.labeler_url}/emit-label", json=payload, headers=self._headers())
                response.raise_for_status()
                return True, response
        except Exception:  # noqa: BLE001 - their client: EmitLabelResult(success=False)
            return False, None

    async def get_sensitive_images(self) -> tuple[list[str], list[str]]:
        async with httpx.AsyncClient(timeout=self.timeout) as client:
            response = await client.get(f"{self.labeler_url}/sensitive-images")  # no auth: public
            response.raise_for_status()
            data = response.json()
            return data.get("image_ids", []), data.get("urls", [])

    async def scan_image(self, image_bytes: bytes, image_id: str, content_type: str = "image/png") -> dict:
        async with httpx.AsyncClient(timeout=httpx.Timeout(30.0)) as client:
            response = await client.post(f"{self.labeler_url}/scan-image",
                                         files={"image": (image_id, image_bytes, content_type)},
                                         data={"image_id": image_id}, headers=self._headers())
            response.raise_for_status()
            data = response.json()
            return {"is_safe": data.get("is_safe", True), "reason": data.get("reason"),
                    "severity": data.get("severity", "safe"),
                    "violated_categories": data.get("violated_categories", [])}

    async def create_report(self, reporter_did: str, target_type: str, target_id: str, reason: str,
                            reporter_handle: str | None = None, target_name: str | None = None,
                            target_url: str | None = None, target_uri: str | None = None,
                            description: str | None = None, screenshot_url: str | None = None) -> int:
        payload: dict[str, Any] = {"reporter_did": reporter_did, "target_type": target_type, "target_id": target_id,
                                   "reason": reason}
        for name, value in (("reporter_handle", reporter_handle), ("target_name", target_name),
                            ("target_url", target_url), ("target_uri", target_uri), ("description", description),
                            ("screenshot_url", screenshot_url)):
            if value:
                payload[name] = value
        async with httpx.AsyncClient(timeout=self.timeout) as client:
            response = await client.post(f"{self.service_url}/reports", json=payload, headers=self._headers())
            response.raise_for_status()
            return response.json()["report_id"]

    async def get_active_labels(self, uris: list[str]) -> set[str]:
        try:
            async with httpx.AsyncClient(timeout=self.timeout) as client:
                response = await client.post(f"{self.labeler_url}/internal/active-labels", json={"uris": uris},
                                             headers=self._headers())
                response.raise_for_status()
                return set(response.json().get("active_uris", []))
        except Exception:  # noqa: BLE001 - fail closed: treat all as active
            return set(uris)

    async def get_active_label_values(self, uris: list[str], *, strict: bool = False) -> dict[str, set[str]]:
        try:
            async with httpx.AsyncClient(timeout=self.timeout) as client:
                response = await client.post(f"{self.labeler_url}/internal/labels", json={"uris": uris},
                                             headers=self._headers())
                response.raise_for_status()
                raw = response.json().get("labels", {})
                return {uri: set(raw.get(uri, [])) for uri in uris}
        except Exception:
            if strict:  # authorization paths fail closed
                raise
            return {uri: set() for uri in uris}  # discovery fails open

    async def get_active_labels_by_value(self, values: list[str]) -> dict[str, set[str]]:
        async with httpx.AsyncClient(timeout=self.timeout) as client:
            response = await client.post(f"{self.labeler_url}/internal/labels-by-value", json={"values": values},
                                         headers=self._headers())
            response.raise_for_status()
            return {uri: set(vals) for uri, vals in response.json().get("labels", {}).items()}

    async def record_event(self, *, subject_uri: str, action: str, actor: str, subject_track_id: int | None = None,
                           reason: str | None = None, notes: str | None = None) -> httpx.Response:
        # Their client swallows failures (best effort); the test wants to see the answer.
        async with httpx.AsyncClient(timeout=self.timeout) as client:
            return await client.post(f"{self.labeler_url}/internal/events", json={
                "subject_uri": subject_uri, "subject_track_id": subject_track_id, "action": action, "actor": actor,
                "reason": reason, "notes": notes}, headers=self._headers())

    async def get_events_head(self) -> int:
        async with httpx.AsyncClient(timeout=self.timeout) as client:
            response = await client.get(f"{self.labeler_url}/internal/events-head", headers=self._headers())
            response.raise_for_status()
            return int(response.json().get("latest_id", 0))

    async def get_events_since(self, after_id: int, *, limit: int = 50) -> list[dict[str, Any]]:
        async with httpx.AsyncClient(timeout=self.timeout) as client:
            response = await client.get(f"{self.labeler_url}/internal/events-since",
                                        params={"after_id": after_id, "limit": limit}, headers=self._headers())
            response.raise_for_status()
            return response.json().get("events", [])

    async def get_moderation_overrides(self) -> dict[str, str]:
        async with httpx.AsyncClient(timeout=self.timeout) as client:
            response = await client.get(f"{self.labeler_url}/internal/overrides", headers=self._headers())
            response.raise_for_status()
            return response.json().get("overrides", {})

    async def get_negated_labels(self, uris: list[str]) -> set[str]:
        try:
            async with httpx.AsyncClient(timeout=self.timeout) as client:
                response = await client.post(f"{self.labeler_url}/internal/negated-labels", json={"uris": uris},
                                             headers=self._headers())
                response.raise_for_status()
                return set(response.json().get("negated_uris", []))
        except Exception:  # noqa: BLE001 - fail closed the other way: resolve nothing
            return set()


# plyr.fm's transparency publisher (backend/_internal/transparency.py): what it reads of an event.
PUBLISHABLE = {"takedown", "override_exclude", "label_applied", "label_negated"}
EVENT_KEYS = {"id", "subject_uri", "subject_track_id", "action", "actor", "reason", "notes", "created_at"}


def compat(settings, **kw):
    return replace(settings, ingest_source="none", plyr_compat_enabled=True, plyr_compat_key=KEY, **kw)


def png(img) -> bytes:
    out = io.BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()


async def test_the_backend_client_reads_labels_writes_events_and_reports_through_the_desk(settings):
    settings = compat(settings, scanners=("self-labels",))
    async with anyio.create_task_group() as tg:
        parts = await tg.start(run_daemon, settings)
        server, review = parts["server"], parts["review"]
        base = f"http://127.0.0.1:{server.port}"
        plyr = PlyrBackend(base)
        async with httpx.AsyncClient(timeout=10) as http:
            # -- the key: missing, wrong, twice; the public read needs none ------------------
            body = {"uris": [track(1)]}
            missing = await http.post(f"{base}/internal/labels", json=body)
            wrong = await http.post(f"{base}/internal/labels", json=body, headers={"X-Moderation-Key": KEY[:-1] + "x"})
            twice = await http.post(f"{base}/internal/labels", json=body,
                                    headers=[("X-Moderation-Key", KEY), ("X-Moderation-Key", KEY)])
            no_key_get = await http.get(f"{base}/internal/events-head")
            public = await http.get(f"{base}/sensitive-images")
            # their client's fallbacks with a wrong key: fail closed, fail open, fail closed the other way
            wrong_key = PlyrBackend(base, key="not-the-key-but-long-enough")
            closed = await wrong_key.get_active_labels([track(1)])
            opened = await wrong_key.get_active_label_values([track(1)])
            with pytest.raises(httpx.HTTPStatusError):
                await wrong_key.get_active_label_values([track(1)], strict=True)
            resolves_nothing = await wrong_key.get_negated_labels([track(1)])

            # -- emit-label through the label log --------------------------------------------
            ok1, emitted1 = await plyr.emit_label(track(1), cid=CID, context={
                "track_id": 11, "track_title": "Totally Mine", "artist_handle": "up.example.com", "highest_score": 85,
                "matches": [{"artist": "Someone", "title": "Their Song", "score": 85}]})
            ok2, emitted2 = await plyr.emit_label(track(2), val="sexual")
            ok_again, again = await plyr.emit_label(track(2), val="sexual")
            bad_val = await http.post(f"{base}/emit-label", json={"uri": track(2), "val": "NOT A VALUE"},
                                      headers=plyr._headers())
            values = await plyr.get_active_label_values([track(1), track(2), track(3)])
            active = await plyr.get_active_labels([track(1), track(2), track(3)])
            by_value = await plyr.get_active_labels_by_value(["copyright-violation", "porn", "sexual"])
            empty = await plyr.get_active_labels([])

            # -- the event log: our labels as events, then what the backend posts ---------------
            head = await plyr.get_events_head()
            mirrored = await plyr.get_events_since(0)
            flagged = await plyr.record_event(subject_uri=track(3), subject_track_id=64, action="flagged_by_scan",
                                              actor="service:copyright-scan", reason="fingerprint_match",
                                              notes="3 matches, highest score 0")
            excluded = await plyr.record_event(subject_uri=track(3), subject_track_id=64, action="override_exclude",
                                               actor="admin:zzstoatzz.io", reason="fingerprint_match")
            after_exclude = await plyr.get_events_since(head)
            allowed = await plyr.record_event(subject_uri=track(1), subject_track_id=11, action="override_allow",
                                              actor="admin:zzstoatzz.io", notes="the artist's own cover")
            overrides_1 = await plyr.get_moderation_overrides()
            await plyr.record_event(subject_uri=track(3), action="override_clear", actor="admin:zzstoatzz.io")
            overrides_2 = await plyr.get_moderation_overrides()
            await plyr.record_event(subject_uri=track(4), action="flagged_by_scan", actor="service:copyright-scan")
            for n, act in ((4, "acknowledged"), (5, "takedown")):
                await plyr.record_event(subject_uri=track(n), action="flagged_by_scan", actor="service:copyright-scan")
                await plyr.record_event(subject_uri=track(n), action=act, actor="admin:zzstoatzz.io")
            await plyr.record_event(subject_uri=track(7), action="reported", actor=f"user:{OTHER}", reason="explicit",
                                    notes="look at the cover")
            await plyr.record_event(subject_uri="at://x", action="reported", actor="user:someone")  # any string
            # A flag our own moderator dismisses (no label was ever written): resolved for the backend.
            await plyr.record_event(subject_uri=track(6), action="flagged_by_scan", actor="service:copyright-scan")
            (item6,) = [i for i in await review.store.query(ItemQuery(uploader=UPLOADER, limit=100)) if i.uri == track(6)]
            await review.desk.reject(Actor("system", "test-moderator", "admin", "local"), [item6.id], reason="a cover")
            negated = await plyr.get_negated_labels([track(n) for n in range(1, 8)])
            empty_actor = await plyr.record_event(subject_uri=track(3), action="acknowledged", actor="  ")
            bad_action = await plyr.record_event(subject_uri=track(3), action="vanish", actor="admin")
            not_json = await http.post(f"{base}/internal/events", content=b"{", headers={
                **plyr._headers(), "Content-Type": "application/json"})
            bad_cursor = await http.get(f"{base}/internal/events-since", params={"after_id": "x"},
                                        headers=plyr._headers())
            page = await plyr.get_events_since(0, limit=2)
            everything = await plyr.get_events_since(0, limit=500)

            # -- sensitive images ------------------------------------------------------------------
            added = (await http.post(f"{base}/internal/sensitive-images", headers=plyr._headers(), json={
                "image_id": "abc123", "reason": "explicit", "flagged_by": "admin:zzstoatzz.io"})).json()
            added_url = (await http.post(f"{base}/internal/sensitive-images", headers=plyr._headers(), json={
                "url": "https://cdn.example.com/avatar.jpg"})).json()
            neither = await http.post(f"{base}/internal/sensitive-images", headers=plyr._headers(), json={"reason": "x"})
            listed = await plyr.get_sensitive_images()
            removed = (await http.post(f"{base}/internal/sensitive-images/remove", headers=plyr._headers(),
                                       json={"id": added["id"]})).json()
            removed_again = (await http.post(f"{base}/internal/sensitive-images/remove", headers=plyr._headers(),
                                             json={"id": added["id"]})).json()
            listed_after = await plyr.get_sensitive_images()

            # -- reports ---------------------------------------------------------------------------
            track_report = await plyr.create_report("did:plc:reporterreporterreporter", "track", "42", "explicit",
                                                    reporter_handle="reporter.bsky.social",
                                                    target_name='"Song" by up', target_url="/track/42",
                                                    target_uri=track(2), description="not safe for work")
            tag_report = await plyr.create_report("did:plc:reporterreporterreporter", "tag", "7", "abuse")
            artist_report = await plyr.create_report("did:plc:reporterreporterreporter", "artist", OTHER, "spam")
            reported = [e for e in await plyr.get_events_since(0, limit=200) if e["action"] == "reported"]
            invalid_reason = await http.post(f"{base}/reports", headers=plyr._headers(), json={
                "reporter_did": "did:test:reporter123", "target_type": "track", "target_id": "42",
                "reason": "invalid_reason"})
            invalid_type = await http.post(f"{base}/reports", headers=plyr._headers(), json={
                "reporter_did": "did:test:reporter123", "target_type": "planet", "target_id": "42", "reason": "spam"})

            # -- not served without a scanner ---------------------------------------------------------
            no_scan = await http.post(f"{base}/scan", headers=plyr._headers(), json={"audio_url": "https://x.test/a.mp3"})
            no_image = await http.post(f"{base}/scan-image", headers=plyr._headers(),
                                       files={"image": ("i1", b"\x89PNG", "image/png")}, data={"image_id": "i1"})
            items = await review.store.query(ItemQuery(statuses=("open", "proposed", "escalated", "confirmed",
                                                                 "rejected", "allowed", "content-deleted", "resolved"),
                                                       limit=100))
            item_events = {i.uri + " " + i.value: await review.store.events(i.id) for i in items}
            in_force_1 = await parts["engine"].label_log.in_force(track(1))
            in_force_3 = await parts["engine"].label_log.in_force(track(3))
        tg.cancel_scope.cancel()

    assert missing.status_code == 401 and missing.json()["error"] == "AuthenticationRequired"
    assert wrong.status_code == 401 and twice.status_code == 401 and no_key_get.status_code == 401
    assert public.status_code == 200 and public.json() == {"image_ids": [], "urls": []}
    assert closed == {track(1)} and opened == {track(1): set()} and resolves_nothing == set()

    assert ok1 and ok2 and ok_again
    label1 = emitted1.json()
    assert label1["label"]["uri"] == track(1) and label1["label"]["val"] == "copyright-violation"
    assert label1["label"]["cid"] == CID and label1["label"]["src"] == settings.did and label1["written"] is True
    assert set(label1["label"]["sig"]) == {"$bytes"} and label1["label"]["ver"] == 1
    assert again.json()["written"] is False and again.json()["seq"] == emitted2.json()["seq"]
    assert bad_val.status_code == 400
    assert values == {track(1): {"copyright-violation"}, track(2): {"sexual"}, track(3): set()}
    assert active == {track(1)} and empty == set()
    assert by_value == {track(1): {"copyright-violation"}, track(2): {"sexual"}}

    assert head == 2 and [e["action"] for e in mirrored] == ["label_applied", "label_applied"]
    assert all(set(e) == EVENT_KEYS for e in mirrored)
    assert {e["actor"] for e in mirrored} == {"labeler:plyr-backend"}  # the decision behind each label
    assert [(e["subject_uri"], e["reason"]) for e in mirrored] == [(track(1), "copyright-violation"),
                                                                    (track(2), "sexual")]
    assert flagged.status_code == 200 and flagged.json() == {"id": 3}
    assert excluded.status_code == 200 and allowed.status_code == 200
    # The backend's exclude confirmed the waiting copyright item: the label it emitted is the next event,
    # carrying the backend's track id (so the transparency post links the track).
    assert [(e["id"], e["action"], e["subject_track_id"]) for e in after_exclude] == [
        (3, "flagged_by_scan", 64), (4, "override_exclude", 64), (5, "label_applied", 64)]
    assert [e["action"] in PUBLISHABLE for e in after_exclude] == [False, True, True]
    assert [x.val for x in in_force_3] == ["copyright-violation"]
    assert in_force_1 == []  # the backend's allow: the desk allowed the copyright label (negated)
    assert overrides_1 == {track(3): "exclude", track(1): "allow"} and overrides_2 == {track(1): "allow"}
    assert negated == {track(1), track(6)}  # negated, and dismissed without a label; not 3 (in force), not 4/5
    assert empty_actor.status_code == 400 and "actor is required" in empty_actor.json()["message"]
    assert bad_action.status_code == 422 and not_json.status_code == 400 and bad_cursor.status_code == 400
    assert [e["id"] for e in page] == [1, 2]
    ids = [e["id"] for e in everything]
    assert ids == list(range(1, len(ids) + 1))  # one total, gap-free cursor
    assert [e["action"] for e in everything if e["subject_uri"] == track(1)] == [
        "label_applied", "override_allow", "label_negated"]

    desk = {k: [(e.action, e.actor_name, e.payload.get("plyr_actor")) for e in v] for k, v in item_events.items()}
    assert desk[f"{track(3)} copyright-violation"] == [("open", "plyr-backend", None),
                                                       ("confirm", "plyr-backend", "admin:zzstoatzz.io")]
    assert desk[f"{track(1)} copyright-violation"] == [("open", "plyr-backend", None),
                                                       ("allow", "plyr-backend", "admin:zzstoatzz.io")]
    assert [e[:2] for e in desk[f"{track(4)} copyright-violation"]] == [
        ("open", "plyr-backend"), ("comment", "plyr-backend"), ("resolve", "plyr-backend")]
    assert desk[f"{track(7)} sexual"] == [("open", "plyr-backend", None)]
    assert not any(k.startswith("at://x ") for k in desk)  # recorded in their log only
    assert desk[f"{track(5)} copyright-violation"][-1][:2] == ("delete", "plyr-backend")
    by_uri = {(i.uri, i.value): i for i in items}
    assert by_uri[(track(3), "copyright-violation")].evidence[0]["kind"] == "plyr-flag"
    assert by_uri[(track(2), "sexual")].kind == "report" and by_uri[(track(2), "sexual")].status == "open"
    assert by_uri[(OTHER, "!warn")].kind == "report"  # an artist report: the account
    assert by_uri[(track(7), "sexual")].kind == "report"
    assert by_uri[(track(7), "sexual")].evidence[0]["evidence"]["reason"] == "look at the cover"

    assert added == {"id": 1, "message": "sensitive image added"} and added_url["id"] == 2
    assert neither.status_code == 400
    assert listed == (["abc123"], ["https://cdn.example.com/avatar.jpg"])
    assert removed == {"removed": True, "message": "sensitive image 1 removed"}
    assert removed_again["removed"] is False and listed_after == ([], ["https://cdn.example.com/avatar.jpg"])

    assert (track_report, tag_report, artist_report) == (1, 2, 3)
    assert [(e["subject_uri"], e["subject_track_id"], e["actor"], e["reason"]) for e in reported][-1] == (
        track(2), 42, "user:did:plc:reporterreporterreporter", "explicit")
    assert invalid_reason.status_code == 400 and invalid_type.status_code == 400
    assert no_scan.status_code == 503 and no_image.status_code == 503


@pytest.mark.slow
async def test_scan_answers_from_the_catalogue_as_plyr_reads_an_audd_scan(settings, tmp_path):
    catalogue_dir = tmp_path / "catalogue"
    catalogue_dir.mkdir()
    reference = M.write_wav(catalogue_dir / "hit-single.wav", M.song(101, 45))
    copy = M.mp3(reference, tmp_path / "copy.mp3", kbps=64)
    own = M.mp3(M.write_wav(tmp_path / "own.wav", M.song(202, 40)), tmp_path / "own.mp3", kbps=64)
    async with open_catalogue(settings.db_path) as catalogue:
        report = await import_paths([catalogue_dir], catalogue.store, catalogue.index, concurrency=1)
    assert len(report.added) == 1
    media = MediaServer()
    media.files["/copy.mp3"] = (copy.read_bytes(), "audio/mpeg")
    media.files["/own.mp3"] = (own.read_bytes(), "audio/mpeg")
    settings = compat(settings, scanners=("copyright",), media_allow_networks=("127.0.0.1/32",),
                      media_allow_http=True)
    with media:
        copy_url = f"{media.base}/copy.mp3"
        async with anyio.create_task_group() as tg:
            parts = await tg.start(run_daemon, settings)
            store, review = parts["store"], parts["review"]
            plyr = PlyrBackend(f"http://127.0.0.1:{parts['server'].port}")
            with anyio.fail_after(120):
                # The upload reaches us first: our worker scans it and indexes it under its uri. The
                # backend's scan of the same audioUrl must then not match the upload itself.
                await store.commit("jetstream", 1, [TrackEvent(UPLOADER, "fm.plyr.track", "3kcopy", "create", CID,
                                                               track_record("Totally Mine", audioUrl=copy_url), 1)])
                while (await store.counts())["done"] < 1:
                    await anyio.sleep(0.1)
                flagged = await plyr.scan(copy_url)
                clear = await plyr.scan(f"{media.base}/own.mp3")
                async with httpx.AsyncClient(timeout=30) as http:
                    gone = await http.post(f"{plyr.service_url}/scan", json={"audio_url": f"{media.base}/nothing.mp3"},
                                           headers=plyr._headers())
                # The backend opens its review item: it carries the scan's evidence.
                await plyr.record_event(subject_uri=COPY, subject_track_id=9, action="flagged_by_scan",
                                        actor="service:copyright-scan", reason="fingerprint_match")
                (item,) = [i for i in await review.store.query(ItemQuery(uploader=UPLOADER)) if i.uri == COPY]
            tg.cancel_scope.cancel()
    assert item.kind == "copyright" and item.evidence[0]["evidence"]["title"] == "hit-single"
    assert [f["kind"] for f in item.evidence] == ["copyright-match", "plyr-flag"]
    assert flagged["raw_response"]["track"] == COPY
    assert flagged["is_flagged"] is True
    (match,) = flagged["matches"]
    assert match["title"] == "hit-single" and match["artist"] == "Unknown" and 0 < match["score"] <= 100
    assert match["ref_kind"] == "reference" and match["seconds_matched"] >= 30
    assert flagged["highest_score"] == match["score"]
    assert flagged["all"]["dominant_match"] == "Unknown - hit-single" and flagged["all"]["dominant_match_pct"] == 100
    assert flagged["all"]["sustained_song_count"] == 1
    assert flagged["raw_response"]["decisions"]["label"] == [["copyright-violation", "catalogue-match"]]
    assert clear["is_flagged"] is False and clear["matches"] == [] and clear["all"]["dominant_match_pct"] == 0
    assert "dominant_match" not in clear["all"]
    assert gone.status_code == 502  # the backend stores a scan_failed "clear" result


async def test_scan_image_scores_the_cover_and_flags_it_for_blurring(settings, tmp_path):
    bad = artwork(7)
    hashes, _quality = pdq_dihedral(decode_cover(_save(bad, tmp_path / "bad.png"))[0])
    blocklist = tmp_path / "pdq.txt"
    blocklist.write_text(f"{hashes[0]} porn  # known bad\n")
    settings = compat(settings, scanners=("cover-art",), cover_nsfw=False, pdq_blocklist=blocklist,
                      media_max_image_mb=4)
    noise = png(Image.fromarray(np.random.default_rng(3).integers(0, 255, (1024, 1024, 3), dtype=np.uint8)))
    assert 1024 * 1024 < len(noise) < 4 * 1024 * 1024  # over the front door's usual 100 KiB, under [media]'s
    async with anyio.create_task_group() as tg:
        parts = await tg.start(run_daemon, settings)
        plyr = PlyrBackend(f"http://127.0.0.1:{parts['server'].port}")
        with anyio.fail_after(60):
            unsafe = await plyr.scan_image(png(bad.rotate(90)), "r2imageid1")
            safe = await plyr.scan_image(png(artwork(99)), "r2imageid2")
            broken = await plyr.scan_image(b"\x89PNG\r\n\x1a\n" + os.urandom(300), "r2imageid3")
            large = await plyr.scan_image(noise, "r2imageid4")
            listed = await plyr.get_sensitive_images()
            async with httpx.AsyncClient(timeout=30) as http:
                too_large = await http.post(f"{plyr.labeler_url}/scan-image", data={"image_id": "x"},
                                            files={"image": ("x", os.urandom(5 * 1024 * 1024), "image/png")},
                                            headers=plyr._headers())
                no_image = await http.post(f"{plyr.labeler_url}/scan-image", data={"image_id": "x"},
                                           files={"other": ("x", b"x", "text/plain")}, headers=plyr._headers())
                no_key = await http.post(f"{plyr.labeler_url}/scan-image", data={"image_id": "x"},
                                         files={"image": ("x", png(bad), "image/png")})
        tg.cancel_scope.cancel()
    assert unsafe["is_safe"] is False and unsafe["severity"] == "high" and unsafe["violated_categories"] == ["porn"]
    assert "blocklisted image" in unsafe["reason"]
    assert safe == {"is_safe": True, "reason": None, "severity": "safe", "violated_categories": []}
    assert broken["is_safe"] is True and broken["severity"] == "low"  # our policy: a person looks at it
    assert listed == (["r2imageid1"], [])
    assert large["is_safe"] is True and too_large.status_code == 413
    assert list((settings.data_dir / "plyr-compat").iterdir()) == []  # uploads are not kept
    assert no_image.status_code == 400 and no_key.status_code == 401


def _save(img, path):
    img.save(path)
    return path


PATHS = [("POST", "/scan"), ("POST", "/scan-image"), ("POST", "/emit-label"), ("POST", "/reports"),
         ("GET", "/sensitive-images"), ("POST", "/internal/active-labels"), ("POST", "/internal/labels"),
         ("POST", "/internal/labels-by-value"), ("POST", "/internal/negated-labels"),
         ("POST", "/internal/sensitive-images"), ("POST", "/internal/sensitive-images/remove"),
         ("POST", "/internal/events"), ("GET", "/internal/overrides"), ("GET", "/internal/events-since"),
         ("GET", "/internal/events-head")]


async def test_disabled_by_default_every_path_is_404(settings):
    settings = replace(settings, ingest_source="none", scanners=("self-labels",), plyr_compat_key=KEY)
    async with anyio.create_task_group() as tg:
        parts = await tg.start(run_daemon, settings)
        base = f"http://127.0.0.1:{parts['server'].port}"
        async with httpx.AsyncClient(timeout=10) as http:
            answers = [await http.request(method, base + path, json={"uris": []}, headers={"X-Moderation-Key": KEY})
                       for method, path in PATHS]
        tg.cancel_scope.cancel()
    assert [a.status_code for a in answers] == [404] * len(PATHS)
    assert answers[0].json()["error"] == "NotFound"


async def test_refuses_to_start_without_a_usable_key(settings, tmp_path):
    with pytest.raises(ConfigError, match=r"\[plyr_compat\] enabled .*FIREHOSE_MOD_PLYR_COMPAT_KEY"):
        load_settings(env={"FIREHOSE_MOD_PLYR_COMPAT_ENABLED": "true"})
    with pytest.raises(ConfigError, match="at least 16 characters"):
        load_settings(env={"FIREHOSE_MOD_PLYR_COMPAT_ENABLED": "true", "FIREHOSE_MOD_PLYR_COMPAT_KEY": "short"})
    key_file = tmp_path / "plyr-key"
    key_file.write_text(KEY + "\n")
    with pytest.raises(ConfigError, match="not both"):
        load_settings(env={"FIREHOSE_MOD_PLYR_COMPAT_KEY": KEY, "FIREHOSE_MOD_PLYR_COMPAT_KEY_FILE": str(key_file)})
    key_file.chmod(0o644)
    loose = replace(settings, ingest_source="none", scanners=("self-labels",), plyr_compat_enabled=True,
                    plyr_compat_key_file=key_file)
    with anyio.fail_after(30), pytest.raises(BaseException) as info:
        await run_daemon(loose)
    line = describe(info.value, loose, "run")
    assert line is not None and "\n" not in line and f"chmod 600 {key_file}" in line
    # A good key file: served, and its key is the one compared.
    key_file.chmod(0o600)
    async with anyio.create_task_group() as tg:
        parts = await tg.start(run_daemon, replace(loose, plyr_compat_key_file=key_file))
        async with httpx.AsyncClient(timeout=10) as http:
            ok = await http.get(f"http://127.0.0.1:{parts['server'].port}/internal/overrides",
                                headers={"X-Moderation-Key": KEY})
        tg.cancel_scope.cancel()
    assert ok.status_code == 200 and ok.json() == {"overrides": {}}
    assert KEY not in repr(compat(settings))  # never in a repr (logs)


async def test_labels_from_before_compat_was_enabled_are_not_announced(settings):
    async with open_label_log(settings) as label_log:
        await label_log.emit(track(1), "sexual")  # history: written before plyr.fm's backend came
    settings = compat(settings, scanners=("self-labels",))
    async with anyio.create_task_group() as tg:
        parts = await tg.start(run_daemon, settings)
        plyr = PlyrBackend(f"http://127.0.0.1:{parts['server'].port}")
        head = await plyr.get_events_head()
        await plyr.emit_label(track(2))
        events = await plyr.get_events_since(head)
        labels = await plyr.get_active_labels_by_value(["sexual", "copyright-violation"])
        tg.cancel_scope.cancel()
    assert head == 0 and [(e["id"], e["subject_uri"]) for e in events] == [(1, track(2))]
    assert labels == {track(1): {"sexual"}, track(2): {"copyright-violation"}}  # reads see every label


# services/moderation/src/main.rs's own tests: (path, body) of every service-to-service endpoint.
MACHINE_ENDPOINTS = [("/active-labels", '{"uris":[]}'), ("/labels", '{"uris":[]}'),
                     ("/labels-by-value", '{"values":[]}'), ("/negated-labels", '{"uris":[]}'),
                     ("/sensitive-images", '{"image_id":"x"}'), ("/sensitive-images/remove", '{"id":1}'),
                     ("/events", '{"subject_uri":"at://x","action":"acknowledged","actor":"t"}')]


async def test_the_vectors_of_their_service_tests(settings):
    settings = compat(settings, scanners=("self-labels",))
    async with anyio.create_task_group() as tg:
        parts = await tg.start(run_daemon, settings)
        base = f"http://127.0.0.1:{parts['server'].port}"
        plyr = PlyrBackend(base)
        json_type = {"Content-Type": "application/json"}
        async with httpx.AsyncClient(timeout=10) as http:
            with_key = [await http.post(f"{base}/internal{path}", content=body, headers={**json_type, **plyr._headers()})
                        for path, body in MACHINE_ENDPOINTS]
            without = [await http.post(f"{base}/internal{path}", content=body, headers=json_type)
                       for path, body in MACHINE_ENDPOINTS]
            not_aliased = await http.post(f"{base}/admin/overrides", content="{}", headers={**json_type,
                                                                                           **plyr._headers()})
        # backend/tests/test_moderation.py: reports by "did:test:reporter123", an artist "did:plc:test"
        spam = await plyr.create_report("did:test:reporter123", "track", "42", "spam", description="test report")
        other = await plyr.create_report("did:test:reporter123", "artist", "did:plc:test", "other")
        tag = await plyr.create_report("did:test:reporter123", "tag", "7", "abuse")
        tg.cancel_scope.cancel()
    assert [r.status_code for r in with_key] == [200] * len(MACHINE_ENDPOINTS)
    assert [r.json() for r in with_key[:4]] == [{"active_uris": []}, {"labels": {}}, {"labels": {}},
                                                {"negated_uris": []}]
    assert with_key[4].json() == {"id": 1, "message": "sensitive image added"}
    assert with_key[5].json() == {"removed": True, "message": "sensitive image 1 removed"}
    assert with_key[6].json() == {"id": 1}
    assert [r.status_code for r in without] == [401] * len(MACHINE_ENDPOINTS)
    assert not_aliased.status_code == 404
    assert (spam, other, tag) == (1, 2, 3)  # kept; none names an atproto subject we can hold
