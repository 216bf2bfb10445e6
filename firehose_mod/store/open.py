"""Opening the stores of `settings`: the SQLite file, or PostgreSQL when `database_url` is set.
Each factory is an async context manager that closes the store, even in a cancelled scope;
`source_lock` picks the lock that makes one ingest process per database read the source."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from firehose_mod.config import Settings
from firehose_mod.store.backfill import BackfillStore
from firehose_mod.store.catalogue import CatalogueStore
from firehose_mod.store.db import close_shielded
from firehose_mod.store.decisions import DecisionStore
from firehose_mod.store.ingest import IngestStore
from firehose_mod.store.label_import import ImportStore
from firehose_mod.store.nonces import NonceStore
from firehose_mod.store.operators import OperatorStore
from firehose_mod.store.pg.backfill import PgBackfillStore
from firehose_mod.store.pg.catalogue import PgCatalogueStore
from firehose_mod.store.pg.ingest import PgIngestStore
from firehose_mod.store.pg.label_import import PgImportStore
from firehose_mod.store.pg.nonces import PgNonceStore
from firehose_mod.store.pg.operators import PgOperatorStore
from firehose_mod.store.pg.plyr_compat import PgPlyrStore
from firehose_mod.store.pg.reports import PgReportStore
from firehose_mod.store.pg.review import PgReviewStore
from firehose_mod.store.pg.review_decisions import PgDecisionStore
from firehose_mod.store.pg.transparency import PgTransparencyStore
from firehose_mod.store.plyr_compat import PlyrStore
from firehose_mod.store.reports import ReportStore
from firehose_mod.store.review import ReviewStore
from firehose_mod.store.source_lock import PgSourceLock, SourceLock
from firehose_mod.store.transparency import TransparencyStore

__all__ = ["open_backfill_store", "open_catalogue_store", "open_decision_store", "open_import_store", "open_ingest_store", "open_nonce_store",
           "open_operator_store", "open_plyr_store", "open_report_store", "open_review_store",
           "open_transparency_store", "source_lock"]


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


def open_transparency_store(settings: Settings, *, busy_wait: float | None = None
                            ) -> AbstractAsyncContextManager[TransparencyStore | PgTransparencyStore]:
    """Transparency summary batches, and reads of the moderation event log (`busy_wait` as for
    open_operator_store)."""
    return _opened(settings, TransparencyStore, PgTransparencyStore, busy_wait)


def open_plyr_store(settings: Settings, *, busy_wait: float | None = None
                    ) -> AbstractAsyncContextManager[PlyrStore | PgPlyrStore]:
    """plyr.fm compatibility's tables (`busy_wait` as for open_operator_store)."""
    return _opened(settings, PlyrStore, PgPlyrStore, busy_wait)


def open_backfill_store(settings: Settings, *, busy_wait: float | None = None
                        ) -> AbstractAsyncContextManager[BackfillStore | PgBackfillStore]:
    """Backfill progress, one row per repo (`busy_wait` as for open_operator_store)."""
    return _opened(settings, BackfillStore, PgBackfillStore, busy_wait)


def open_import_store(settings: Settings, *, busy_wait: float | None = None
                      ) -> AbstractAsyncContextManager[ImportStore | PgImportStore]:
    """Label imports from another labeler (`busy_wait` as for open_operator_store)."""
    return _opened(settings, ImportStore, PgImportStore, busy_wait)


def source_lock(settings: Settings, holder: str) -> SourceLock | PgSourceLock:
    """The lock that makes one ingest process per database read the source (store/source_lock.py)."""
    if settings.database_url:
        return PgSourceLock(settings.database_url, holder=holder)
    return SourceLock(settings.db_path, holder=holder)


def open_review_store(settings: Settings, *, busy_wait: float | None = None
                      ) -> AbstractAsyncContextManager[ReviewStore | PgReviewStore]:
    """The review desk's items, moderation events, triage calls, batches, notices and seen marks
    (`busy_wait` as for open_operator_store)."""
    return _opened(settings, ReviewStore, PgReviewStore, busy_wait)


@asynccontextmanager
async def open_decision_store(settings: Settings, *, busy_wait: float | None = None, readonly: bool = False
                              ) -> AsyncIterator[DecisionStore | PgDecisionStore]:
    """Decisions and the review queue's reads (`busy_wait` as for open_operator_store). `readonly`
    (a dry run): SQLite opens the file read-only; PostgreSQL keeps every transaction read-only
    and does not migrate."""
    if settings.database_url:
        store = await PgDecisionStore.open(settings.database_url, readonly=readonly)
    else:
        store = await DecisionStore.open(settings.db_path, synchronous=settings.db_synchronous, readonly=readonly,
                                         busy_wait=busy_wait)
    try:
        yield store
    finally:
        await close_shielded(store)


def open_catalogue_store(settings: Settings, *, busy_wait: float | None = None
                         ) -> AbstractAsyncContextManager[CatalogueStore | PgCatalogueStore]:
    """The copyright catalogue's rows: reference recordings and indexed uploads with their
    fingerprints (`busy_wait` as for open_operator_store). The index over them is each scan
    machine's own (scan/catalogue.py)."""
    return _opened(settings, CatalogueStore, PgCatalogueStore, busy_wait)
