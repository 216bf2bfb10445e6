"""Operators and agents as named actors, their tokens, and the role check every action makes.

A token is 32 random bytes (base64url, prefixed `fhm_`), shown once; only its SHA-256 is
stored. A fast hash is enough for a high-entropy secret (nothing to brute-force), and the
stored hash is compared in constant time. Roles: `agent` proposes and comments; `moderator`
also opens, applies or overturns proposals and decides directly; `admin` also manages operators.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from firehose_mod.review.states import ROLES, may
from firehose_mod.store.operators import OperatorExists, OperatorRow, OperatorStore

TOKEN_PREFIX = "fhm_"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")


class Unauthenticated(PermissionError):
    """No token, an unknown token or a revoked one."""


class Forbidden(PermissionError):
    """The actor is known but its role does not allow the action."""


@dataclass(frozen=True, slots=True)
class Actor:
    """Who acts: kind operator|agent|system, a name, a role, and how they reached us."""

    kind: str
    name: str
    role: str  # admin | moderator | agent | system
    via: str = "token"  # token (API) | session (admin page) | local (CLI, whoever can read the database) | builtin

    @classmethod
    def of(cls, row: OperatorRow, via: str) -> Actor:
        return cls("agent" if row.role == "agent" else "operator", row.name, row.role, via)

    def to_json(self) -> dict:
        return {"kind": self.kind, "name": self.name, "role": self.role, "via": self.via}


def system_actor(name: str) -> Actor:
    """firehose-mod itself (the triage auto-apply, a bootstrap admin on this machine)."""
    return Actor("system", name, "system", "builtin")


def require(actor: Actor, action: str) -> None:
    """Raise Forbidden unless `actor`'s role allows `action` (see review/states.ROLE_ACTIONS)."""
    if not may(actor.role, action):
        raise Forbidden(f"{actor.kind} {actor.name!r} ({actor.role}) may not {action}")


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class Operators:
    """The operator directory: add, list, revoke (admins), and who a token or a name is."""

    def __init__(self, store: OperatorStore):
        self.store = store

    async def add(self, actor: Actor, name: str, role: str) -> tuple[OperatorRow, str]:
        """Create an operator; returns it and its token (shown once, stored only hashed)."""
        require(actor, "manage-operators")
        if not _NAME.fullmatch(name):
            raise ValueError(f"operator name {name[:80]!r}: use 1-64 letters, digits, '.', '_', '@' or '-'")
        if role not in ROLES:
            raise ValueError(f"role {role!r}: use admin, moderator or agent")
        token = new_token()
        try:
            row = await self.store.add(name, role, hash_token(token), created_by=actor.name)
        except OperatorExists:
            raise ValueError(f"an operator named {name!r} exists (or existed: names are never reused)") from None
        return row, token

    async def list(self, actor: Actor) -> list[OperatorRow]:
        require(actor, "manage-operators")
        return await self.store.all()

    async def revoke(self, actor: Actor, name: str) -> OperatorRow:
        require(actor, "manage-operators")
        if not await self.store.revoke(name, actor.name):
            row = await self.store.by_name(name)
            raise ValueError(f"no operator named {name!r}" if row is None else f"{name!r} is already revoked")
        return await self.store.by_name(name)

    async def authenticate(self, token: str | None) -> Actor:
        """The actor holding `token` (a bearer token from the API); Unauthenticated otherwise."""
        if not token or not token.startswith(TOKEN_PREFIX):
            raise Unauthenticated("a bearer token from `firehose-mod operator add` is required")
        digest = hash_token(token)
        found = await self.store.by_hash(digest)
        if found is None or not hmac.compare_digest(found[1], digest):
            raise Unauthenticated("unknown token")
        row = found[0]
        if not row.active:
            raise Unauthenticated(f"the token of {row.name!r} was revoked")
        return Actor.of(row, "token")

    async def sign_in(self, token: str | None, hours: float) -> tuple[Actor, str, str]:
        """A session for the admin page: (the actor, the cookie value, its CSRF token).

        The cookie value is a fresh random secret (never the operator token), stored only hashed;
        a session ends at sign-out, after `hours`, or when its operator is revoked."""
        actor = await self.authenticate(token)
        session, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(24)
        expires = (datetime.now(timezone.utc) + timedelta(hours=hours)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        await self.store.open_session(hash_token(session), actor.name, csrf, expires)
        return Actor(actor.kind, actor.name, actor.role, "session"), session, csrf

    async def session(self, session: str | None) -> tuple[Actor, str]:
        """The actor and CSRF token of a signed-in page session; Unauthenticated otherwise."""
        found = await self.store.session(hash_token(session)) if session else None
        if found is None:
            raise Unauthenticated("not signed in")
        row, csrf, expires = found
        if expires <= datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ"):
            raise Unauthenticated("the session expired: sign in again")
        if not row.active:
            raise Unauthenticated(f"the token of {row.name!r} was revoked")
        return Actor.of(row, "session"), csrf

    async def sign_out(self, session: str) -> None:
        await self.store.end_session(hash_token(session))

    async def local(self, name: str) -> Actor:
        """The operator `name`, for a command run on this machine (`--as NAME`), recorded as local."""
        row = await self.store.by_name(name)
        if row is None:
            raise Unauthenticated(f"no operator named {name!r} (see: firehose-mod operator list)")
        if not row.active:
            raise Unauthenticated(f"operator {name!r} was revoked")
        return Actor.of(row, "local")

    async def bootstrap(self, who: str) -> Actor | None:
        """While no admin exists, whoever can write the database may add the first one."""
        if await self.store.active_admins():
            return None
        return Actor("system", f"local:{who}", "admin", "local")

    async def check_active(self, actor: Actor) -> None:
        """Refuse an operator revoked since it authenticated (a session outliving its token)."""
        if actor.kind == "system" or actor.via == "builtin":
            return
        row = await self.store.by_name(actor.name)
        if row is None or not row.active:
            raise Unauthenticated(f"operator {actor.name!r} was revoked")
