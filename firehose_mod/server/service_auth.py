"""Verifying atproto inter-service auth JWTs (`Authorization: Bearer <jwt>`), e.g. on createReport.

Sources: the spec (bluesky-social/atproto-website `src/app/[locale]/specs/xrpc/en.mdx`,
"Inter-Service Authentication (JWT)"), bluesky-social/atproto `packages/xrpc-server/src/auth.ts`
(`verifyJwt`: error names, `typ` list, refetch on a bad signature), `packages/lex/lex-server/src/
service-auth.ts` (nbf, max age, nonce), `packages/crypto/src/{secp256k1,p256}/operations.ts`,
`packages/{pds,bsky}/src/auth-verifier.ts` (the `iss` fragment), and bluesky-social/indigo
`atproto/auth/jwt.go` + `jwt_signing.go`. The rules, in the order checked:

- no `Authorization: Bearer <jwt>`: MissingJwt (ozone/pds auth-verifier.ts); a token over 8 KiB
  or not three base64url JSON parts: BadJwt.
- header: JSON object with `alg` "ES256K" (secp256k1) or "ES256" (P-256), else BadJwt; `typ`
  must not be `at+jwt`, `refresh+jwt` or `dpop+jwt` (BadJwtType); `kid`, if present, must name
  the key the `iss` rule below picks (`#atproto`): the spec's new field, which we do not widen.
- payload: `iss` a did:plc/did:web, optionally `#fragment` (BadJwtIss); `aud` our DID, bare (what
  the reference PDS sends today) or `#atproto_labeler` (what the spec asks new software to send)
  (BadJwtAudience); `lxm` required and equal to the method (BadJwtLexiconMethod); `exp` a
  number, not past beyond `skew` (JwtExpired; the references allow 0 s (TS) or 5 s (indigo));
  `iat`/`nbf` not ahead beyond `skew` (JwtNotYetValid); `exp` and `iat` within `max_age` of now
  (JwtTooOld, lex-server's 5 min), so a nonce row never outlives a short window; `jti` required
  (the spec: "required"), at most 256 characters (BadJwt).
- signature: base64url of exactly 64 bytes r||s (DER refused, like indigo; the TS reference's
  `allowMalleableSig` would parse DER too), ECDSA-SHA256 over `header_b64.payload_b64`; high-S
  accepted (both references verify JWTs "malleable"/"lenient", though the crypto spec asks for
  low-S: replays are stopped by the jti, not by the signature bytes). `alg` must match the key's
  curve. The key is the issuer's `#atproto` verification method, or `#atproto_label` when `iss`
  ends in `#atproto_labeler` (pds/bsky auth-verifier). A signature that fails is retried once
  with a freshly fetched document (key rotation) before BadJwtSignature.
- an issuer whose key cannot be had (unknown DID, no such key, host refused by netguard):
  DidResolutionFailed (lex-server's name), `transient` when PLC/did:web could not be reached.
- replay: after the signature verifies, (issuer DID, jti) is recorded until exp + skew; a second
  use is NonceNotUnique (lex-server's name).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import httpx

from firehose_mod.ingest.resolve import DidResolver, ResolveError, check_did, document_entries
from firehose_mod.ingest.verify import signing_key_from_document
from firehose_mod.labels.signing import KeyError_, parse_did_key, verify_bytes
from firehose_mod.store.nonces import NonceStore

ALGS = {"ES256K": "secp256k1", "ES256": "p256"}
FORBIDDEN_TYP = frozenset({"at+jwt", "refresh+jwt", "dpop+jwt"})
MAX_TOKEN = 8192
MAX_JTI = 256
_B64URL = re.compile(r"[A-Za-z0-9_-]*")


class ServiceAuthError(Exception):
    """A refused token: `error` is the XRPC error name (answer 401 AuthRequired with it), `message`
    says why. `transient`: the issuer's DID document could not be fetched right now."""

    def __init__(self, error: str, message: str, *, transient: bool = False):
        super().__init__(f"{error}: {message}")
        self.error, self.message, self.transient = error, message, transient


@dataclass(frozen=True)
class ServiceCaller:
    did: str  # the issuer's DID, without a fragment
    service: str | None  # the `iss` fragment (e.g. "atproto_labeler"), or None
    jti: str
    exp: float


class KeyResolver(Protocol):
    async def signing_key(self, did: str, *, fresh: bool = False, key_id: str = "atproto") -> str: ...


def key_from_document(did: str, doc: object, key_id: str = "atproto") -> str:
    """The did:key of `doc`'s `#key_id` verification method (pure; ResolveError)."""
    if key_id == "atproto":
        return signing_key_from_document(did, doc)
    methods = document_entries(did, doc, "verificationMethod", f"#{key_id}")
    if not methods:
        raise ResolveError(f"{did}: DID document has no #{key_id} verification method")
    try:  # the same parsing as #atproto (Multikey or the legacy suites)
        return signing_key_from_document(did, {"id": did, "verificationMethod": [
            dict(methods[0], id=f"{did}#atproto")]})
    except ResolveError as exc:
        raise ResolveError(str(exc).replace("#atproto ", f"#{key_id} ")) from None


