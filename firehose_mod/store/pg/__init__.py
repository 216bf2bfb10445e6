"""The PostgreSQL backend (FIREHOSE_MOD_DATABASE_URL=postgresql://...): the label log shared by
several processes. Every PostgreSQL statement lives in this package."""

from firehose_mod.store.pg.label_log import DatabaseUnreachable, PgLabelLog
from firehose_mod.store.pg.schema import SCHEMA_VERSION

__all__ = ["SCHEMA_VERSION", "DatabaseUnreachable", "PgLabelLog"]
