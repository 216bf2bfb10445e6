"""The two wire formats the triage agent speaks, through httpx: an OpenAI-compatible
`POST {endpoint}/chat/completions` with a forced function call, and Anthropic's
`POST {endpoint}/v1/messages` with a forced `tool_use`. Either way the model must answer by
calling `record_verdict` with {verdict: FALSE_POSITIVE | VIOLATION | NEEDS_HUMAN, reason}.

Anything else is an `LLMError` whose `outcome` says how the item is left for a human:
refused (a refusal or a content filter), malformed (no tool call, bad JSON, no reason, cut off),
unknown-category, timeout, error (HTTP errors; 429/5xx/529 are `retryable`). Token usage is
kept even on failures: a refused answer is still billed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import httpx

from firehose_mod.review.states import VERDICTS

TOOL = "record_verdict"
TOOL_DESCRIPTION = "Record your verdict on the review item, with a short reason a moderator can check."
VERDICT_SCHEMA = {
    "type": "object",
    "properties": {
        "verdict": {"type": "string", "enum": list(VERDICTS),
                    "description": "FALSE_POSITIVE: the scanner is wrong; VIOLATION: it is right; "
                                   "NEEDS_HUMAN: the evidence does not settle it"},
        "reason": {"type": "string", "description": "one or two sentences citing the evidence"},
    },
    "required": ["verdict", "reason"],
    "additionalProperties": False,
}


@dataclass(frozen=True, slots=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0


@dataclass(frozen=True, slots=True)
class Prompt:
    system: str
    text: str
    image_url: str | None = None


@dataclass(frozen=True, slots=True)
class Verdict:
    verdict: str
    reason: str
    usage: Usage
    model: str


@dataclass(eq=False)
class LLMError(Exception):
    outcome: str  # refused | malformed | unknown-category | timeout | error
    message: str
    retryable: bool = False
    usage: Usage = field(default_factory=Usage)
    retry_after: float | None = None
    status: int | None = None

    def __str__(self) -> str:
        return f"{self.outcome}: {self.message}"


def verdict_from(arguments, usage: Usage, model: str) -> Verdict:
    """The tool call's arguments as a Verdict, or LLMError(malformed | unknown-category)."""
    if not isinstance(arguments, dict):
        raise LLMError("malformed", f"{TOOL} arguments are not an object: {str(arguments)[:200]}", usage=usage)
    verdict, reason = arguments.get("verdict"), arguments.get("reason")
    if not isinstance(verdict, str):
        raise LLMError("malformed", f"no verdict in {json.dumps(arguments)[:200]}", usage=usage)
    if verdict not in VERDICTS:
        raise LLMError("unknown-category", f"verdict {verdict[:60]!r} is none of {', '.join(VERDICTS)}", usage=usage)
    if not isinstance(reason, str) or not reason.strip():
        raise LLMError("malformed", "a verdict without a reason", usage=usage)
    return Verdict(verdict, reason.strip()[:2000], usage, model)


def _retry_after(headers: httpx.Headers) -> float | None:
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        try:
            return float(headers[name]) * scale
        except (KeyError, ValueError):
            continue
    return None


def _json(body: bytes, status: int) -> dict:
    try:
        doc = json.loads(body)
    except ValueError:
        raise LLMError("error" if status != 200 else "malformed", f"HTTP {status}, not JSON: {body[:200]!r}",
                       retryable=status >= 500, status=status) from None
    if not isinstance(doc, dict):
        raise LLMError("malformed", f"HTTP {status}: a JSON {type(doc).__name__}, not an object", status=status)
    return doc


