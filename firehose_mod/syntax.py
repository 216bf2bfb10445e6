"""atproto identifier syntax, checked in one place: DIDs, NSIDs, record keys, TIDs, handles, at:// URIs.

Every decoder, the lexicon check, the configuration and the CLI use these; nothing else keeps
a regular expression for an identifier. The rules are the specs' (atproto.com/specs/did,
/nsid, /record-key, /tid, /handle, /at-uri):

- a DID in general (lexicon `format: did`) is `did:METHOD:ID`, METHOD lower-case letters, ID
  of letters, digits and `._:%-`, not ending in `:` or `%`, at most 2048 characters;
- atproto uses two methods (`is_atproto_did`, `check_did`, and what this labeler accepts for a
  repository): `did:plc:` followed by 24 characters of base32 (a-z, 2-7), and `did:web:`
  followed by a hostname (a port only as `%3A`, for local testing);
- an NSID is a reversed domain of at least two segments and a name of letters and digits
  that starts with a letter: at least 3 segments, at most 317 characters;
- a record key is 1-512 characters of letters, digits and `._:~-`, never `.` or `..`;
- a TID (record key type `tid`) is 13 characters of base32-sortable (`234567a-z`), the first
  from `234567a-j` (the top bit is 0);
- an at:// URI here names an account (`at://DID`), a collection or a record
  (`at://DID/NSID/RKEY`), always by DID.
"""

from __future__ import annotations

import re

_DID = re.compile(r"did:[a-z]+:[a-zA-Z0-9._:%-]*[a-zA-Z0-9._-]")
_PLC = re.compile(r"did:plc:[a-z2-7]{24}")
_WEB = re.compile(r"did:web:[A-Za-z0-9.-]{1,253}(%3[Aa][0-9]{1,5})?")
_NSID = re.compile(r"[a-zA-Z]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?(\.[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?)+"
                   r"\.[a-zA-Z][a-zA-Z0-9]{0,62}")
_RKEY = re.compile(r"[A-Za-z0-9._:~-]{1,512}")
_TID = re.compile(r"[234567abcdefghij][234567abcdefghijklmnopqrstuvwxyz]{12}")
_HANDLE = re.compile(r"([a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?\.)+[a-zA-Z]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?")
MAX_DID = 2048
MAX_NSID = 317
MAX_HANDLE = 253
EXAMPLE_DID = "did:plc:ewvi7nxzyoun6zhxrhs64oiz"


class IdentifierError(ValueError):
    """A DID or at:// URI that atproto does not accept; the message shows the expected form."""


def is_did(value: object) -> bool:
    """Generic DID syntax (lexicon `format: did`), whatever the method."""
    return isinstance(value, str) and len(value) <= MAX_DID and _DID.fullmatch(value) is not None


def is_atproto_did(value: object) -> bool:
    """A did:plc or did:web: the DIDs atproto repositories have, and the only ones we accept for them."""
    return isinstance(value, str) and (_PLC.fullmatch(value) is not None or _WEB.fullmatch(value) is not None)


def is_nsid(value: object) -> bool:
    return isinstance(value, str) and len(value) <= MAX_NSID and _NSID.fullmatch(value) is not None


def is_rkey(value: object) -> bool:
    return isinstance(value, str) and _RKEY.fullmatch(value) is not None and value not in (".", "..")


def is_tid(value: object) -> bool:
    return isinstance(value, str) and _TID.fullmatch(value) is not None


def is_handle(value: object) -> bool:
    return isinstance(value, str) and len(value) <= MAX_HANDLE and _HANDLE.fullmatch(value) is not None


def check_did(did: str, *, what: str = "DID") -> str:
    """Return `did` if it is a did:plc or did:web atproto can use; else raise IdentifierError."""
    if is_atproto_did(did):
        return did
    shown = repr(str(did)[:100])
    if isinstance(did, str) and did.startswith("did:plc:"):
        why = f"a did:plc is did:plc: and 24 characters of a-z and 2-7 ({len(did) - 8} given), e.g. {EXAMPLE_DID}"
    elif isinstance(did, str) and did.startswith("did:web:"):
        why = "a did:web is did:web: and a hostname, e.g. did:web:labeler.example"
    else:
        why = f"expected did:plc:<24 characters of a-z, 2-7> (e.g. {EXAMPLE_DID}) or did:web:<hostname>"
    raise IdentifierError(f"{what} {shown} is not a valid DID: {why}")


def check_nsid(nsid: str, *, what: str = "NSID") -> str:
    """Return `nsid` if it is a valid NSID; else raise IdentifierError."""
    if is_nsid(nsid):
        return nsid
    raise IdentifierError(f"{what} {str(nsid)[:100]!r} is not an NSID: expected a reversed domain and a name,"
                          " e.g. fm.plyr.track")


def check_collection_pattern(pattern: str, *, what: str = "collection") -> str:
    """An NSID, or an NSID prefix such as `fm.plyr.*` (Jetstream's `wantedCollections` form)."""
    if isinstance(pattern, str) and pattern.endswith(".*"):
        if is_nsid(pattern[:-2] + ".x"):  # the prefix is an NSID's authority (and maybe more)
            return pattern
        raise IdentifierError(f"{what} {pattern[:100]!r} is not an NSID prefix (e.g. fm.plyr.*)")
    return check_nsid(pattern, what=what)


def check_at_uri(uri: str, *, record: bool = False, what: str = "URI") -> str:
    """Return `uri` if it is at://DID[/NSID[/RKEY]] (with `record`: exactly a record's); else raise."""
    form = "at://DID/COLLECTION/RKEY" if record else "at://DID or at://DID/COLLECTION/RKEY"
    if not isinstance(uri, str) or not uri.startswith("at://"):
        raise IdentifierError(f"{what} {str(uri)[:100]!r} is not an at:// URI: expected {form}")
    parts = uri[len("at://"):].split("/")
    check_did(parts[0], what=f"{what} {uri[:100]!r}: its")
    if (record and len(parts) != 3) or len(parts) > 3:
        raise IdentifierError(f"{what} {uri[:100]!r}: expected {form}")
    if len(parts) > 1 and not is_nsid(parts[1]):
        raise IdentifierError(f"{what} {uri[:100]!r}: {parts[1][:100]!r} is not a collection NSID (e.g. fm.plyr.track)")
    if len(parts) > 2 and not is_rkey(parts[2]):
        raise IdentifierError(f"{what} {uri[:100]!r}: {parts[2][:100]!r} is not a record key")
    return uri


def check_subject(subject: str, *, what: str = "subject") -> str:
    """A label's or an explanation's subject: a DID, or an at:// URI naming one by DID."""
    if isinstance(subject, str) and subject.startswith("did:"):
        return check_did(subject, what=what)
    if isinstance(subject, str) and subject.startswith("at://"):
        return check_at_uri(subject, what=what)
    raise IdentifierError(f"{what} {str(subject)[:100]!r} is neither an at:// URI nor a DID"
                          f" (e.g. at://{EXAMPLE_DID}/fm.plyr.track/3kabc or {EXAMPLE_DID})")
