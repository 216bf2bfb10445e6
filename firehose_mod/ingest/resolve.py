"""DID -> PDS resolution: did:plc through a PLC directory, did:web through /.well-known/did.json.

DID documents are user input: a missing document, a document without an `#atproto_pds`
service, or an endpoint that is not an http(s) URL is a `ResolveError` whose message says
which DID and what is wrong. Network failures and 5xx answers are `ResolveError`s with
`transient=True`, so a caller can retry them; the others will not fix themselves.

The HTTP client given to `DidResolver` should be `netguard.outbound_client(settings)`: a did:web
host and the PDS a document names are addresses a stranger chooses, so every connection (the
PLC directory's too) is vetted, and a refused address (loopback, private, link-local...) is a
permanent `ResolveError` raised before anything is sent.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from urllib.parse import unquote, urlsplit

import httpx
import structlog

from firehose_mod.scan.netguard import UnsafeAddress
from firehose_mod.syntax import is_atproto_did

log = structlog.get_logger(__name__)

MAX_DOC_BYTES = 256 * 1024


class ResolveError(Exception):
    """A DID that cannot be resolved to a PDS; `transient` means a retry may succeed."""

    def __init__(self, message: str, *, transient: bool = False):
        super().__init__(message)
        self.transient = transient


def check_did(did: str) -> str:
    """Return `did` if it is a did:plc or did:web atproto can use; else raise ResolveError."""
    if not is_atproto_did(did):
        raise ResolveError(
            f"bad DID {str(did)[:100]!r}: expected did:plc:<24 base32 chars> or did:web:<hostname>"
        )
    return did


def _https_base(host: str) -> str:
    return f"https://{host}"


def document_entries(did: str, doc: object, field: str, fragment: str) -> list[dict]:
    """The entries of `doc[field]` whose id is `fragment` (or ends with it), after checking the
    document is an object about `did` (pure; raises ResolveError)."""
    if not isinstance(doc, dict):
        raise ResolveError(f"{did}: DID document is not a JSON object")
    if doc.get("id") not in (None, did):
        raise ResolveError(f"{did}: DID document is for {str(doc.get('id'))[:100]!r}, not this DID")
    entries = doc.get(field)
    return [e for e in (entries if isinstance(entries, list) else [])
            if isinstance(e, dict) and isinstance(e.get("id"), str) and e["id"].endswith(fragment)]


def pds_from_document(did: str, doc: object) -> str:
    """The `#atproto_pds` service endpoint of a DID document (pure; raises ResolveError)."""
    for service in document_entries(did, doc, "service", "#atproto_pds"):
        if service.get("type") != "AtprotoPersonalDataServer":
            continue
        endpoint = service.get("serviceEndpoint")
        if not isinstance(endpoint, str):
            raise ResolveError(f"{did}: #atproto_pds service has no serviceEndpoint string")
        url = urlsplit(endpoint)
        if url.scheme not in ("https", "http") or not url.hostname:
            raise ResolveError(f"{did}: #atproto_pds endpoint {endpoint[:200]!r} is not an http(s) URL")
        return endpoint.rstrip("/")
    raise ResolveError(
        f"{did}: DID document has no #atproto_pds service of type AtprotoPersonalDataServer "
        "(the account has no PDS to read records from)"
    )


class DidResolver:
    """Resolves DIDs to their PDS endpoint, caching answers for `ttl` seconds.

    `web_base(host)` gives the base URL a did:web document is fetched under
    (default `https://host`); tests point it at a local server.
    """

    def __init__(self, client: httpx.AsyncClient, plc_url: str = "https://plc.directory", ttl: float = 3600,
                 *, web_base: Callable[[str], str] | None = None, clock: Callable[[], float] = time.monotonic):
        self.client = client
        self.plc_url = plc_url.rstrip("/")
        self.ttl = ttl
        self.web_base = web_base or _https_base
        self._clock = clock
        self._cache: dict[str, tuple[float, str]] = {}
        self.stats = {"lookups": 0, "cache_hits": 0}

    async def resolve_pds(self, did: str) -> str:
        """The PDS base URL (no trailing slash) of `did`; raises ResolveError."""
        check_did(did)
        hit = self._cache.get(did)
        if hit is not None and hit[0] > self._clock():
            self.stats["cache_hits"] += 1
            return hit[1]
        pds = pds_from_document(did, await self._document(did))
        self._cache[did] = (self._clock() + self.ttl, pds)
        log.debug("resolve.pds", did=did, pds=pds)
        return pds

    def forget(self, did: str) -> None:
        """Drop a cached answer (e.g. after the PDS said the repo is not there)."""
        self._cache.pop(did, None)

    def _document_url(self, did: str) -> str:
        if did.startswith("did:plc:"):
            return f"{self.plc_url}/{did}"
        host = unquote(did.removeprefix("did:web:"))
        return f"{self.web_base(host).rstrip('/')}/.well-known/did.json"

    async def _document(self, did: str) -> object:
        url = self._document_url(did)
        self.stats["lookups"] += 1
        try:
            resp = await self.client.get(url, headers={"accept": "application/did+ld+json, application/json"})
        except UnsafeAddress as exc:  # permanent: the document's host will not become public
            raise ResolveError(f"{did}: cannot fetch DID document from {url[:200]}: {exc}"[:500]) from None
        except httpx.HTTPError as exc:
            raise ResolveError(f"{did}: cannot fetch DID document from {url}: {type(exc).__name__}: {exc}"[:500],
                               transient=True) from None
        if resp.status_code in (404, 410):
            raise ResolveError(f"{did}: DID not found ({url} answered {resp.status_code})")
        if resp.status_code >= 500 or resp.status_code == 429:
            raise ResolveError(f"{did}: {url} answered HTTP {resp.status_code}", transient=True)
        if resp.status_code != 200:
            raise ResolveError(f"{did}: {url} answered HTTP {resp.status_code}: {resp.text[:200]!r}")
        if len(resp.content) > MAX_DOC_BYTES:
            raise ResolveError(f"{did}: DID document of {len(resp.content)} bytes is too large")
        try:
            return resp.json()
        except ValueError:
            raise ResolveError(f"{did}: {url} did not return a JSON DID document") from None
