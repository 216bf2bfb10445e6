"""LLM triage against local servers speaking OpenAI's and Anthropic's wire formats."""

from __future__ import annotations

import sqlite3

import pytest

from firehose_mod.review.triage import TriageAgent, TriageConfig
from tests.conftest import uri
from tests.fakes import llm as fake
from tests.helpers.review import CID1

pytestmark = pytest.mark.anyio


@pytest.fixture
def openai():
    with fake.FakeOpenAI() as server:
        yield server


@pytest.fixture
def anthropic():
    with fake.FakeAnthropic() as server:
        yield server


def agent(d, server, **kw) -> TriageAgent:
    provider = "anthropic" if isinstance(server, fake.FakeAnthropic) else "openai"
    config = dict(provider=provider, model="test-model", endpoint=server.url, api_key="sk-test-key", backoff=0.01,
                  timeout=5.0, price_input_per_mtok=0.15, price_output_per_mtok=0.6)
    return TriageAgent(d.desk, TriageConfig(**{**config, **kw}))


async def test_openai_false_positive_becomes_a_proposal_with_its_cost(d, openai):
    item_id = await d.scan_opens(uri(1))
    triage = agent(d, openai)
    report = await triage.run_once()
    await triage.aclose()
    assert report.candidates == 1 and report.outcomes == {"proposed": 1}
    item = (await d.store.items([item_id]))[item_id]
    proposal = await d.store.event(item.proposal_event)
    assert (item.status, proposal.actor_kind, proposal.actor_name, proposal.actor_via) == (
        "proposed", "agent", "triage", "builtin")
    assert proposal.payload["decision"] == "reject" and proposal.reason == "a cover by the same artist"
    cost = (812 * 0.15 + 41 * 0.6) / 1e6
    assert proposal.payload["cost_usd"] == round(cost, 8)
    [call] = await d.store.calls_for(item_id)
    assert (call.provider, call.outcome, call.input_tokens, call.output_tokens) == ("openai", "proposed", 812, 41)
    assert call.cost_usd == pytest.approx(cost) and report.spent_today_usd == pytest.approx(cost)
    [request] = openai.requests
    body = request["json"]
    assert request["headers"]["authorization"] == "Bearer sk-test-key"
    assert body["tool_choice"] == {"type": "function", "function": {"name": "record_verdict"}}
    assert body["tools"][0]["function"]["parameters"]["properties"]["verdict"]["enum"] == [
        "FALSE_POSITIVE", "VIOLATION", "NEEDS_HUMAN"]
    assert "seconds_matched" in body["messages"][1]["content"] and body["messages"][0]["role"] == "system"
    assert await d.label_log.count() == 0  # a proposal emits nothing
    # Answered: not sent again.
    assert (await agent(d, openai).run_once()).candidates == 0


async def test_anthropic_violation_is_proposed_never_applied(d, anthropic):
    anthropic.default = fake.anthropic_verdict("VIOLATION", "30 s of the reference, unchanged")
    item_id = await d.scan_opens(uri(1))
    triage = agent(d, anthropic, auto_apply=("copyright",))
    assert (await triage.run_once()).outcomes == {"proposed": 1}
    item = (await d.store.items([item_id]))[item_id]
    assert item.status == "proposed" and (await d.store.event(item.proposal_event)).payload["decision"] == "confirm"
    [request] = anthropic.requests
    assert (request["headers"]["x-api-key"], request["headers"]["anthropic-version"]) == ("sk-test-key", "2023-06-01")
    body = request["json"]
    assert body["tool_choice"] == {"type": "tool", "name": "record_verdict"}
    assert body["tools"][0]["input_schema"]["required"] == ["verdict", "reason"] and body["max_tokens"] == 512
    assert await d.label_log.count() == 0 and triage.metrics.auto_applied == 0


async def test_a_false_positive_on_an_auto_apply_kind_is_closed_by_firehose_mod(d, anthropic):
    item_id = await d.scan_opens(uri(1))
    triage = agent(d, anthropic, auto_apply=("copyright",))
    await triage.run_once()
    events = await d.store.events(item_id)
    assert [(e.action, e.actor_kind, e.actor_name) for e in events] == [
        ("open", "system", "policy"), ("propose", "agent", "triage"), ("reject", "system", "triage-auto-apply")]
    assert events[-1].payload["accepted_proposal"] == events[1].id and triage.metrics.auto_applied == 1


