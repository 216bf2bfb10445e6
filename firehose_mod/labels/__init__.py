"""Labels: the model, the signing keys and the wire encoding (pure functions)."""

from firehose_mod.labels.model import Label, LabelError, now_iso, validate_label_fields
from firehose_mod.labels.signing import SigningKey, verify_label

__all__ = ["Label", "LabelError", "SigningKey", "now_iso", "validate_label_fields", "verify_label"]
