"""Validation of `fm.plyr.track` records against plyr.fm's published lexicon.

The constraints are those of `lexicons/track.json` in github.com/zzstoatzz/plyr.fm (last changed
in b18e821e, 2026-07-16), quoted beside each check. Lengths follow atproto's rules
(atproto.com/specs/lexicon): a string's `minLength`/`maxLength` count UTF-8 bytes and its
`minGraphemes`/`maxGraphemes` count extended grapheme clusters (Unicode UAX #29, the `regex`
module's `\\X`); an array's `maxLength` counts items. track.json declares no grapheme limit
today; `string_problems` applies one wherever a lexicon does.

Records come from strangers' repositories: every field is checked for type and size, and
the first problems found are returned as readable strings (empty list = valid). Fields the
lexicon does not declare are allowed, as atproto's open records require.
"""

from __future__ import annotations

import re
from datetime import datetime

import regex

from firehose_mod.syntax import is_did, is_handle

MAX_RECORD_BYTES = 1_000_000  # a record this large is not a track, whatever it claims
MAX_INTEGER = 2**63 - 1  # atproto's data model: integers are signed 64-bit
_GRAPHEME = regex.compile(r"\X")
_URI = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*:\S+")


def grapheme_count(text: str) -> int:
    """Extended grapheme clusters in `text`: what a reader sees as one character (👩‍👩‍👧 is one)."""
    return sum(1 for _ in _GRAPHEME.finditer(text))


def string_problems(key: str, value: object, *, min_length: int = 0, max_length: int | None = None,
                    min_graphemes: int = 0, max_graphemes: int | None = None) -> list[str]:
    """A lexicon `string`'s problems: lengths in UTF-8 bytes, graphemes in grapheme clusters."""
    if not isinstance(value, str):
        return [f"{key}: expected string, got {type(value).__name__}"]
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:  # a lone surrogate: JSON allows it, atproto strings do not
        return [f"{key}: not valid Unicode"]
    problems = []
    if size < min_length:
        problems.append(f"{key}: {size} bytes < minLength {min_length}")
    if max_length is not None and size > max_length:
        problems.append(f"{key}: {size} bytes > maxLength {max_length}")
    # A grapheme is one code point or more: with no more code points than the limit, no need to count.
    if min_graphemes or (max_graphemes is not None and len(value) > max_graphemes):
        graphemes = grapheme_count(value)
        if graphemes < min_graphemes:
            problems.append(f"{key}: {graphemes} graphemes < minGraphemes {min_graphemes}")
        if max_graphemes is not None and graphemes > max_graphemes:
            problems.append(f"{key}: {graphemes} graphemes > maxGraphemes {max_graphemes}")
    return problems


def validate_track(record: object) -> list[str]:
    """Problems of an `fm.plyr.track` record; an empty list means it follows the lexicon."""
    if not isinstance(record, dict):
        return [f"record: expected an object, got {type(record).__name__}"]
    problems: list[str] = []
    # "required": ["title", "artist", "fileType", "createdAt"]
    problems += [f"{key}: required" for key in ("title", "artist", "fileType", "createdAt") if key not in record]
    strings = {  # key: (minLength, maxLength), as track.json declares them
        "title": (1, 256), "artist": (1, 256), "fileType": (1, 16), "album": (0, 256), "description": (0, 5000),
    }
    for key, (low, high) in strings.items():
        if key in record:
            problems += string_problems(key, record[key], min_length=low, max_length=high)
    for key in ("audioUrl", "imageUrl"):  # "format": "uri"
        if key in record and not _is_uri(record[key]):
            problems.append(f"{key}: expected a URI")
    if "createdAt" in record:  # "format": "datetime"
        problems += _datetime_problems("createdAt", record["createdAt"])
    if "duration" in record:  # "type": "integer", "minimum": 0
        d = record["duration"]
        if isinstance(d, bool) or not isinstance(d, int) or not 0 <= d <= MAX_INTEGER:
            problems.append(f"duration: expected an integer >= 0 (seconds), got {str(d)[:40]!r}")
    if "audioBlob" in record:  # "accept": ["audio/*"], "maxSize": 104857600
        problems += _blob_problems("audioBlob", record["audioBlob"], accept_prefix="audio/", max_size=104_857_600)
    if "features" in record:  # array of #featuredArtist, "maxLength": 10
        problems += _features_problems(record["features"])
    if "labels" in record:  # union of com.atproto.label.defs#selfLabels
        problems += _self_labels_problems(record["labels"])
    if "supportGate" in record:  # #supportGate: {"required": ["type"], "type": string}
        gate = record["supportGate"]
        if not isinstance(gate, dict) or not isinstance(gate.get("type"), str):
            problems.append("supportGate: expected an object with a type string")
    return problems[:10]