class DidKeyResolver:
    """Issuer keys (`#atproto`, `#atproto_label`) from DID documents fetched over `client` (a vetted
    `outbound_client`), cached `ttl` s per DID; `fresh` refetches unless the document is under
    `min_refresh` s old, so forged tokens cannot make us hit the PLC directory once per request."""

    KEY_IDS = ("atproto", "atproto_label")

    def __init__(self, client: httpx.AsyncClient, plc_url: str = "https://plc.directory", *,
                 web_base: Callable[[str], str] | None = None, ttl: float = 600, min_refresh: float = 10,
                 max_entries: int = 10_000, clock: Callable[[], float] = time.monotonic):
        self._resolver = DidResolver(client, plc_url, ttl, web_base=web_base, clock=clock)
        self.ttl, self.min_refresh, self.max_entries, self._clock = ttl, min_refresh, max_entries, clock
        self._keys: dict[str, tuple[float, dict[str, str | ResolveError]]] = {}  # did -> (fetched at, {key id: key})
        self.stats = {"fetches": 0, "cache_hits": 0}

    async def signing_key(self, did: str, *, fresh: bool = False, key_id: str = "atproto") -> str:
        """The did:key of `did`'s `#key_id` method; ResolveError (`transient` for network trouble)."""
        if key_id not in self.KEY_IDS:
            raise ResolveError(f"#{key_id} keys are not looked up")
        check_did(did)
        now, hit = self._clock(), self._keys.get(did)
        age = math.inf if hit is None else now - hit[0]
        if age >= self.ttl or (fresh and age >= self.min_refresh):
            self.stats["fetches"] += 1
            doc = await self._resolver._document(did)
            found: dict[str, str | ResolveError] = {}
            for kid in self.KEY_IDS:
                try:
                    found[kid] = key_from_document(did, doc, kid)
                except ResolveError as exc:
                    found[kid] = exc  # kept as the reason, raised anew on each lookup
            hit = (now, found)
            self._keys.pop(did, None)
            while len(self._keys) >= self.max_entries:
                self._keys.pop(next(iter(self._keys)))
            self._keys[did] = hit
        else:
            self.stats["cache_hits"] += 1
        key = hit[1][key_id]
        if isinstance(key, ResolveError):
            raise ResolveError(str(key))
        return key


def jwt_signature_ok(did_key: str, alg: str, signed: bytes, sig: bytes, *, allow_high_s: bool = True) -> bool:
    """ECDSA-SHA256 r||s `sig` over `signed` by `did_key`, whose curve must be `alg`'s."""
    try:
        curve, _ = parse_did_key(did_key)
        return ALGS.get(alg) == curve and len(sig) == 64 and verify_bytes(
            did_key, signed, sig, require_low_s=not allow_high_s)
    except (KeyError_, ValueError):
        return False


def _b64url(part: str) -> bytes:
    if not _B64URL.fullmatch(part) or len(part) % 4 == 1:
        raise ValueError("not unpadded base64url")
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def _json_part(part: str, what: str) -> dict:
    try:
        value = json.loads(_b64url(part), parse_constant=_no_constant)
    except (ValueError, binascii.Error, RecursionError) as exc:
        raise ServiceAuthError("BadJwt", f"poorly formatted jwt: the {what} is not base64url JSON ({exc})"[:200])
    if not isinstance(value, dict):
        raise ServiceAuthError("BadJwt", f"poorly formatted jwt: the {what} is not a JSON object")
    return value


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def _number(payload: dict, name: str, *, required: bool = False) -> float | None:
    value = payload.get(name)
    if value is None and not required:
        return None
    try:
        if not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value):
            return value
    except OverflowError:  # an integer too large for a float
        pass
    raise ServiceAuthError("BadJwt", f"poorly formatted jwt: {name} must be a number of seconds")


