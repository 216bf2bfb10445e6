"""Validation of `fm.plyr.track` records against plyr.fm's lexicon (lexicons/track.json).

Records come from strangers' repositories: every field is checked for type and size, and
the first problems found are returned as readable strings (empty list = valid).
"""

from __future__ import annotations

import re
from datetime import datetime

MAX_RECORD_BYTES = 1_000_000  # a record this large is not a track, whatever it claims
_DID_RE = re.compile(r"^did:[a-z]+:[a-zA-Z0-9._:%-]{1,2048}$")
_LABEL_VAL_RE = re.compile(r"^.{1,128}$", re.S)


def _graphemes(text: str) -> int:
    # Close enough for limits: code points (the lexicon counts graphemes, never more than these).
    return len(text)


def _string(record: dict, key: str, problems: list[str], *, required: bool, min_len: int = 0, max_len: int,
            max_graphemes: int | None = None) -> None:
    if key not in record:
        if required:
            problems.append(f"{key}: required")
        return
    value = record[key]
    if not isinstance(value, str):
        problems.append(f"{key}: expected string, got {type(value).__name__}")
        return
    if not min_len <= len(value.encode()) <= max_len:
        problems.append(f"{key}: length {len(value.encode())} bytes outside {min_len}..{max_len}")
    if max_graphemes is not None and _graphemes(value) > max_graphemes:
        problems.append(f"{key}: more than {max_graphemes} characters")


def _datetime(record: dict, key: str, problems: list[str], *, required: bool) -> None:
    if key not in record:
        if required:
            problems.append(f"{key}: required")
        return
    value = record[key]
    if not isinstance(value, str) or len(value) > 64:
        problems.append(f"{key}: expected a datetime string")
        return
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        problems.append(f"{key}: not an RFC 3339 datetime: {value[:40]!r}")
        return
    if dt.tzinfo is None:
        problems.append(f"{key}: datetime without timezone: {value[:40]!r}")


def _uri(record: dict, key: str, problems: list[str]) -> None:
    if key not in record:
        return
    value = record[key]
    if not isinstance(value, str) or not 1 <= len(value) <= 8192 or not re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:\S+$", value):
        problems.append(f"{key}: expected a URI")


def _blob(record: dict, key: str, problems: list[str], *, accept_prefix: str, max_size: int) -> None:
    if key not in record:
        return
    blob = record[key]
    if not isinstance(blob, dict):
        problems.append(f"{key}: expected a blob object")
        return
    if blob.get("$type") == "blob" or "ref" in blob:
        ref = blob.get("ref")
        link = ref.get("$link") if isinstance(ref, dict) else ref
        if not isinstance(link, str) or not link:
            problems.append(f"{key}: blob without a ref CID")
        mime = blob.get("mimeType")
        if not isinstance(mime, str) or not mime.startswith(accept_prefix):
            problems.append(f"{key}: mimeType {str(mime)[:40]!r} is not {accept_prefix}*")
        size = blob.get("size")
        if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= max_size:
            problems.append(f"{key}: size {size!r} outside 0..{max_size}")
    elif "cid" in blob:  # legacy blob form {cid, mimeType}
        if not isinstance(blob.get("cid"), str):
            problems.append(f"{key}: legacy blob without a cid string")
    else:
        problems.append(f"{key}: not a blob")


def validate_track(record: object) -> list[str]:
    """Problems of an `fm.plyr.track` record; an empty list means it follows the lexicon."""
    if not isinstance(record, dict):
        return [f"record: expected an object, got {type(record).__name__}"]
    problems: list[str] = []
    _string(record, "title", problems, required=True, min_len=1, max_len=256 * 4, max_graphemes=256)
    _string(record, "artist", problems, required=True, min_len=1, max_len=256 * 4, max_graphemes=256)
    _string(record, "fileType", problems, required=True, min_len=1, max_len=16)
    _datetime(record, "createdAt", problems, required=True)
    _uri(record, "audioUrl", problems)
    _uri(record, "imageUrl", problems)
    _blob(record, "audioBlob", problems, accept_prefix="audio/", max_size=100 * 1024 * 1024)
    _string(record, "album", problems, required=False, max_len=256 * 4, max_graphemes=256)
    _string(record, "description", problems, required=False, max_len=5000 * 4, max_graphemes=5000)
    if "duration" in record:
        d = record["duration"]
        if isinstance(d, bool) or not isinstance(d, int) or not 0 <= d <= 7 * 24 * 3600:
            problems.append(f"duration: expected whole seconds 0..604800, got {str(d)[:40]!r}")
    if "features" in record:
        _features(record["features"], problems)
    if "labels" in record:
        _self_labels(record["labels"], problems)
    return problems[:10]


def _features(features: object, problems: list[str]) -> None:
    if not isinstance(features, list) or len(features) > 10:
        problems.append("features: expected a list of at most 10")
        return
    for i, f in enumerate(features):
        if not isinstance(f, dict) or not isinstance(f.get("did"), str) or not _DID_RE.match(f["did"]):
            problems.append(f"features[{i}]: expected {{did, handle?, displayName?}} with a valid DID")
            continue
        for k in ("handle", "displayName"):
            if k in f and (not isinstance(f[k], str) or len(f[k]) > 640):
                problems.append(f"features[{i}].{k}: expected a short string")


def _self_labels(labels: object, problems: list[str]) -> None:
    values = labels.get("values") if isinstance(labels, dict) else None
    if not isinstance(values, list) or len(values) > 10:
        problems.append("labels: expected com.atproto.label.defs#selfLabels {values: [{val}]} (at most 10)")
        return
    for i, v in enumerate(values):
        if not isinstance(v, dict) or not isinstance(v.get("val"), str) or not _LABEL_VAL_RE.match(v["val"]):
            problems.append(f"labels.values[{i}]: expected {{val: string <= 128}}")
