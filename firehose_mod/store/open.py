"""Opening the stores of `settings`: the SQLite file, or PostgreSQL when `database_url` is set.
Each factory is an async context manager that closes the store, even in a cancelled scope;
`source_lock` picks the lock that makes one ingest process per database read the source."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from firehose_mod.config import Settings
from firehose_mod.store.db import close_shielded
from firehose_mod.store.ingest import IngestStore
from firehose_mod.store.nonces import NonceStore
from firehose_mod.store.operators import OperatorStore
from firehose_mod.store.pg.ingest import PgIngestStore
from firehose_mod.store.pg.nonces import PgNonceStore
from firehose_mod.store.pg.operators import PgOperatorStore
from firehose_mod.store.pg.reports import PgReportStore
from firehose_mod.store.reports import ReportStore
from firehose_mod.store.source_lock import PgSourceLock, SourceLock

__all__ = ["open_ingest_store", "open_nonce_store", "open_operator_store", "open_report_store", "source_lock"]


@asynccontextmanager
async def _opened(settings: Settings, sqlite_store, pg_store, busy_wait: float | None) -> AsyncIterator:
    if settings.database_url:
        store = await pg_store.open(settings.database_url)
    else:
        store = await sqlite_store.open(settings.db_path, synchronous=settings.db_synchronous, busy_wait=busy_wait)
    try:
        yield store
    finally:
        await close_shielded(store)


def open_operator_store(settings: Settings, *, busy_wait: float | None = None
                        ) -> AbstractAsyncContextManager[OperatorStore | PgOperatorStore]:
    """Operators and their admin-page sessions. `busy_wait` (SQLite only): give up waiting for
    another process's write lock after that many seconds (None: wait as long as it takes)."""
    return _opened(settings, OperatorStore, PgOperatorStore, busy_wait)


def open_nonce_store(settings: Settings, *, busy_wait: float | None = None
                     ) -> AbstractAsyncContextManager[NonceStore | PgNonceStore]:
    """Service-auth JWT nonces (`busy_wait` as for open_operator_store)."""
    return _opened(settings, NonceStore, PgNonceStore, busy_wait)


def open_report_store(settings: Settings, *, busy_wait: float | None = None
                      ) -> AbstractAsyncContextManager[ReportStore | PgReportStore]:
    """Reports and appeals as received (`busy_wait` as for open_operator_store)."""
    return _opened(settings, ReportStore, PgReportStore, busy_wait)


def open_ingest_store(settings: Settings, *, busy_wait: float | None = None
                      ) -> AbstractAsyncContextManager[IngestStore | PgIngestStore]:
    """Source cursors, tracks, the scan queue and dead letters (`busy_wait` as for open_operator_store)."""
    return _opened(settings, IngestStore, PgIngestStore, busy_wait)


def source_lock(settings: Settings, holder: str) -> SourceLock | PgSourceLock:
    """The lock that makes one ingest process per database read the source (store/source_lock.py)."""
    if settings.database_url:
        return PgSourceLock(settings.database_url, holder=holder)
    return SourceLock(settings.db_path, holder=holder)
