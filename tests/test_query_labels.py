"""queryLabels over real HTTP: patterns without LIKE surprises, sources, limits, paging, errors."""

from __future__ import annotations

import base64

import httpx
import pytest

from firehose_mod.labels import Label, verify_label
from firehose_mod.server.admin import auth_header

from tests.conftest import Running

pytestmark = pytest.mark.anyio
LABEL_LOG_BACKENDS = ("sqlite", "postgres")  # tests/conftest.py

SUBJECTS = [
    "at://did:plc:alice/fm.plyr.track/1",
    "at://did:plc:alice/fm.plyr.track/2",
    "at://did:plc:alice_b/fm.plyr.track/1",  # '_' is a LIKE wildcard
    "at://did:plc:aliceXb/fm.plyr.track/1",  # would match 'alice_b' under LIKE
    "at://did:plc:ALICE/fm.plyr.track/1",  # would match 'alice' under case-insensitive LIKE
    "at://did:plc:al%ce/fm.plyr.track/1",
    "did:plc:alice",
]


async def get(running: Running, **params) -> httpx.Response:
    async with httpx.AsyncClient() as client:
        return await client.get(f"{running.http_base}/xrpc/com.atproto.label.queryLabels", params=params)


@pytest.fixture
async def labeled(running: Running) -> Running:
    for s in SUBJECTS:
        await running.log.emit(s, "porn")
    return running


async def uris(running: Running, patterns) -> list[str]:
    r = await get(running, uriPatterns=patterns, limit=250)
    assert r.status_code == 200, r.text
    return [label["uri"] for label in r.json()["labels"]]


async def test_exact_pattern_matches_only_that_uri(labeled):
    assert await uris(labeled, ["at://did:plc:alice/fm.plyr.track/1"]) == ["at://did:plc:alice/fm.plyr.track/1"]
    assert await uris(labeled, ["did:plc:alice"]) == ["did:plc:alice"]
    assert await uris(labeled, ["at://did:plc:nobody/x"]) == []


async def test_prefix_pattern_is_literal_and_case_sensitive(labeled):
    assert await uris(labeled, ["at://did:plc:alice/*"]) == SUBJECTS[:2]
    assert await uris(labeled, ["at://did:plc:alice_*"]) == [SUBJECTS[2]]
    assert await uris(labeled, ["at://did:plc:al%*"]) == [SUBJECTS[5]]
    assert await uris(labeled, ["at://did:plc:ALICE*"]) == [SUBJECTS[4]]


async def test_star_alone_matches_everything_and_patterns_are_ored(labeled):
    assert await uris(labeled, ["*"]) == SUBJECTS
    assert await uris(labeled, ["did:plc:alice", "at://did:plc:alice/fm.plyr.track/2"]) == [SUBJECTS[1], SUBJECTS[6]]


async def test_labels_are_lexicon_json_with_verifiable_bytes_sig(labeled):
    r = await get(labeled, uriPatterns="did:plc:alice")
    (d,) = r.json()["labels"]
    assert set(d) == {"ver", "src", "uri", "val", "cts", "sig"}  # no neg:false, no cid:null
    raw = d["sig"]["$bytes"]
    label = Label.from_wire({**d, "sig": base64.b64decode(raw + "=" * (-len(raw) % 4))})
    assert verify_label(labeled.log.key.did_key, label)


async def test_negated_label_is_answered_as_its_negation(running: Running):
    await running.log.emit("did:plc:bob", "porn")
    await running.log.emit("did:plc:bob", "porn", neg=True)
    labels = (await get(running, uriPatterns="did:plc:bob")).json()["labels"]
    assert [(label["val"], label.get("neg")) for label in labels] == [("porn", True)]


async def test_sources_filter(labeled):
    assert len((await get(labeled, uriPatterns="*", sources=labeled.log.src)).json()["labels"]) == len(SUBJECTS)
    assert (await get(labeled, uriPatterns="*", sources="did:plc:someoneelse")).json()["labels"] == []


async def test_cursor_pages_through_everything_once(running: Running):
    for i in range(23):
        await running.log.emit(f"did:plc:user{i:03d}", "porn")
    seen, cursor = [], None
    while True:
        params = {"uriPatterns": "did:plc:user*", "limit": 5}
        if cursor:
            params["cursor"] = cursor
        body = (await get(running, **params)).json()
        seen += [label["uri"] for label in body["labels"]]
        cursor = body.get("cursor")
        if not cursor:
            break
    assert seen == [f"did:plc:user{i:03d}" for i in range(23)]


async def test_default_limit_is_50(running: Running):
    for i in range(60):
        await running.log.emit(f"did:plc:user{i:03d}", "porn")
    body = (await get(running, uriPatterns="*")).json()
    assert len(body["labels"]) == 50 and body["cursor"] == "50"


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({}, "uriPatterns"),
        ({"uriPatterns": "*", "limit": "0"}, "between 1 and 250"),
        ({"uriPatterns": "*", "limit": "251"}, "between 1 and 250"),
        ({"uriPatterns": "*", "limit": "ten"}, "integer"),
        ({"uriPatterns": "*", "cursor": "x"}, "integer"),
        ({"uriPatterns": "at://*/fm.plyr.track/*"}, "only allowed at the end"),
        ({"uriPatterns": "*", "sources": "alice"}, "DIDs"),
    ],
)
async def test_bad_parameters_are_400_xrpc_errors(running: Running, params, message):
    r = await get(running, **params)
    assert r.status_code == 400
    assert r.json()["error"] == "InvalidRequest" and message in r.json()["message"]


async def test_unknown_xrpc_method_and_health(running: Running):
    async with httpx.AsyncClient() as client:
        missing = await client.get(f"{running.http_base}/xrpc/com.atproto.label.nothing")
        health = await client.get(f"{running.http_base}/xrpc/_health")
        post = await client.post(f"{running.http_base}/xrpc/com.atproto.label.queryLabels")
    assert missing.status_code == 501 and missing.json()["error"] == "MethodNotImplemented"
    assert health.status_code == 200 and "version" in health.json()
    assert post.status_code == 405 and post.json()["error"] == "MethodNotAllowed"


async def test_status_and_metrics_show_subscribers_and_lag(running: Running):
    from tests.stream_client import Received, collect, subscribe

    for i in range(5):
        await running.log.emit(f"did:plc:user{i}", "porn")
    async with subscribe(running.ws_base, 2, user_agent_header="lagging-appview/1.0") as ws:
        await collect(ws, Received(), count=3)
        async with httpx.AsyncClient() as client:
            headers = auth_header(running.settings.data_dir)
            status = (await client.get(f"{running.http_base}/admin/status", headers=headers)).json()
            metrics = (await client.get(f"{running.http_base}/metrics")).text
    (sub,) = status["subscribers"]
    assert status["head"] == 5 and sub["cursor"] == 5 and sub["lag"] == 0 and sub["requested_cursor"] == 2
    assert sub["user_agent"] == "lagging-appview/1.0"
    assert status["key"] == running.log.key.did_key
    assert "firehose_mod_subscribers 1.0" in metrics
    assert sub["remote"] == "127.0.0.1"  # for the operator; /metrics is public and has no addresses
    assert f'firehose_mod_subscriber_lag{{subscriber="{sub["id"]}"}} 0.0' in metrics and "127.0.0.1" not in metrics
    assert "firehose_mod_frames_sent_total 3.0" in metrics