class OpenAIChat:
    """An OpenAI-compatible chat completions endpoint (OpenAI, vLLM, llama.cpp, Ollama, ...)."""

    name = "openai"
    default_endpoint = "https://api.openai.com/v1"

    def __init__(self, endpoint: str, api_key: str, model: str, max_tokens: int):
        self.url = (endpoint or self.default_endpoint).rstrip("/") + "/chat/completions"
        self.api_key, self.model, self.max_tokens = api_key, model, max_tokens

    def request(self, prompt: Prompt) -> tuple[str, dict, dict]:
        user: str | list = prompt.text
        if prompt.image_url:
            user = [{"type": "text", "text": prompt.text}, {"type": "image_url", "image_url": {"url": prompt.image_url}}]
        body = {
            "model": self.model, "max_tokens": self.max_tokens,
            "messages": [{"role": "system", "content": prompt.system}, {"role": "user", "content": user}],
            "tools": [{"type": "function", "function": {"name": TOOL, "description": TOOL_DESCRIPTION,
                                                         "parameters": VERDICT_SCHEMA, "strict": True}}],
            "tool_choice": {"type": "function", "function": {"name": TOOL}},
        }
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        return self.url, headers, body

    def parse(self, status: int, headers: httpx.Headers, body: bytes) -> Verdict:
        doc = _json(body, status)
        if status != 200:
            err = doc.get("error") if isinstance(doc.get("error"), dict) else {}
            code = err.get("code") or err.get("type")
            retryable = (status == 429 and code != "insufficient_quota") or status >= 500
            raise LLMError("error", f"HTTP {status} {code}: {str(err.get('message'))[:300]}", retryable=retryable,
                           retry_after=_retry_after(headers), status=status)
        raw = doc.get("usage") or {}
        usage = Usage(int(raw.get("prompt_tokens") or 0), int(raw.get("completion_tokens") or 0))
        try:
            choice = doc["choices"][0]
            message = choice["message"]
        except (KeyError, IndexError, TypeError):
            raise LLMError("malformed", "no choices[0].message in the answer", usage=usage) from None
        if message.get("refusal"):
            raise LLMError("refused", str(message["refusal"])[:300], usage=usage)
        if choice.get("finish_reason") == "content_filter":
            raise LLMError("refused", "the answer was withheld by the content filter", usage=usage)
        for call in message.get("tool_calls") or []:
            function = call.get("function") or {}
            if function.get("name") == TOOL:
                try:
                    arguments = json.loads(function.get("arguments") or "")
                except ValueError:
                    raise LLMError("malformed", f"{TOOL} arguments are not JSON: "
                                   f"{str(function.get('arguments'))[:200]}", usage=usage) from None
                return verdict_from(arguments, usage, doc.get("model") or self.model)
        cut = " (cut off at max_tokens)" if choice.get("finish_reason") == "length" else ""
        raise LLMError("malformed", f"answered without calling {TOOL}{cut}: {str(message.get('content'))[:200]}",
                       usage=usage)


class AnthropicMessages:
    """Anthropic's Messages API."""

    name = "anthropic"
    default_endpoint = "https://api.anthropic.com"
    version = "2023-06-01"

    def __init__(self, endpoint: str, api_key: str, model: str, max_tokens: int):
        self.url = (endpoint or self.default_endpoint).rstrip("/") + "/v1/messages"
        self.api_key, self.model, self.max_tokens = api_key, model, max_tokens

    def request(self, prompt: Prompt) -> tuple[str, dict, dict]:
        content: list[dict] = [{"type": "text", "text": prompt.text}]
        if prompt.image_url:
            content.append({"type": "image", "source": {"type": "url", "url": prompt.image_url}})
        body = {
            "model": self.model, "max_tokens": self.max_tokens, "system": prompt.system,
            "messages": [{"role": "user", "content": content}],
            "tools": [{"name": TOOL, "description": TOOL_DESCRIPTION, "input_schema": VERDICT_SCHEMA}],
            "tool_choice": {"type": "tool", "name": TOOL},
        }
        return self.url, {"x-api-key": self.api_key, "anthropic-version": self.version}, body

    def parse(self, status: int, headers: httpx.Headers, body: bytes) -> Verdict:
        doc = _json(body, status)
        if status != 200:
            err = doc.get("error") if isinstance(doc.get("error"), dict) else {}
            kind = err.get("type")
            retryable = status in (429, 529) or status >= 500 or kind in ("overloaded_error", "rate_limit_error")
            raise LLMError("error", f"HTTP {status} {kind}: {str(err.get('message'))[:300]}", retryable=retryable,
                           retry_after=_retry_after(headers), status=status)
        raw = doc.get("usage") or {}
        usage = Usage(int(raw.get("input_tokens") or 0) + int(raw.get("cache_creation_input_tokens") or 0)
                      + int(raw.get("cache_read_input_tokens") or 0), int(raw.get("output_tokens") or 0))
        stop = doc.get("stop_reason")
        if stop == "refusal":
            raise LLMError("refused", "the model declined to answer (stop_reason refusal)", usage=usage)
        for block in doc.get("content") or []:
            if isinstance(block, dict) and block.get("type") == "tool_use" and block.get("name") == TOOL:
                return verdict_from(block.get("input"), usage, doc.get("model") or self.model)
        cut = " (cut off at max_tokens)" if stop == "max_tokens" else ""
        raise LLMError("malformed", f"answered without calling {TOOL}{cut}", usage=usage)


async def ask(client: httpx.AsyncClient, provider, prompt: Prompt, *, timeout: float) -> Verdict:
    """One call; LLMError on any failure (timeouts and connection errors are retryable)."""
    url, headers, body = provider.request(prompt)
    try:
        response = await client.post(url, headers=headers, json=body, timeout=timeout)
    except httpx.TimeoutException:
        raise LLMError("timeout", f"no answer within {timeout:g} s", retryable=True) from None
    except httpx.HTTPError as exc:
        raise LLMError("error", f"{type(exc).__name__}: {exc}"[:300], retryable=True) from None
    return provider.parse(response.status_code, response.headers, response.content)


def make_provider(name: str, endpoint: str, api_key: str, model: str, max_tokens: int):
    cls = {"openai": OpenAIChat, "anthropic": AnthropicMessages}[name]
    return cls(endpoint, api_key, model, max_tokens)