def blocking_problems(record: object) -> list[str]:
    """The problems that keep a record from being scanned: `validate_track`'s, except two that
    plyr.fm's own indexer (`backend/utilities/lexicon.py`) lets through, so that such tracks are
    published; dropping them here would let them dodge the labeler:

    - strings over their maxLength in UTF-8 bytes but not in code points (the indexer uses
      `len()`): a 100-character Japanese title (300 bytes) is scanned like any other; a string
      over the limit in code points too is still refused;
    - an `audioBlob` whose declared mimeType is not `audio/*`: a PDS names a blob by sniffing
      its bytes and refuses a record that declares another type, so an audio-only MP4 (an .m4a
      with the `isom` brand) or WebM (a browser recording) is `video/mp4` or `video/webm`, and
      audio it cannot sniff is `application/octet-stream`, in records the reference PDS
      accepted; the indexer does not check blob types. Such a record's text and cover are
      scanned like any other; the fetcher decides about its audio (`scan/media.py`: a video
      container or octet-stream is fetched and decoded, any other type is reported as
      media-unavailable evidence, not fetched). The blob must still be a blob (ref, size)."""
    return [p for p in validate_track(record)
            if not _over_in_bytes_only(p, record) and not p.startswith("audioBlob: mimeType ")]


def _over_in_bytes_only(problem: str, record: object) -> bool:
    key, _, rest = problem.partition(": ")
    if not rest.endswith(tuple(f"> maxLength {n}" for n in (16, 256, 5000))) or "bytes" not in rest:
        return False
    value = record.get(key) if isinstance(record, dict) else None
    limit = int(rest.rsplit(" ", 1)[1])
    return isinstance(value, str) and len(value) <= limit


def _is_uri(value: object) -> bool:
    return isinstance(value, str) and 1 <= len(value) <= 8192 and _URI.fullmatch(value) is not None


def _datetime_problems(key: str, value: object) -> list[str]:
    if not isinstance(value, str) or len(value) > 64:
        return [f"{key}: expected a datetime string"]
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return [f"{key}: not an RFC 3339 datetime: {value[:40]!r}"]
    if dt.tzinfo is None:
        return [f"{key}: datetime without timezone: {value[:40]!r}"]
    return []


def _blob_problems(key: str, blob: object, *, accept_prefix: str, max_size: int) -> list[str]:
    if not isinstance(blob, dict):
        return [f"{key}: expected a blob object"]
    if "cid" in blob and "ref" not in blob and blob.get("$type") != "blob":  # legacy blob form {cid, mimeType}
        return [] if isinstance(blob.get("cid"), str) else [f"{key}: legacy blob without a cid string"]
    if blob.get("$type") != "blob" and "ref" not in blob:
        return [f"{key}: not a blob"]
    problems = []
    ref = blob.get("ref")
    link = ref.get("$link") if isinstance(ref, dict) else ref
    if not isinstance(link, str) or not link:
        problems.append(f"{key}: blob without a ref CID")
    mime = blob.get("mimeType")
    if not isinstance(mime, str) or not mime.startswith(accept_prefix):
        problems.append(f"{key}: mimeType {str(mime)[:40]!r} is not {accept_prefix}*")
    size = blob.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= max_size:
        problems.append(f"{key}: size {size!r} outside 0..maxSize {max_size}")
    return problems


def _features_problems(features: object) -> list[str]:
    if not isinstance(features, list) or len(features) > 10:
        return ["features: expected a list of at most 10"]
    problems = []
    for i, f in enumerate(features):
        # #featuredArtist: "required": ["did"]; did "format": "did", handle "format": "handle",
        # displayName "maxLength": 256
        if not isinstance(f, dict) or not is_did(f.get("did")):
            problems.append(f"features[{i}]: expected {{did, handle?, displayName?}} with a valid DID")
            continue
        if "handle" in f and not is_handle(f["handle"]):
            problems.append(f"features[{i}].handle: not a handle")
        if "displayName" in f:
            problems += string_problems(f"features[{i}].displayName", f["displayName"], max_length=256)
    return problems


def _self_labels_problems(labels: object) -> list[str]:
    # com.atproto.label.defs#selfLabels: values "maxLength": 10; #selfLabel: val "maxLength": 128
    values = labels.get("values") if isinstance(labels, dict) else None
    if not isinstance(values, list) or len(values) > 10:
        return ["labels: expected com.atproto.label.defs#selfLabels {values: [{val}]} (at most 10)"]
    problems = []
    for i, v in enumerate(values):
        if not isinstance(v, dict) or "val" not in v:
            problems.append(f"labels.values[{i}]: expected {{val: string}}")
        else:
            problems += string_problems(f"labels.values[{i}].val", v["val"], max_length=128)
    return problems
