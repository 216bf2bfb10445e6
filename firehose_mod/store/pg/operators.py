"""Operators and agents on PostgreSQL: store/operators.py's `OperatorStore`, shared by processes.

The same methods and rules (read store/operators.py's docstring): rows are never deleted and
a revocation is final (triggers, migration 3 of store/pg/schema.py). A revocation is one
UPDATE, so once it commits every process's next token check (`by_hash`) sees it.
"""

from __future__ import annotations

import asyncpg

from firehose_mod.labels.model import now_iso
from firehose_mod.store.operators import _COLUMNS, OperatorExists, OperatorRow
from firehose_mod.store.pg.pool import PgPoolStore
from firehose_mod.store.pg.scan_queue import rowcount

__all__ = ["PgOperatorStore"]

_O_COLUMNS = ", ".join("o." + c.strip() for c in _COLUMNS.split(","))


class PgOperatorStore(PgPoolStore):
    """The `operators` and `desk_sessions` tables over a PostgreSQL database."""

    APPLICATION = "firehose-mod operators"

    async def add(self, name: str, role: str, token_hash: bytes, created_by: str) -> OperatorRow:
        try:
            row = await self._pool.fetchrow(
                f"INSERT INTO operators (name, role, token_hash, created, created_by) VALUES ($1, $2, $3, $4, $5)"
                f" RETURNING {_COLUMNS}", name, role, token_hash, now_iso(), created_by)
        except asyncpg.UniqueViolationError as exc:
            if "token_hash" in (exc.constraint_name or ""):
                raise  # a 256-bit collision: not an operator error
            raise OperatorExists(name) from None
        return OperatorRow(*row)

    async def by_hash(self, token_hash: bytes) -> tuple[OperatorRow, bytes] | None:
        """The operator holding the token with this hash, and the stored hash (compared by the caller)."""
        row = await self._pool.fetchrow(f"SELECT {_COLUMNS}, token_hash FROM operators WHERE token_hash = $1",
                                        token_hash)
        return (OperatorRow(*row[:-1]), bytes(row[-1])) if row else None

    async def by_name(self, name: str) -> OperatorRow | None:
        row = await self._pool.fetchrow(f"SELECT {_COLUMNS} FROM operators WHERE name = $1", name)
        return OperatorRow(*row) if row else None

    async def all(self) -> list[OperatorRow]:
        return [OperatorRow(*r) for r in await self._pool.fetch(f"SELECT {_COLUMNS} FROM operators ORDER BY id")]

    async def active_admins(self) -> int:
        return await self._pool.fetchval("SELECT count(*) FROM operators WHERE role = 'admin' AND revoked IS NULL")

    async def revoke(self, name: str, revoked_by: str) -> bool:
        """Revoke `name`'s token; False when there is no such active operator."""
        return rowcount(await self._pool.execute(
            "UPDATE operators SET revoked = $1, revoked_by = $2 WHERE name = $3 AND revoked IS NULL",
            now_iso(), revoked_by, name)) == 1

    # -- the admin page's sessions ---------------------------------------------------------------
    async def open_session(self, id_hash: bytes, operator: str, csrf: str, expires: str) -> None:
        await self._pool.execute(
            "INSERT INTO desk_sessions (id_hash, operator, csrf, created, expires) VALUES ($1, $2, $3, $4, $5)",
            id_hash, operator, csrf, now_iso(), expires)

    async def session(self, id_hash: bytes) -> tuple[OperatorRow, str, str] | None:
        """(the operator, the session's CSRF token, its expiry) of a session not signed out."""
        row = await self._pool.fetchrow(
            f"SELECT {_O_COLUMNS}, s.csrf, s.expires FROM desk_sessions s JOIN operators o ON o.name = s.operator"
            " WHERE s.id_hash = $1 AND s.ended IS NULL", id_hash)
        return (OperatorRow(*row[:-2]), row[-2], row[-1]) if row else None

    async def end_session(self, id_hash: bytes) -> None:
        await self._pool.execute("UPDATE desk_sessions SET ended = $1 WHERE id_hash = $2 AND ended IS NULL",
                                 now_iso(), id_hash)
