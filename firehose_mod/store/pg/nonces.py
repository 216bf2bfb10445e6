"""Service-auth JWT nonces on PostgreSQL: store/nonces.py's `NonceStore`, shared by processes.

Each issuer's `jti` is accepted once until it expires, whichever process sees it. `remember`
is one INSERT ... ON CONFLICT: when two processes race on one jti, PostgreSQL makes the second
wait on the first's row and then finds it (not expired), so exactly one of them gets True.
"""

from __future__ import annotations

from firehose_mod.store.nonces import _now
from firehose_mod.store.pg.pool import PgPoolStore
from firehose_mod.store.pg.scan_queue import rowcount

__all__ = ["PgNonceStore"]


class PgNonceStore(PgPoolStore):
    """The `service_auth_nonces` table, written by `server.service_auth.ServiceAuthVerifier`."""

    APPLICATION = "firehose-mod nonces"

    async def remember(self, iss: str, jti: str, exp: int, *, now: int | None = None) -> bool:
        """Record `jti` of `iss` until `exp`; False when it is already recorded and not expired."""
        now = _now() if now is None else now
        return rowcount(await self._pool.execute(
            "INSERT INTO service_auth_nonces (iss, jti, exp) VALUES ($1, $2, $3)"
            " ON CONFLICT (iss, jti) DO UPDATE SET exp = excluded.exp WHERE service_auth_nonces.exp < $4",
            iss, jti, int(exp), now)) > 0

    async def prune(self, *, now: int | None = None) -> int:
        """Delete the rows expired before `now`; how many went."""
        now = _now() if now is None else now
        return rowcount(await self._pool.execute("DELETE FROM service_auth_nonces WHERE exp < $1", now))

    async def count(self) -> int:
        return await self._pool.fetchval("SELECT count(*) FROM service_auth_nonces")