class ServiceAuthVerifier:
    """Verifies service-auth JWTs addressed to `own_did`; see the module docstring for the rules."""

    def __init__(self, own_did: str, keys: KeyResolver, nonces: NonceStore, *, skew: float = 30,
                 max_age: float = 300, service_id: str = "atproto_labeler", allow_high_s: bool = True,
                 prune_every: float = 60, clock: Callable[[], float] = time.time):
        self.own_did, self.keys, self.nonces = own_did, keys, nonces
        self.audiences = {own_did, f"{own_did}#{service_id}"}
        self.skew, self.max_age, self.allow_high_s = skew, max_age, allow_high_s
        self.prune_every, self._clock, self._pruned = prune_every, clock, -math.inf
        self.stats = {"accepted": 0, "refused": 0, "key_retries": 0}

    async def verify(self, authorization_header: str | None, lxm: str) -> ServiceCaller:
        """The verified caller of method `lxm`, or ServiceAuthError."""
        try:
            caller = await self._verify(authorization_header, lxm)
        except ServiceAuthError:
            self.stats["refused"] += 1
            raise
        self.stats["accepted"] += 1
        return caller

    async def _verify(self, authorization: str | None, lxm: str) -> ServiceCaller:
        scheme, _, token = (authorization or "").strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise ServiceAuthError("MissingJwt", "missing jwt: send Authorization: Bearer <service auth token>")
        if len(token) > MAX_TOKEN:
            raise ServiceAuthError("BadJwt", f"poorly formatted jwt: longer than {MAX_TOKEN} characters")
        parts = token.split(".")
        if len(parts) != 3:
            raise ServiceAuthError("BadJwt", "poorly formatted jwt: expected header.payload.signature")
        header, payload = _json_part(parts[0], "header"), _json_part(parts[1], "payload")

        alg, typ = header.get("alg"), header.get("typ")
        if not isinstance(alg, str) or alg not in ALGS:
            raise ServiceAuthError("BadJwt", f"jwt alg {str(alg)[:20]!r} is not accepted: use ES256K or ES256")
        if typ is not None and (not isinstance(typ, str) or typ.lower() in FORBIDDEN_TYP):
            raise ServiceAuthError("BadJwtType", f'Invalid jwt type "{str(typ)[:40]}"')

        iss, aud = payload.get("iss"), payload.get("aud")
        did, _, fragment = iss.partition("#") if isinstance(iss, str) else ("", "", "")
        try:
            check_did(did)
        except ResolveError:
            raise ServiceAuthError("BadJwtIss", "jwt iss is not a valid did") from None
        if "#" in iss and (not fragment or "#" in fragment or len(fragment) > 128):
            raise ServiceAuthError("BadJwtIss", "jwt iss has a malformed #service fragment")
        key_id = "atproto_label" if fragment == "atproto_labeler" else "atproto"
        kid = header.get("kid")
        if kid is not None and kid not in (f"#{key_id}", f"{did}#{key_id}"):
            raise ServiceAuthError("BadJwt", f"jwt kid {str(kid)[:80]!r} is not accepted: sign with #{key_id}")
        if not isinstance(aud, str) or aud not in self.audiences:
            raise ServiceAuthError("BadJwtAudience", "jwt audience does not match service did")
        if payload.get("lxm") != lxm:
            got = "bad" if "lxm" in payload else "missing"
            raise ServiceAuthError("BadJwtLexiconMethod", f'{got} jwt lexicon method ("lxm"). must match: {lxm}')

        exp = _number(payload, "exp", required=True)
        iat, nbf = _number(payload, "iat"), _number(payload, "nbf")
        now = self._clock()
        if now > exp + self.skew:
            raise ServiceAuthError("JwtExpired", "jwt expired")
        if any(t is not None and t > now + self.skew for t in (iat, nbf)):
            raise ServiceAuthError("JwtNotYetValid", "jwt issued in the future (iat/nbf ahead of our clock)")
        if exp - now > self.max_age or (iat is not None and now - iat > self.max_age):
            raise ServiceAuthError("JwtTooOld", f"jwt lives longer than {self.max_age:.0f} s: ask for a shorter exp")
        jti = payload.get("jti")
        if not isinstance(jti, str) or not 0 < len(jti) <= MAX_JTI:
            raise ServiceAuthError("BadJwt", f"jwt needs a jti (nonce) of 1-{MAX_JTI} characters")

        try:
            sig = _b64url(parts[2])
        except (ValueError, binascii.Error):
            raise ServiceAuthError("BadJwtSignature", "jwt signature is not base64url") from None
        if len(sig) != 64:
            raise ServiceAuthError("BadJwtSignature", f"jwt signature is {len(sig)} bytes: expected 64 (r||s, not DER)")
        signed = f"{parts[0]}.{parts[1]}".encode()
        key = await self._key(did, key_id, fresh=False)
        if not jwt_signature_ok(key, alg, signed, sig, allow_high_s=self.allow_high_s):
            self.stats["key_retries"] += 1  # the issuer may have rotated its key since we cached it
            fresh = await self._key(did, key_id, fresh=True)
            if fresh == key or not jwt_signature_ok(fresh, alg, signed, sig, allow_high_s=self.allow_high_s):
                raise ServiceAuthError("BadJwtSignature", "jwt signature does not match jwt issuer")

        if now - self._pruned >= self.prune_every:
            self._pruned = now
            await self.nonces.prune(now=int(now))
        if not await self.nonces.remember(did, jti, math.ceil(exp + self.skew), now=int(now)):
            raise ServiceAuthError("NonceNotUnique", "jwt replayed: its jti (nonce) was used before")
        return ServiceCaller(did=did, service=fragment or None, jti=jti, exp=exp)

    async def _key(self, did: str, key_id: str, *, fresh: bool) -> str:
        try:
            return await self.keys.signing_key(did, fresh=fresh, key_id=key_id)
        except ResolveError as exc:
            raise ServiceAuthError("DidResolutionFailed", f"cannot get the jwt issuer's key: {exc}"[:500],
                                   transient=exc.transient) from None
