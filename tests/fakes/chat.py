"""A PDS stand-in for the Bluesky DM path: createSession, and the chat.bsky.convo calls the
atproto SDK sends through it with `atproto-proxy: did:web:api.bsky.chat#bsky_chat` (a real PDS
forwards them to the chat service; here they are answered directly, in the lexicon's shapes)."""

from __future__ import annotations

import base64
import json
import threading
import time
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, urlsplit

from tests.fakes.http import LocalHTTPServer

BOT = "did:plc:notifybot234567abcdefghij"


def _jwt(claims: dict) -> str:
    part = lambda d: base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()  # noqa: E731
    return f"{part({'typ': 'at+jwt', 'alg': 'ES256K'})}.{part(claims)}.c2lnbmF0dXJl"


class FakeChatPDS(LocalHTTPServer):
    def __init__(self, *, password: str = "app-pass-word"):
        self.password = password
        self.access = _jwt({"scope": "com.atproto.appPass", "sub": BOT, "exp": int(time.time()) + 3600})
        self.calls: list[dict] = []
        self.sent: list[dict] = []
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def handle(self, h: BaseHTTPRequestHandler, method: str) -> None:
        url = urlsplit(h.path)
        body = h.rfile.read(int(h.headers.get("content-length", 0)))
        data = json.loads(body) if body else {}
        nsid = url.path.removeprefix("/xrpc/")
        with self._lock:
            self.calls.append({"nsid": nsid, "headers": {k.lower(): v for k, v in h.headers.items()},
                               "query": parse_qs(url.query), "json": data})
        status, answer = self.answer(nsid, h, parse_qs(url.query), data)
        out = json.dumps(answer).encode()
        h.send_response(status)
        h.send_header("content-type", "application/json")
        h.send_header("content-length", str(len(out)))
        h.end_headers()
        h.wfile.write(out)

    def answer(self, nsid: str, h, query: dict, data: dict) -> tuple[int, dict]:
        if nsid == "com.atproto.server.createSession":
            if data.get("password") != self.password:
                return 401, {"error": "AuthenticationRequired", "message": "Invalid identifier or password"}
            return 200, {"accessJwt": self.access, "refreshJwt": _jwt({"sub": BOT, "exp": int(time.time()) + 86400}),
                         "handle": data["identifier"], "did": BOT, "active": True}
        if h.headers.get("authorization") != f"Bearer {self.access}":
            return 401, {"error": "AuthenticationRequired", "message": "Authentication Required"}
        if h.headers.get("atproto-proxy") != "did:web:api.bsky.chat#bsky_chat":
            return 400, {"error": "InvalidRequest", "message": "no chat proxy header"}
        if nsid == "chat.bsky.convo.getConvoForMembers":
            members = [{"did": d, "handle": "mod.example.com"} for d in query["members"]]
            return 200, {"convo": {"id": "3kconvo" + query["members"][0][-6:], "rev": "3kabcrev", "muted": False,
                                   "unreadCount": 0, "members": [{"did": BOT, "handle": "bot.example.com"}, *members]}}
        if nsid == "chat.bsky.convo.sendMessage":
            with self._lock:
                self.sent.append(data)
            return 200, {"id": f"3kmsg{len(self.sent)}", "rev": "3kabcrev2", "text": data["message"]["text"],
                         "sender": {"did": BOT}, "sentAt": "2026-12-02T02:00:00.000Z"}
        return 501, {"error": "MethodNotImplemented", "message": nsid}
