"""`com.atproto.label.queryLabels`: parameter validation and the lexicon-shaped answer.

The answer is the current state of each matching (uri, val, src): the latest label, which
is a negation when the label was withdrawn, in seq order; `cursor` is the last seq of a
full page. Expired labels are still served: appviews enforce `exp`.
"""

from __future__ import annotations

from firehose_mod.store import LabelLog

MAX_LIMIT = 250
DEFAULT_LIMIT = 50
MAX_PATTERNS = 100


class XrpcError(Exception):
    """A bad request parameter: HTTP 400 with `{error, message}`."""

    def __init__(self, error: str, message: str):
        super().__init__(message)
        self.error = error
        self.message = message


def _int_param(params: dict, name: str, default: int, lo: int, hi: int) -> int:
    values = params.get(name)
    if not values:
        return default
    try:
        value = int(values[-1])
    except ValueError:
        raise XrpcError("InvalidRequest", f"{name} must be an integer, got {values[-1][:40]!r}") from None
    if not lo <= value <= hi:
        raise XrpcError("InvalidRequest", f"{name} must be between {lo} and {hi}, got {value}")
    return value


async def query_labels(label_log: LabelLog, params: dict[str, list[str]]) -> dict:
    patterns = [p for p in params.get("uriPatterns", []) if p != ""]
    if not patterns:
        raise XrpcError("InvalidRequest", 'Params must have the property "uriPatterns" (e.g. uriPatterns=at://did:plc:x/*)')
    if len(patterns) > MAX_PATTERNS:
        raise XrpcError("InvalidRequest", f"at most {MAX_PATTERNS} uriPatterns per request")
    for p in patterns:
        if "*" in p[:-1]:
            raise XrpcError("InvalidRequest", f"pattern {p[:80]!r}: '*' is only allowed at the end")
    sources = [s for s in params.get("sources", []) if s != ""]
    for s in sources:
        if not s.startswith("did:"):
            raise XrpcError("InvalidRequest", f"sources must be DIDs, got {s[:80]!r}")
    limit = _int_param(params, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
    cursor = _int_param(params, "cursor", 0, 0, 2**53 - 1)
    rows = await label_log.query(patterns, sources, limit, cursor)
    key = label_log.key
    # Labels signed before a key rotation are re-signed with the key the DID document has now.
    out: dict = {"labels": [(r.label if r.key_id == key.did_key else key.sign(r.label)).to_json() for r in rows]}
    if len(rows) == limit:
        out["cursor"] = str(rows[-1].seq)
    return out