async def test_needs_human_is_a_comment_and_the_item_waits(d, openai):
    openai.default = fake.openai_verdict("NEEDS_HUMAN", "the match could be a licensed sample")
    item_id = await d.scan_opens(uri(1))
    triage = agent(d, openai)
    assert (await triage.run_once()).outcomes == {"needs-human": 1}
    item = (await d.store.items([item_id]))[item_id]
    events = await d.store.events(item_id)
    assert item.status == "open" and events[-1].event_type == "modEventComment"
    assert events[-1].reason.startswith("NEEDS_HUMAN: the match") and triage.metrics.needs_human == 1
    assert (await triage.run_once()).candidates == 0


@pytest.mark.parametrize(("provider", "reply", "outcome", "requests"), [
    ("openai", fake.openai_refusal(), "refused", 1),
    ("openai", fake.openai_text("It is probably fine."), "malformed", 1),
    ("openai", fake.openai_verdict("", "", arguments='{"verdict": "FALSE_POSITIVE", "reason": '), "malformed", 1),
    ("openai", fake.openai_verdict("SPAM", "looks like spam"), "unknown-category", 1),
    ("openai", fake.OPENAI_QUOTA, "error", 1),
    ("openai", fake.OPENAI_SERVER_ERROR, "error", 3),
    ("anthropic", fake.anthropic_refusal(), "refused", 1),
    ("anthropic", fake.anthropic_text("I think it is fine."), "malformed", 1),
    ("anthropic", fake.anthropic_text("The verdict is", stop="max_tokens"), "malformed", 1),
    ("anthropic", fake.anthropic_verdict("", "", tool_input={"verdict": "FALSE_POSITIVE"}), "malformed", 1),
    ("anthropic", fake.anthropic_verdict("MAYBE", "unsure"), "unknown-category", 1),
    ("anthropic", fake.ANTHROPIC_OVERLOADED, "error", 3),
    ("anthropic", fake.anthropic_error(400, "invalid_request_error", "max_tokens: 0 < 1"), "error", 1),
])
async def test_a_bad_answer_leaves_the_item_for_a_human_and_is_counted(d, provider, reply, outcome, requests):
    with (fake.FakeAnthropic(reply) if provider == "anthropic" else fake.FakeOpenAI(reply)) as server:
        item_id = await d.scan_opens(uri(1))
        triage = agent(d, server, max_retries=2)
        report = await triage.run_once()
        assert report.outcomes == {outcome: 1} and len(server.requests) == requests
    item = (await d.store.items([item_id]))[item_id]
    assert item.status == "open" and [e.action for e in await d.store.events(item_id)] == ["open"]
    assert getattr(triage.metrics, outcome.replace("-", "_")) == 1 and triage.metrics.retries == requests - 1
    [call] = await d.store.calls_for(item_id)
    assert call.outcome == outcome and call.attempts == requests and call.error


async def test_a_wrong_key_is_an_error_not_retried(d):
    with fake.FakeOpenAI(api_key="sk-other") as server:
        await d.scan_opens(uri(1))
        report = await agent(d, server).run_once()
    assert report.outcomes == {"error": 1} and len(server.requests) == 1
    [call] = await d.store.calls_for(1)
    assert "invalid_api_key" in call.error


async def test_overload_and_rate_limits_are_retried_with_backoff(d, anthropic, openai):
    anthropic.script = [fake.ANTHROPIC_OVERLOADED, fake.ANTHROPIC_RATE_LIMIT]
    a = await d.scan_opens(uri(1))
    triage = agent(d, anthropic)
    assert (await triage.run_once()).outcomes == {"proposed": 1}
    assert len(anthropic.requests) == 3 and triage.metrics.retries == 2
    assert (await d.store.calls_for(a))[0].attempts == 3
    openai.script = [fake.OPENAI_RATE_LIMIT]
    await d.scan_opens(uri(2))
    assert (await agent(d, openai).run_once()).outcomes == {"proposed": 1} and len(openai.requests) == 2


