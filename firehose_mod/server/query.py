"""`com.atproto.label.queryLabels`: parameter validation and the lexicon-shaped answer.

The answer is the current state of each matching (uri, val, src): the latest label, which
is a negation when the label was withdrawn, in seq order; `cursor` is the last seq of a
full page. Expired labels are still served: appviews enforce `exp`.

Anyone may ask, so each request's work is bounded: at most MAX_PATTERNS patterns, repeats and
patterns inside a broader prefix dropped before any SQL, and the SQL itself stopped when it
exceeds its `QueryBudget` (time and rows scanned) or the client goes away.
"""

from __future__ import annotations

from firehose_mod.server.xrpc import XrpcError
from firehose_mod.store import LabelLog
from firehose_mod.store.query import BudgetExceeded, QueryBudget, normalize_patterns

MAX_LIMIT = 250
DEFAULT_LIMIT = 50
MAX_PATTERNS = 100


class QueryStopped(XrpcError):
    """The query's SQL was stopped by its budget (`reason`: time or steps)."""

    def __init__(self, reason: str):
        super().__init__("InvalidRequest", f"this query needs more database work than one request may do ({reason}"
                                           " budget): narrow uriPatterns, or add sources")
        self.reason = reason


def int_param(params: dict, name: str, default: int | None, lo: int, hi: int) -> int | None:
    """The last value of integer parameter `name`, checked against [lo, hi]; `default` when absent or empty."""
    values = params.get(name)
    if not values or values[-1] == "":
        return default
    try:
        value = int(values[-1])
    except ValueError:
        raise XrpcError("InvalidRequest", f"{name} must be an integer, got {values[-1][:40]!r}") from None
    if not lo <= value <= hi:
        raise XrpcError("InvalidRequest", f"{name} must be between {lo} and {hi}, got {value}")
    return value


def _patterns(params: dict) -> list[str]:
    patterns = [p for p in params.get("uriPatterns", []) if p != ""]
    if not patterns:
        raise XrpcError("InvalidRequest", 'Params must have the property "uriPatterns" (e.g. uriPatterns=at://did:plc:x/*)')
    if len(patterns) > MAX_PATTERNS:
        raise XrpcError("InvalidRequest", f"at most {MAX_PATTERNS} uriPatterns per request")
    for p in patterns:
        if "*" in p[:-1]:
            raise XrpcError("InvalidRequest", f"pattern {p[:80]!r}: '*' is only allowed at the end")
    return normalize_patterns(patterns)


async def query_labels(label_log: LabelLog, params: dict[str, list[str]], budget: QueryBudget = QueryBudget()) -> dict:
    patterns = _patterns(params)
    sources = sorted({s for s in params.get("sources", []) if s != ""})
    for s in sources:
        if not s.startswith("did:"):
            raise XrpcError("InvalidRequest", f"sources must be DIDs, got {s[:80]!r}")
    limit = int_param(params, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
    cursor = int_param(params, "cursor", 0, 0, 2**53 - 1)
    try:
        rows = await label_log.query(patterns, sources, limit, cursor, budget)
    except BudgetExceeded as exc:
        raise QueryStopped(exc.reason) from None
    key = label_log.key
    # Labels signed before a key rotation are re-signed with the key the DID document has now.
    out: dict = {"labels": [(r.label if r.key_id == key.did_key else key.sign(r.label)).to_json() for r in rows]}
    if len(rows) == limit:
        out["cursor"] = str(rows[-1].seq)
    return out
