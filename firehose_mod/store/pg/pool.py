"""The small PostgreSQL stores' common part: a connection pool, opened (and migrated) once.

Each statement of those stores is one autocommit statement on a pooled connection, so store
instances in several processes share the tables with no lock of their own: PostgreSQL's row
locks and unique constraints settle every race (store/pg/nonces.py says how, for the nonces).
"""

from __future__ import annotations

from typing import Self

import asyncpg

from firehose_mod.store.pg.label_log import DatabaseUnreachable
from firehose_mod.store.pg.schema import migrate


class PgPoolStore:
    """A pool over the database at `url`; subclasses hold the SQL of one concern."""

    APPLICATION = "firehose-mod"  # application_name: who holds what, in pg_stat_activity
    CONNECTIONS = 2

    def __init__(self, pool: asyncpg.Pool):
        self._pool = pool

    @classmethod
    async def open(cls, url: str, *, connections: int | None = None) -> Self:
        """Connect (and migrate); DatabaseUnreachable names the server when we cannot."""
        settings = {"application_name": cls.APPLICATION}
        try:
            pool = await asyncpg.create_pool(url, min_size=1, max_size=connections or cls.CONNECTIONS,
                                             server_settings=settings)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise DatabaseUnreachable(url, exc) from exc
        try:
            async with pool.acquire() as conn:
                await migrate(conn)
        except BaseException:
            await pool.close()
            raise
        return cls(pool)

    async def close(self) -> None:
        await self._pool.close()
