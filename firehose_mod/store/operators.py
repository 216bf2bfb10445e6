"""Operators and agents (SQL only): a name, a role, the SHA-256 of their token, revocation.

Rows are never deleted and a revocation is final (triggers): moderation events name their
actors, so a name keeps meaning one person or agent for the life of the database.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from firehose_mod.labels.model import now_iso
from firehose_mod.store.db import Store


class OperatorExists(ValueError):
    """That name is taken (perhaps by a revoked operator: names are never reused)."""


@dataclass(frozen=True, slots=True)
class OperatorRow:
    id: int
    name: str
    role: str  # admin | moderator | agent
    created: str
    created_by: str
    revoked: str | None
    revoked_by: str | None

    @property
    def active(self) -> bool:
        return self.revoked is None

    def to_json(self) -> dict:
        return {"name": self.name, "role": self.role, "created": self.created, "created_by": self.created_by,
                "revoked": self.revoked, "revoked_by": self.revoked_by}


_COLUMNS = "id, name, role, created, created_by, revoked, revoked_by"


class OperatorStore(Store):
    async def add(self, name: str, role: str, token_hash: bytes, created_by: str) -> OperatorRow:
        try:
            async with self._lock, self._transaction() as db:
                async with db.execute(
                    f"INSERT INTO operators (name, role, token_hash, created, created_by) VALUES (?, ?, ?, ?, ?)"
                    f" RETURNING {_COLUMNS}", (name, role, token_hash, now_iso(), created_by),
                ) as cur:
                    return OperatorRow(*await cur.fetchone())
        except sqlite3.IntegrityError as exc:
            if "token_hash" in str(exc):
                raise  # a 256-bit collision: not an operator error
            raise OperatorExists(name) from None

    async def by_hash(self, token_hash: bytes) -> tuple[OperatorRow, bytes] | None:
        """The operator holding the token with this hash, and the stored hash (compared by the caller)."""
        async with self._reading(f"SELECT {_COLUMNS}, token_hash FROM operators WHERE token_hash = ?",
                                 (token_hash,)) as cur:
            row = await cur.fetchone()
        return (OperatorRow(*row[:-1]), bytes(row[-1])) if row else None

    async def by_name(self, name: str) -> OperatorRow | None:
        async with self._reading(f"SELECT {_COLUMNS} FROM operators WHERE name = ?", (name,)) as cur:
            row = await cur.fetchone()
        return OperatorRow(*row) if row else None

    async def all(self) -> list[OperatorRow]:
        async with self._reading(f"SELECT {_COLUMNS} FROM operators ORDER BY id") as cur:
            return [OperatorRow(*r) for r in await cur.fetchall()]

    async def active_admins(self) -> int:
        async with self._reading("SELECT count(*) FROM operators WHERE role = 'admin' AND revoked IS NULL") as cur:
            (n,) = await cur.fetchone()
        return n

    async def revoke(self, name: str, revoked_by: str) -> bool:
        """Revoke `name`'s token; False when there is no such active operator."""
        return await self._write("UPDATE operators SET revoked = ?, revoked_by = ? WHERE name = ? AND revoked IS NULL",
                                 (now_iso(), revoked_by, name)) == 1

    # -- the admin page's sessions ---------------------------------------------------------------
    async def open_session(self, id_hash: bytes, operator: str, csrf: str, expires: str) -> None:
        await self._write("INSERT INTO desk_sessions (id_hash, operator, csrf, created, expires) VALUES (?, ?, ?, ?, ?)",
                          (id_hash, operator, csrf, now_iso(), expires))

    async def session(self, id_hash: bytes) -> tuple[OperatorRow, str, str] | None:
        """(the operator, the session's CSRF token, its expiry) of a session not signed out."""
        async with self._reading(
            f"SELECT {', '.join('o.' + c.strip() for c in _COLUMNS.split(','))}, s.csrf, s.expires"
            " FROM desk_sessions s JOIN operators o ON o.name = s.operator WHERE s.id_hash = ? AND s.ended IS NULL",
            (id_hash,),
        ) as cur:
            row = await cur.fetchone()
        return (OperatorRow(*row[:-2]), row[-2], row[-1]) if row else None

    async def end_session(self, id_hash: bytes) -> None:
        await self._write("UPDATE desk_sessions SET ended = ? WHERE id_hash = ? AND ended IS NULL", (now_iso(), id_hash))
