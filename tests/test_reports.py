"""Reports and appeals through com.atproto.moderation.createReport, on the real daemon.

Callers authenticate as the network does: a service JWT signed with the reporter's own key,
whose DID document a local PLC directory serves. The atproto SDK's XRPC client sends the
reports and parses our answers with its models.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from dataclasses import replace

import anyio
import httpx
import pytest
from atproto import AsyncClient, models
from atproto_client.exceptions import RequestException

from firehose_mod.daemon import run_daemon
from firehose_mod.review.actors import Actor
from firehose_mod.store.label_log import EmitRequest
from firehose_mod.store.review import ItemQuery
from tests.helpers.desk_page import sign_in
from tests.helpers.service_jwt import LABELER, USER, Key, Net, token

pytestmark = pytest.mark.anyio

AUTHOR = "did:plc:" + "a" * 24
TRACK = f"at://{AUTHOR}/fm.plyr.track/3ktrack"
CID = "bafyreie5737gdxlw5i64vzichcalba3z2v5n6icifvx5xytvske7mr3hpm"
ROOT = Actor("system", "test", "admin", "local")
KEYS = {USER: Key("secp256k1"), AUTHOR: Key("p256")}
OTHER = "did:plc:" + "o" * 24
KEYS[OTHER] = Key("secp256k1")
COUNTER_NOTICE = """I have a good faith belief, under penalty of perjury, that this track was labeled as a result of
mistake or misidentification: it is my own recording. I consent to the jurisdiction of the Federal District
Court for my address, and I will accept service of process from the person who complained.
Name: Ada Example, address: 1 Harbour Road, Lisbon, phone +351 912 345 678
/s/ Ada Example"""


@asynccontextmanager
async def daemon(settings):
    net = Net()
    for did, key in KEYS.items():
        net.register(did, key)
    with net:
        settings = replace(settings, did=LABELER, plc_url=net.plc_url, media_allow_networks=("127.0.0.1/32",),
                           ingest_source="none", scanners=("self-labels",))
        async with anyio.create_task_group() as tg:
            parts = await tg.start(run_daemon, settings)
            yield parts, f"http://127.0.0.1:{parts['server'].port}"
            tg.cancel_scope.cancel()


def sdk(base: str, jwt: str) -> AsyncClient:
    client = AsyncClient(base_url=f"{base}/xrpc")
    client.request.add_additional_header("Authorization", f"Bearer {jwt}")
    return client


def strong_ref(uri: str = TRACK, cid: str = CID) -> models.ComAtprotoRepoStrongRef.Main:
    return models.ComAtprotoRepoStrongRef.Main(uri=uri, cid=cid)


async def appeals_of(base: str, who: str) -> list[dict]:
    """getAppeals as `who` (through the SDK's generic XRPC call: the method is ours)."""
    jwt = token(KEYS[who], iss=who, lxm="fm.plyr.moderation.getAppeals")
    return (await sdk(base, jwt).invoke_query("fm.plyr.moderation.getAppeals")).content["appeals"]


async def report(base: str, who: str, reason_type: str, reason: str | None = None, subject=None, **claims):
    jwt = token(KEYS[who], iss=who, **claims)
    data = models.ComAtprotoModerationCreateReport.Data(reason_type=reason_type, reason=reason,
                                                        subject=subject or strong_ref())
    return await sdk(base, jwt).com.atproto.moderation.create_report(data)


async def test_a_report_opens_a_review_item_and_a_second_reporter_joins_it(settings):
    async with daemon(settings) as (parts, base):
        first = await report(base, USER, "com.atproto.moderation.defs#reasonSexual", "the cover is explicit")
        second = await report(base, OTHER, "tools.ozone.report.defs#reasonSexualUnlabeled", "nsfw cover, no label")
        review = parts["review"]
        (item,) = await review.store.query(ItemQuery(uploader=AUTHOR))
        events = await review.store.events(item.id)
        rows = await review.reports.store.for_item(item.id)
        head = await parts["engine"].label_log.head()
    assert isinstance(first, models.ComAtprotoModerationCreateReport.Response)
    assert (first.reported_by, first.reason_type, first.reason) == (USER, "com.atproto.moderation.defs#reasonSexual",
                                                                    "the cover is explicit")
    assert first.subject.uri == TRACK and first.subject.cid == CID and second.id == first.id + 1
    assert (item.kind, item.value, item.uri, item.cid, item.source) == ("report", "sexual", TRACK, CID, "report")
    assert [e.action for e in events] == ["open", "comment"] and OTHER in events[1].reason
    assert [(r.reporter, r.reason) for r in rows] == [(USER, "the cover is explicit"), (OTHER, "nsfw cover, no label")]
    assert head == 0  # a report publishes nothing by itself


async def test_bad_tokens_and_bad_subjects_are_refused_with_the_protocols_errors(settings):
    async with daemon(settings) as (_parts, base), httpx.AsyncClient(timeout=10) as http:
        url = f"{base}/xrpc/com.atproto.moderation.createReport"
        body = {"reasonType": "com.atproto.moderation.defs#reasonSpam",
                "subject": {"$type": "com.atproto.repo.strongRef", "uri": TRACK, "cid": CID}}
        missing = await http.post(url, json=body)
        wrong_aud = await http.post(url, json=body, headers={
            "Authorization": f"Bearer {token(KEYS[USER], aud='did:plc:' + 'x' * 24)}"})
        wrong_lxm = await http.post(url, json=body, headers={
            "Authorization": f"Bearer {token(KEYS[USER], lxm='fm.plyr.moderation.getAppeals')}"})
        forged = await http.post(url, json=body, headers={"Authorization": f"Bearer {token(KEYS[OTHER], iss=USER)}"})
        jwt = token(KEYS[USER])
        once = await http.post(url, json=body, headers={"Authorization": f"Bearer {jwt}"})
        replayed = await http.post(url, json=body, headers={"Authorization": f"Bearer {jwt}"})
        post = await http.post(url, json={**body, "subject": {"$type": "com.atproto.repo.strongRef",
                                                              "uri": f"at://{AUTHOR}/app.bsky.feed.post/3k", "cid": CID}},
                               headers={"Authorization": f"Bearer {token(KEYS[USER])}"})
        no_reason = await http.post(url, json={"subject": body["subject"]},
                                    headers={"Authorization": f"Bearer {token(KEYS[USER])}"})
    assert (missing.status_code, missing.json()["error"]) == (401, "MissingJwt")
    assert (wrong_aud.status_code, wrong_aud.json()["error"]) == (401, "BadJwtAudience")
    assert (wrong_lxm.status_code, wrong_lxm.json()["error"]) == (401, "BadJwtLexiconMethod")
    assert (forged.status_code, forged.json()["error"]) == (401, "BadJwtSignature")
    assert once.status_code == 200
    assert (replayed.status_code, replayed.json()["error"]) == (401, "NonceNotUnique")
    assert post.status_code == 400 and "fm.plyr.track" in post.json()["message"]
    assert no_reason.status_code == 400 and "reasonType" in no_reason.json()["message"]


async def test_a_report_about_an_account_or_a_track_we_never_saw_is_kept(settings):
    async with daemon(settings) as (parts, base):
        await report(base, USER, "tools.ozone.report.defs#reasonHarassmentTargeted", "abusive bio",
                     subject=models.ComAtprotoAdminDefs.RepoRef(did=AUTHOR))
        await report(base, USER, "com.atproto.moderation.defs#reasonViolation", "this is my label's single",
                     subject=strong_ref(f"at://{AUTHOR}/fm.plyr.track/3knever"))
        items = {i.uri: i for i in await parts["review"].store.query(ItemQuery(uploader=AUTHOR))}
    assert items[AUTHOR].value == "offensive-text" and items[AUTHOR].kind == "report"
    assert items[f"at://{AUTHOR}/fm.plyr.track/3knever"].value == "copyright-violation"


async def test_an_appeal_by_the_author_overturned_negates_the_label_and_the_author_sees_it(settings):
    async with daemon(settings) as (parts, base):
        log = parts["engine"].label_log
        await log.emit_many([EmitRequest(TRACK, "sexual", cid=CID)])
        appeal = await report(base, AUTHOR, "com.atproto.moderation.defs#reasonAppeal", "the cover is a sunset")
        by_other = await report(base, USER, "com.atproto.moderation.defs#reasonAppeal", "I think it's fine")
        review = parts["review"]
        items = await review.store.query(ItemQuery(uploader=AUTHOR))
        appeal_item = next(i for i in items if i.kind == "appeal")
        pending = await appeals_of(base, AUTHOR)
        mo = Actor("operator", "mo", "moderator", "local")
        await review.operators.add(ROOT, "mo", "moderator")
        done = await review.desk.reject(mo, [appeal_item.id], reason="a sunset; the model was wrong")
        after = await appeals_of(base, AUTHOR)
        someone_else = await appeals_of(base, USER)
        in_force = await log.in_force(TRACK)
    assert appeal.id and by_other.id
    assert (appeal_item.value, appeal_item.source) == ("sexual", "appeal")
    assert sorted(i.kind for i in items) == ["appeal", "report"]  # someone else's "appeal" is a report
    assert [(a["id"], a["status"], a["label"]) for a in pending] == [(appeal.id, "pending", "sexual")]
    assert done.steps[0].negate == ["sexual"] and in_force == []
    (granted,) = after
    assert (granted["status"], granted["decisionReason"]) == ("granted", "a sunset; the model was wrong")
    assert someone_else == []


async def test_a_copyright_appeal_must_be_a_counter_notice_and_the_author_is_told_what_is_missing(settings):
    async with daemon(settings) as (parts, base):
        await parts["engine"].label_log.emit_many([EmitRequest(TRACK, "copyright-violation", cid=CID)])
        await report(base, AUTHOR, "tools.ozone.report.defs#reasonAppeal", "it's mine!!")
        first = await appeals_of(base, AUTHOR)
        await report(base, AUTHOR, "tools.ozone.report.defs#reasonAppeal", COUNTER_NOTICE)
        second = await appeals_of(base, AUTHOR)
        items = await parts["review"].store.query(ItemQuery(uploader=AUTHOR))
    (incomplete,) = first
    assert incomplete["counterNotice"]["complete"] is False and len(incomplete["counterNotice"]["missing"]) == 5
    assert second[0]["counterNotice"] == {"complete": True, "missing": []}
    assert len(items) == 1  # the second statement joined the same appeal


async def test_a_reporter_over_the_hourly_limit_gets_rate_limited(settings):
    async with daemon(settings) as (parts, base):
        parts["review"].reports.limits.per_reporter_hour = 3
        for n in range(3):
            await report(base, USER, "com.atproto.moderation.defs#reasonRude", f"report {n}")
        with pytest.raises(RequestException) as refused:
            await report(base, USER, "com.atproto.moderation.defs#reasonRude", "one too many")
        other = await report(base, OTHER, "com.atproto.moderation.defs#reasonRude", "another reporter")
    assert refused.value.response.status_code == 429
    assert refused.value.response.content.error == "RateLimitExceeded"
    assert other.id == 4


async def test_the_desk_shows_the_notice_beside_the_counter_notice_and_the_uploaders_takedowns(settings):
    async with daemon(settings) as (parts, base), httpx.AsyncClient(timeout=10) as http:
        log = parts["engine"].label_log
        await report(base, USER, "com.atproto.moderation.defs#reasonViolation", "this is our catalogue's single <b>")
        mo = Actor("operator", "mo", "moderator", "local")
        _row, mo_token = await parts["review"].operators.add(ROOT, "mo", "moderator")
        (notice_item,) = await parts["review"].store.query(ItemQuery(uploader=AUTHOR))
        await parts["review"].desk.confirm(mo, [notice_item.id], reason="matches the label's master")
        for n in range(2):  # two more takedowns on the same uploader: a repeat infringer
            await log.emit_many([EmitRequest(f"{TRACK}{n}", "copyright-violation", cid=CID)])
        await report(base, AUTHOR, "com.atproto.moderation.defs#reasonAppeal", "mine; I never signed with them")
        appeal = next(i for i in await parts["review"].store.query(ItemQuery(uploader=AUTHOR)) if i.kind == "appeal")
        await sign_in(http, base, mo_token)
        page = (await http.get(f"{base}/admin/review/items/{appeal.id}")).text
        queue = (await http.get(f"{base}/admin/review?kind=appeal")).text
    notice = page[page.index('class="side notice"'):page.index('class="side counter"')]
    counter = page[page.index('class="side counter"'):]
    assert "this is our catalogue&#39;s single &lt;b&gt;" in notice and USER in notice
    assert "mine; I never signed with them" in counter and "Missing: a statement under penalty of perjury" in counter
    assert "3 copyright\n  labels in force: a repeat infringer" in page
    assert f'href="/admin/review/items/{appeal.id}"' in queue and "appeal by did:plc:aaaa" in queue