async def test_a_timeout_leaves_the_item_and_it_is_tried_again_later(d, openai):
    openai.script = [fake.Reply(200, {}, delay=1.0)] * 2
    item_id = await d.scan_opens(uri(1))
    triage = agent(d, openai, timeout=0.2, max_retries=1)
    assert (await triage.run_once()).outcomes == {"timeout": 1} and triage.metrics.timeout == 1
    assert (await d.store.items([item_id]))[item_id].status == "open"
    assert (await triage.run_once()).outcomes == {"proposed": 1}  # a later pass tries again


async def test_the_daily_spend_cap_stops_calls(d, openai):
    for n in range(3):
        await d.scan_opens(uri(n))
    # Each call costs 41 output tokens x $1000/M = $0.041; the worst case reserved is 100 tokens = $0.1.
    triage = agent(d, openai, price_input_per_mtok=0.0, price_output_per_mtok=1000.0, max_tokens=100,
                   daily_budget_usd=0.15, concurrency=1)
    report = await triage.run_once()
    assert report.outcomes == {"proposed": 2, "over-budget": 1} and len(openai.requests) == 2
    assert report.spent_today_usd == pytest.approx(0.082) and triage.metrics.over_budget == 1
    assert triage.metrics.as_dict()["cost_usd"] == pytest.approx(0.082)


async def test_the_prompt_carries_the_evidence_and_the_cover_only_when_configured(d, openai, settings):
    db = sqlite3.connect(settings.db_path)
    db.execute("INSERT INTO tracks (uri, did, rkey, cid, rev, record, first_seen, updated) VALUES (?, ?, ?, ?, '', ?,"
               " '', '')", (uri(1), "did:plc:uploader", "3k00000001", CID1,
                            '{"title": "Warriors (cover)", "artist": "Ana", "imageUrl": "https://cdn.example/c.jpg"}'))
    db.commit()
    db.close()
    cover = [{"scanner": "cover-art", "kind": "nsfw", "score": 0.71, "evidence": {"score": 0.71}}]
    item_id = await d.scan_opens(uri(1), value="sexual", findings=cover)
    item = (await d.store.items([item_id]))[item_id]
    plain = await agent(d, openai).prompt(item)
    assert "Warriors (cover)" in plain.text and "nsfw score 0.71" in plain.text and plain.image_url is None
    with_media = await agent(d, openai, send_media=True).prompt(item)
    assert with_media.image_url == "https://cdn.example/c.jpg"
    await agent(d, openai, send_media=True).run_once()
    content = openai.requests[-1]["json"]["messages"][1]["content"]
    assert content[1] == {"type": "image_url", "image_url": {"url": "https://cdn.example/c.jpg"}}


@pytest.mark.parametrize(("env", "message"), [
    ({"FIREHOSE_MOD_TRIAGE_ENABLED": "true"}, "[triage] model (env FIREHOSE_MOD_TRIAGE_MODEL): triage is enabled"),
    ({"FIREHOSE_MOD_TRIAGE_PROVIDER": "gemini"}, "'gemini': use openai"),
    ({"FIREHOSE_MOD_TRIAGE_AUTO_APPLY": "copyright,everything"}, "unknown item kind 'everything'"),
    ({"FIREHOSE_MOD_NOTIFY_WEBHOOK_URL": "https://hooks.example/x"}, "a webhook needs a secret"),
    ({"FIREHOSE_MOD_NOTIFY_DM_RECIPIENTS": "did:plc:moderatorabcdefghijklmno"}, "handle and app password"),
    ({"FIREHOSE_MOD_TRIAGE_DAILY_BUDGET_USD": "-1"}, "must not be negative"),
])
def test_triage_and_notify_settings_are_checked(env, message):
    from firehose_mod.config import ConfigError, load_settings

    with pytest.raises(ConfigError) as info:
        load_settings(env=env)
    assert message in str(info.value)


def test_triage_config_reads_the_settings():
    from firehose_mod.config import load_settings

    s = load_settings(env={"FIREHOSE_MOD_TRIAGE_ENABLED": "1", "FIREHOSE_MOD_TRIAGE_MODEL": "gpt-4o-mini",
                           "FIREHOSE_MOD_TRIAGE_AUTO_APPLY": "copyright"})
    config = TriageConfig.from_settings(s)
    assert (config.provider, config.model, config.auto_apply, config.concurrency) == (
        "openai", "gpt-4o-mini", ("copyright",), 2)
