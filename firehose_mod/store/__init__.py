"""Every SQL statement of firehose-mod lives in this package; nothing else opens the database."""

from firehose_mod.store.db import SchemaError, open_db
from firehose_mod.store.label_log import EmitRequest, LabelLog, StoredLabel

__all__ = ["EmitRequest", "LabelLog", "SchemaError", "StoredLabel", "open_db"]
