"""Signing in to the admin page: a session cookie per sign-in, and CSRF checks on every form.

An operator signs in with their token (`firehose-mod operator add`); the page never keeps the
token. The cookie holds a fresh random session id (stored only as its SHA-256, see
`Operators.sign_in`), HttpOnly (no script reads it), SameSite=Strict (no other site's page
sends it), Path=/admin, and Secure when the page is reached over TLS (directly, behind a proxy
on this machine that says `X-Forwarded-Proto: https`, or when `public_url` is https).

Every state-changing request must carry the session's CSRF token (a hidden form field or the
`X-CSRF-Token` header, compared in constant time) and, when the browser sends one, an `Origin`
that is this server. The sign-in form, before any session exists, uses a double-submit token: a
random value both in a short-lived cookie and in the form.
"""

from __future__ import annotations

import hmac
import secrets
from urllib.parse import urlsplit

from aiohttp import web

from firehose_mod.review.actors import Actor, Operators, Unauthenticated

COOKIE = "fhm_session"
LOGIN_COOKIE = "fhm_login"
SESSION_HOURS = 12.0
PATH = "/admin"


class CsrfRefused(PermissionError):
    """A form without this session's CSRF token, or posted from another origin."""


def is_tls(request: web.Request, public_url: str | None) -> bool:
    if request.secure or (public_url or "").startswith("https://"):
        return True
    peer = request.remote or ""
    return peer in ("127.0.0.1", "::1") and request.headers.get("X-Forwarded-Proto", "").lower() == "https"


def set_cookie(response: web.StreamResponse, request: web.Request, public_url: str | None, name: str, value: str,
               max_age: int) -> None:
    response.set_cookie(name, value, max_age=max_age, path=PATH, httponly=True, samesite="Strict",
                        secure=is_tls(request, public_url))


def clear_cookie(response: web.StreamResponse, name: str) -> None:
    response.del_cookie(name, path=PATH)


class SessionGate:
    """Who is signed in on a request, and whether its form may change anything."""

    def __init__(self, operators: Operators, public_url: str | None):
        self.operators = operators
        self.public_url = public_url

    async def actor(self, request: web.Request) -> tuple[Actor, str]:
        """(the signed-in actor, the session's CSRF token); Unauthenticated otherwise."""
        return await self.operators.session(request.cookies.get(COOKIE))

    async def sign_in(self, request: web.Request, token: str, response: web.StreamResponse) -> Actor:
        actor, session, _csrf = await self.operators.sign_in(token.strip(), SESSION_HOURS)
        set_cookie(response, request, self.public_url, COOKIE, session, int(SESSION_HOURS * 3600))
        clear_cookie(response, LOGIN_COOKIE)
        return actor

    async def sign_out(self, request: web.Request, response: web.StreamResponse) -> None:
        if session := request.cookies.get(COOKIE):
            await self.operators.sign_out(session)
        clear_cookie(response, COOKIE)

    def check_origin(self, request: web.Request) -> None:
        origin = request.headers.get("Origin")
        if origin is None:
            return  # older browsers send no Origin on a same-origin post: the CSRF token decides
        host = request.headers.get("X-Forwarded-Host") if _from_loopback(request) else None
        if urlsplit(origin).netloc != (host or request.host):
            raise CsrfRefused(f"a form posted from {origin[:100]} (another site) was refused")

    def check_csrf(self, request: web.Request, given: str | None, expected: str) -> None:
        self.check_origin(request)
        given = given or request.headers.get("X-CSRF-Token")
        if not given or not hmac.compare_digest(given.encode(), expected.encode()):
            raise CsrfRefused("the form's CSRF token is missing or wrong: reload the page and try again")

    @staticmethod
    def login_token() -> str:
        return secrets.token_urlsafe(24)

    def check_login(self, request: web.Request, given: str | None) -> None:
        self.check_origin(request)
        expected = request.cookies.get(LOGIN_COOKIE)
        if not given or not expected or not hmac.compare_digest(given.encode(), expected.encode()):
            raise CsrfRefused("the sign-in form expired or came from elsewhere: reload it and sign in again")


def _from_loopback(request: web.Request) -> bool:
    return (request.remote or "") in ("127.0.0.1", "::1")


__all__ = ["COOKIE", "CsrfRefused", "SessionGate", "Unauthenticated"]
