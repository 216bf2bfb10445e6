"""Service-auth JWT nonces (SQL only): each issuer's `jti` is accepted once until it expires.

Rows live in `service_auth_nonces` (migration 11) so a restart does not reopen the replay
window. `exp` is the unix second after which the token can no longer be accepted (its `exp`
plus the clock skew the verifier allows); an expired row no longer counts and is pruned.
"""

from __future__ import annotations

import time

from firehose_mod.store.db import Store


def _now() -> int:
    return int(time.time())


class NonceStore(Store):
    """The `service_auth_nonces` table, written by `server.service_auth.ServiceAuthVerifier`."""

    async def remember(self, iss: str, jti: str, exp: int, *, now: int | None = None) -> bool:
        """Record `jti` of `iss` until `exp`; False when it is already recorded and not expired.

        One statement, so two requests racing with the same token cannot both get True.
        """
        now = _now() if now is None else now
        changed = await self._write(
            "INSERT INTO service_auth_nonces (iss, jti, exp) VALUES (?, ?, ?)"
            " ON CONFLICT (iss, jti) DO UPDATE SET exp = excluded.exp WHERE service_auth_nonces.exp < ?",
            (iss, jti, int(exp), now),
        )
        return changed > 0

    async def prune(self, *, now: int | None = None) -> int:
        """Delete the rows expired before `now`; how many went."""
        now = _now() if now is None else now
        return await self._write("DELETE FROM service_auth_nonces WHERE exp < ?", (now,))

    async def count(self) -> int:
        async with self._reading("SELECT count(*) FROM service_auth_nonces") as cur:
            return (await cur.fetchone())[0]
