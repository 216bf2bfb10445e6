"""atproto identifier syntax, checked in one place: DIDs and at:// URIs as this labeler accepts them.

atproto uses two DID methods: `did:plc:` followed by 24 characters of base32 (a-z, 2-7), and
`did:web:` followed by a hostname (a port only as `%3A`, for local testing). An at:// URI here
names an account (`at://DID`), a collection or a record (`at://DID/NSID/RKEY`), always by DID.
"""

from __future__ import annotations

import re

_PLC = re.compile(r"did:plc:[a-z2-7]{24}")
_WEB = re.compile(r"did:web:[A-Za-z0-9.-]{1,253}(%3[Aa][0-9]{1,5})?")
_NSID = re.compile(r"[a-zA-Z]([a-zA-Z0-9-]{0,62})?(\.[a-zA-Z0-9]([a-zA-Z0-9-]{0,62})?)+")
_RKEY = re.compile(r"[A-Za-z0-9._:~-]{1,512}")
EXAMPLE_DID = "did:plc:ewvi7nxzyoun6zhxrhs64oiz"


class IdentifierError(ValueError):
    """A DID or at:// URI that atproto does not accept; the message shows the expected form."""


def check_did(did: str, *, what: str = "DID") -> str:
    """Return `did` if it is a did:plc or did:web atproto can use; else raise IdentifierError."""
    if isinstance(did, str) and (_PLC.fullmatch(did) or _WEB.fullmatch(did)):
        return did
    shown = repr(str(did)[:100])
    if isinstance(did, str) and did.startswith("did:plc:"):
        why = f"a did:plc is did:plc: and 24 characters of a-z and 2-7 ({len(did) - 8} given), e.g. {EXAMPLE_DID}"
    elif isinstance(did, str) and did.startswith("did:web:"):
        why = "a did:web is did:web: and a hostname, e.g. did:web:labeler.example"
    else:
        why = f"expected did:plc:<24 characters of a-z, 2-7> (e.g. {EXAMPLE_DID}) or did:web:<hostname>"
    raise IdentifierError(f"{what} {shown} is not a valid DID: {why}")


def check_at_uri(uri: str, *, record: bool = False, what: str = "URI") -> str:
    """Return `uri` if it is at://DID[/NSID[/RKEY]] (with `record`: exactly a record's); else raise."""
    form = "at://DID/COLLECTION/RKEY" if record else "at://DID or at://DID/COLLECTION/RKEY"
    if not isinstance(uri, str) or not uri.startswith("at://"):
        raise IdentifierError(f"{what} {str(uri)[:100]!r} is not an at:// URI: expected {form}")
    parts = uri[len("at://"):].split("/")
    check_did(parts[0], what=f"{what} {uri[:100]!r}: its")
    if (record and len(parts) != 3) or len(parts) > 3:
        raise IdentifierError(f"{what} {uri[:100]!r}: expected {form}")
    if len(parts) > 1 and not _NSID.fullmatch(parts[1]):
        raise IdentifierError(f"{what} {uri[:100]!r}: {parts[1][:100]!r} is not a collection NSID (e.g. fm.plyr.track)")
    if len(parts) > 2 and (not _RKEY.fullmatch(parts[2]) or parts[2] in (".", "..")):
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
