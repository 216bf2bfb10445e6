"""Local stand-ins for the two LLM APIs the triage agent speaks, over real HTTP on 127.0.0.1:0.

`FakeOpenAI` answers `POST /v1/chat/completions` as OpenAI does (a `chat.completion` with
`tool_calls`, `usage.prompt_tokens`/`completion_tokens`; errors as
`{"error": {"message", "type", "param", "code"}}`); `FakeAnthropic` answers `POST /v1/messages`
as Anthropic does (a `message` with a `tool_use` block, `stop_reason`, `usage.input_tokens`/
`output_tokens`; errors as `{"type": "error", "error": {"type", "message"}, "request_id"}`,
429 rate_limit_error with retry-after, 529 overloaded_error). Both check the API key.

Script the answers: `fake.script = [Reply(...), ...]` is consumed one per request, then
`fake.default` repeats. Every request's headers and JSON body are kept in `requests`.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler

from tests.fakes.http import LocalHTTPServer


@dataclass
class Reply:
    status: int
    body: dict | bytes
    headers: dict = field(default_factory=dict)
    delay: float = 0.0  # seconds before answering (a timeout)


# -- OpenAI ----------------------------------------------------------------------------------------
def openai_verdict(verdict: str, reason: str, *, model: str = "gpt-4o-mini-2024-07-18", prompt_tokens: int = 812,
                   completion_tokens: int = 41, arguments: str | None = None) -> Reply:
    args = arguments if arguments is not None else json.dumps({"verdict": verdict, "reason": reason})
    message = {"role": "assistant", "content": None, "refusal": None, "annotations": [],
               "tool_calls": [{"id": f"call_{secrets.token_hex(12)}", "type": "function",
                               "function": {"name": "record_verdict", "arguments": args}}]}
    return Reply(200, _completion(model, message, "stop", prompt_tokens, completion_tokens))


def openai_refusal(text: str = "I'm sorry, I can't assist with that request.") -> Reply:
    message = {"role": "assistant", "content": None, "refusal": text, "annotations": []}
    return Reply(200, _completion("gpt-4o-mini-2024-07-18", message, "stop", 790, 12))


def openai_text(text: str) -> Reply:
    message = {"role": "assistant", "content": text, "refusal": None, "annotations": []}
    return Reply(200, _completion("gpt-4o-mini-2024-07-18", message, "stop", 790, 30))


def openai_error(status: int, message: str, type_: str, code: str | None, headers: dict | None = None) -> Reply:
    return Reply(status, {"error": {"message": message, "type": type_, "param": None, "code": code}}, headers or {})


OPENAI_RATE_LIMIT = openai_error(
    429, "Rate limit reached for gpt-4o-mini in organization org-x on requests per min (RPM): Limit 3, Used 3,"
         " Requested 1. Please try again in 20s.", "requests", "rate_limit_exceeded", {"retry-after": "0.05"})
OPENAI_QUOTA = openai_error(429, "You exceeded your current quota, please check your plan and billing details.",
                            "insufficient_quota", "insufficient_quota")
OPENAI_SERVER_ERROR = openai_error(500, "The server had an error while processing your request. Sorry about that!",
                                   "server_error", None)
OPENAI_BAD_KEY = openai_error(401, "Incorrect API key provided: sk-wrong. You can find your API key at"
                                   " https://platform.openai.com/account/api-keys.", "invalid_request_error",
                              "invalid_api_key")


def _completion(model, message, finish, prompt_tokens, completion_tokens) -> dict:
    return {"id": f"chatcmpl-{secrets.token_hex(12)}", "object": "chat.completion", "created": int(time.time()),
            "model": model, "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens,
                      "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                      "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                                    "accepted_prediction_tokens": 0,
                                                    "rejected_prediction_tokens": 0}},
            "service_tier": "default", "system_fingerprint": "fp_0ba0d124f1"}


# -- Anthropic -------------------------------------------------------------------------------------
def anthropic_verdict(verdict, reason: str, *, model: str = "claude-haiku-4-5-20251001", input_tokens: int = 1021,
                      output_tokens: int = 64, tool_input: dict | None = None) -> Reply:
    block = {"type": "tool_use", "id": f"toolu_01{secrets.token_hex(11)}", "name": "record_verdict",
             "input": tool_input if tool_input is not None else {"verdict": verdict, "reason": reason}}
    return Reply(200, _message(model, [block], "tool_use", input_tokens, output_tokens))


def anthropic_refusal() -> Reply:
    return Reply(200, _message("claude-haiku-4-5-20251001", [], "refusal", 990, 0))


def anthropic_text(text: str, stop: str = "end_turn") -> Reply:
    return Reply(200, _message("claude-haiku-4-5-20251001", [{"type": "text", "text": text}], stop, 990, 25))


def anthropic_error(status: int, type_: str, message: str, headers: dict | None = None) -> Reply:
    return Reply(status, {"type": "error", "error": {"type": type_, "message": message},
                          "request_id": f"req_011{secrets.token_hex(10)}"}, headers or {})


ANTHROPIC_OVERLOADED = anthropic_error(529, "overloaded_error", "Overloaded")
ANTHROPIC_RATE_LIMIT = anthropic_error(
    429, "rate_limit_error", "This request would exceed the rate limit for your organization of 50,000 input tokens"
                             " per minute. For details, refer to: https://docs.claude.com/en/api/rate-limits.",
    {"retry-after": "0"})


def _message(model, content, stop, input_tokens, output_tokens) -> dict:
    return {"id": f"msg_01{secrets.token_hex(11)}", "type": "message", "role": "assistant", "model": model,
            "content": content, "stop_reason": stop, "stop_sequence": None,
            "usage": {"input_tokens": input_tokens, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
                      "output_tokens": output_tokens, "service_tier": "standard"}}


class _FakeLLM(LocalHTTPServer):
    path = ""

    def __init__(self, default: Reply, *, api_key: str = "sk-test-key"):
        self.default, self.api_key = default, api_key
        self.script: list[Reply] = []
        self.requests: list[dict] = []
        self._lock = threading.Lock()

    def authorised(self, h: BaseHTTPRequestHandler) -> Reply | None:
        raise NotImplementedError

    def handle(self, h: BaseHTTPRequestHandler, method: str) -> None:
        body = h.rfile.read(int(h.headers.get("content-length", 0)))
        with self._lock:
            self.requests.append({"path": h.path, "headers": {k.lower(): v for k, v in h.headers.items()},
                                  "json": json.loads(body) if body else None})
            reply = self.script.pop(0) if self.script else self.default
        if method != "POST" or h.path != self.path:
            reply = self.not_found(h.path)
        else:
            reply = self.authorised(h) or reply
        time.sleep(reply.delay)
        data = reply.body if isinstance(reply.body, bytes) else json.dumps(reply.body).encode()
        h.send_response(reply.status)
        h.send_header("content-type", "application/json")
        h.send_header("content-length", str(len(data)))
        for k, v in reply.headers.items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(data)


class FakeOpenAI(_FakeLLM):
    path = "/v1/chat/completions"

    def __init__(self, default: Reply | None = None, **kw):
        super().__init__(default or openai_verdict("FALSE_POSITIVE", "a cover by the same artist"), **kw)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def authorised(self, h) -> Reply | None:
        return None if h.headers.get("authorization") == f"Bearer {self.api_key}" else OPENAI_BAD_KEY

    def not_found(self, path: str) -> Reply:
        return openai_error(404, f"Invalid URL (POST {path})", "invalid_request_error", None)


class FakeAnthropic(_FakeLLM):
    path = "/v1/messages"

    def __init__(self, default: Reply | None = None, **kw):
        super().__init__(default or anthropic_verdict("FALSE_POSITIVE", "a cover by the same artist"), **kw)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def authorised(self, h) -> Reply | None:
        if h.headers.get("x-api-key") != self.api_key:
            return anthropic_error(401, "authentication_error", "invalid x-api-key")
        if not h.headers.get("anthropic-version"):
            return anthropic_error(400, "invalid_request_error", "anthropic-version: header is required")
        return None

    def not_found(self, path: str) -> Reply:
        return anthropic_error(404, "not_found_error", f"Not found: {path}")
