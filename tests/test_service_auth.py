"""Service-auth JWTs: tokens signed in the test with real keys (cryptography / coincurve, not our
signing code), DID documents from the fake PLC directory and did:web host over real HTTP, fetched
through the vetted outbound client, and nonces in a real SQLite file."""

from __future__ import annotations

import base64
import json
import time
from dataclasses import replace

import pytest
from cryptography.hazmat.primitives.asymmetric.utils import (
    encode_dss_signature,
)

from firehose_mod.scan.netguard import outbound_client
from firehose_mod.server.service_auth import (
    DidKeyResolver,
    ServiceAuthError,
    ServiceAuthVerifier,
    jwt_signature_ok,
    key_from_document,
)
from firehose_mod.store.nonces import NonceStore
from tests.fakes.pds import closed_port
from tests.helpers.service_jwt import (
    LABELER,
    LXM,
    USER,
    Key,
    Net,
    b64,
    high_s,
    token,
)

pytestmark = pytest.mark.anyio

WEB = "did:web:pds.example.test"
class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


K1, P256 = Key("secp256k1"), Key("p256")


@pytest.fixture
def net():
    n = Net()
    n.register(USER, K1)
    n.register(WEB, P256)
    with n:
        yield n


@pytest.fixture
async def nonces(settings):
    store = await NonceStore.open(settings.data_dir / "auth.sqlite3")
    yield store
    await store.close()


@pytest.fixture
async def world(settings, net, nonces):
    """A verifier as the daemon would build it: settings' PLC URL, the vetted client (loopback allowed)."""
    settings = replace(settings, did=LABELER, plc_url=net.plc_url, media_allow_networks=("127.0.0.1/32",))
    clock = Clock()
    async with outbound_client(settings, timeout=5.0) as client:
        keys = DidKeyResolver(client, settings.plc_url, web_base=net.web_base, clock=clock)
        verifier = ServiceAuthVerifier(settings.did, keys, nonces)
        yield verifier, keys, clock


async def refused_header(verifier: ServiceAuthVerifier, authorization: str | None) -> ServiceAuthError:
    with pytest.raises(ServiceAuthError) as info:
        await verifier.verify(authorization, LXM)
    return info.value


async def refused(verifier: ServiceAuthVerifier, jwt: str) -> ServiceAuthError:
    return await refused_header(verifier, f"Bearer {jwt}")


# --------------------------------------------------------------------------- accepted


async def test_es256k_and_es256_tokens_are_accepted(world, net):
    verifier, keys, _ = world
    caller = await verifier.verify(f"Bearer {token(K1, jti='n1')}", LXM)
    assert (caller.did, caller.service, caller.jti) == (USER, None, "n1")
    web = await verifier.verify(f"Bearer {token(P256, iss=WEB, aud=f'{LABELER}#atproto_labeler')}", LXM)
    assert web.did == WEB
    assert await verifier.verify(f"bearer  {token(K1)} ", LXM)  # the scheme is case-insensitive (RFC 7235)
    assert net.fetches(USER) == 1 and net.fetches(WEB) == 1 and keys.stats["cache_hits"] == 1


async def test_iss_fragments_pick_the_key_as_the_reference_does(world, net):
    verifier, _, _ = world
    label_key = Key("p256")
    net.register(USER, K1, atproto_label=label_key)
    caller = await verifier.verify(f"Bearer {token(K1, iss=f'{USER}#bsky_appview')}", LXM)
    assert (caller.did, caller.service) == (USER, "bsky_appview")  # any other fragment: still #atproto
    labeler = await verifier.verify(f"Bearer {token(label_key, iss=f'{USER}#atproto_labeler')}", LXM)
    assert labeler.service == "atproto_labeler"  # #atproto_labeler signs with #atproto_label
    assert (await refused(verifier, token(K1, iss=f"{USER}#atproto_labeler"))).error == "BadJwtSignature"
    assert (await refused(verifier, token(label_key))).error == "BadJwtSignature"
    assert await verifier.verify(f"Bearer {token(K1, header={'kid': '#atproto'})}", LXM)
    assert (await refused(verifier, token(K1, header={"kid": "#atproto_label"}))).error == "BadJwt"
    for bad in (f"{USER}#", f"{USER}#a#b", "did:key:zQ3sh", "alice.test", None):
        assert (await refused(verifier, token(K1, iss=bad))).error == "BadJwtIss"


# --------------------------------------------------------------------------- claims


async def test_audience_method_and_time_claims(world, net):
    verifier, _, _ = world
    now = int(time.time())
    cases = [
        (token(K1, aud=f"{LABELER[:-1]}x"), "BadJwtAudience"),
        (token(K1, aud=f"{LABELER}#bsky_appview"), "BadJwtAudience"),
        (token(K1, aud=None), "BadJwtAudience"),
        (token(K1, aud=[LABELER]), "BadJwtAudience"),
        (token(K1, lxm="com.atproto.repo.createRecord"), "BadJwtLexiconMethod"),
        (token(K1, lxm=None), "BadJwtLexiconMethod"),
        (token(K1, exp=now - 31, iat=now - 90), "JwtExpired"),
        (token(K1, exp=None), "BadJwt"),
        (token(K1, exp="soon"), "BadJwt"),
        (token(K1, exp=True), "BadJwt"),
        (token(K1, exp=10**400), "BadJwt"),
        (token(K1, iat=-(10**400)), "BadJwt"),
        (token(K1, iat=now + 120), "JwtNotYetValid"),
        (token(K1, nbf=now + 120), "JwtNotYetValid"),
        (token(K1, exp=now + 3600), "JwtTooOld"),  # a nonce row must not outlive a short window
        (token(K1, iat=now - 3600, exp=now + 30), "JwtTooOld"),
        (token(K1, jti=None), "BadJwt"),
        (token(K1, jti=""), "BadJwt"),
        (token(K1, jti="x" * 257), "BadJwt"),
    ]
    for jwt, error in cases:
        err = await refused(verifier, jwt)
        assert err.error == error, (jwt, err)
    missing = await refused(verifier, token(K1, lxm=None))
    assert "missing" in missing.message and LXM in missing.message
    assert net.fetches(USER) == 0  # every claim is checked before any network
    assert await verifier.verify(f"Bearer {token(K1, exp=now - 10, iat=now - 70)}", LXM)  # within the skew
    assert await verifier.verify(f"Bearer {token(K1, iat=now + 10)}", LXM)


async def test_missing_or_malformed_tokens(world, net):
    verifier, _, _ = world
    good = token(K1)
    head, body, sig = good.split(".")
    none_head = b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    hs_head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    not_utf8, nan = b64(b"\xff\xfe"), b64(b'{"exp": NaN}')
    for header in (None, "", "Bearer", "Bearer ", f"Basic {good}", f"Token {good}", good):
        err = await refused_header(verifier, header)
        assert err.error == "MissingJwt", header
    cases = {
        f"{head}.{body}": "BadJwt",
        f"{good}.{sig}": "BadJwt",
        f"{head}!.{body}.{sig}": "BadJwt",
        f"{head}=.{body}.{sig}": "BadJwt",  # padding is not base64url as JWTs use it
        f"{b64(b'{not json')}.{body}.{sig}": "BadJwt",
        f"{b64(b'[1]')}.{body}.{sig}": "BadJwt",
        f"{head}.{not_utf8}.{sig}": "BadJwt",
        f"{head}.{nan}.{sig}": "BadJwt",
        f"{none_head}.{body}.": "BadJwt",
        f"{hs_head}.{body}.{sig}": "BadJwt",
        f"{b64(json.dumps({'typ': 'JWT'}).encode())}.{body}.{sig}": "BadJwt",
        f"{head}.{body}.{sig[:-2]}!!": "BadJwtSignature",
        f"{head}.{body}.": "BadJwtSignature",
        f"{head}.{body}.{b64(bytes(64))}": "BadJwtSignature",
        "a" * 9000: "BadJwt",
    }
    for jwt, error in cases.items():
        assert (await refused(verifier, jwt)).error == error, jwt
    assert (await refused(verifier, token(K1, header={"alg": ["ES256K"]}))).error == "BadJwt"
    for typ in ("at+jwt", "refresh+jwt", "dpop+jwt", "DPoP+JWT"):
        assert (await refused(verifier, token(K1, header={"typ": typ}))).error == "BadJwtType"
    assert await verifier.verify(f"Bearer {token(K1, header={'typ': None})}", LXM)  # typ is optional


# --------------------------------------------------------------------------- signatures and keys


async def test_signatures_high_s_accepted_der_and_wrong_curve_refused(world, settings, net):
    verifier, _, _ = world
    assert await verifier.verify(f"Bearer {token(K1, sig=high_s)}", LXM)  # both references accept high-S JWTs
    assert await verifier.verify(f"Bearer {token(P256, iss=WEB, sig=lambda s, r: high_s(s, r, 'p256'))}", LXM)
    der = await refused(verifier, token(K1, sig=lambda _s, raw: encode_dss_signature(
        int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))))
    assert der.error == "BadJwtSignature" and "DER" in der.message
    mismatch = await refused(verifier, token(K1, header={"alg": "ES256"}))
    assert mismatch.error == "BadJwtSignature"
    strict = ServiceAuthVerifier(LABELER, verifier.keys, verifier.nonces, allow_high_s=False)
    assert (await refused(strict, token(K1, sig=high_s))).error == "BadJwtSignature"


async def test_a_key_not_in_the_document_is_refused_and_a_rotated_key_is_refetched(world, net, nonces):
    verifier, _, clock = world
    assert await verifier.verify(f"Bearer {token(K1)}", LXM)
    stranger = Key()
    err = await refused(verifier, token(stranger))
    assert err.error == "BadJwtSignature" and err.message == "jwt signature does not match jwt issuer"
    assert net.fetches(USER) == 1  # the document is seconds old: refetching cannot help (forged-token flood)
    clock.t += 60
    assert (await refused(verifier, token(stranger))).error == "BadJwtSignature"
    assert net.fetches(USER) == 2 and verifier.stats["key_retries"] == 2
    rotated = Key("p256")
    net.register(USER, rotated)
    clock.t += 60
    assert (await verifier.verify(f"Bearer {token(rotated)}", LXM)).did == USER
    assert net.fetches(USER) == 3
    assert await verifier.verify(f"Bearer {token(rotated)}", LXM) and net.fetches(USER) == 3  # cached
    assert (await refused(verifier, token(K1))).error == "BadJwtSignature"  # the old key is gone
    assert await nonces.count() == 3  # refused tokens leave no nonce behind


async def test_did_resolution_failures(world, settings, net, nonces):
    verifier, _, _ = world
    unknown = await refused(verifier, token(K1, iss="did:plc:" + "z" * 24))
    assert unknown.error == "DidResolutionFailed" and not unknown.transient
    net.register(USER)  # a document without any key
    nokey = await refused(verifier, token(K1))
    assert nokey.error == "DidResolutionFailed" and "#atproto" in nokey.message
    async with outbound_client(settings, timeout=2.0) as client:  # no allowance: loopback is refused
        guarded = ServiceAuthVerifier(LABELER, DidKeyResolver(client, net.plc_url), nonces)
        err = await refused(guarded, token(K1))
        assert err.error == "DidResolutionFailed" and "loopback" in err.message and not err.transient
        allowed = replace(settings, media_allow_networks=("127.0.0.1/32",))
    async with outbound_client(allowed, timeout=2.0) as client:
        down = ServiceAuthVerifier(LABELER, DidKeyResolver(client, f"http://127.0.0.1:{closed_port()}/plc"), nonces)
        err = await refused(down, token(K1))
        assert err.error == "DidResolutionFailed" and err.transient


# --------------------------------------------------------------------------- replay


async def test_a_replayed_token_is_refused_even_after_a_restart(world, settings, net):
    _, keys, _ = world
    path = settings.data_dir / "restart.sqlite3"
    store = await NonceStore.open(path)
    try:
        verifier = ServiceAuthVerifier(LABELER, keys, store)
        jwt = token(K1)
        assert await verifier.verify(f"Bearer {jwt}", LXM)
        assert (await refused(verifier, jwt)).error == "NonceNotUnique"
        head, body, sig = jwt.split(".")
        malleated = f"{head}.{body}.{b64(high_s('', base64.urlsafe_b64decode(sig + '==')))}"
        assert (await refused(verifier, malleated)).error == "NonceNotUnique"  # a new signature, the same jti
        jti = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))["jti"]
        assert (await refused(verifier, token(K1, jti=jti))).error == "NonceNotUnique"
        assert await verifier.verify(f"Bearer {token(P256, iss=WEB, jti='shared')}", LXM)
        assert await verifier.verify(f"Bearer {token(K1, jti='shared')}", LXM)  # nonces are per issuer
    finally:
        await store.close()
    reopened = await NonceStore.open(path)  # a restart
    try:
        again = ServiceAuthVerifier(LABELER, keys, reopened)
        assert (await refused(again, jwt)).error == "NonceNotUnique"
        assert await reopened.count() == 3
    finally:
        await reopened.close()


async def test_nonce_rows_expire_and_are_pruned(nonces):
    assert await nonces.remember(USER, "a", 100, now=50)
    assert not await nonces.remember(USER, "a", 100, now=100)
    assert await nonces.remember(USER, "b", 200, now=50)
    assert await nonces.remember(USER, "a", 300, now=101)  # expired: the jti may come back
    assert not await nonces.remember(USER, "a", 300, now=250)
    assert await nonces.prune(now=250) == 1 and await nonces.count() == 1


# --------------------------------------------------------------------------- reference vectors

# bluesky-social/atproto interop-test-files/crypto/signature-fixtures.json (all six entries; the
# message is the DAG-CBOR of {"hello": "world"}). "validSignature" there is the strict atproto
# rule (low-S, compact); service-auth JWTs follow the references' lenient rule for high-S.
FIXTURES = [
    ("ES256", "EcdsaSecp256r1VerificationKey2019", "did:key:zDnaembgSGUhZULN2Caob4HLJPaxBh92N7rtH21TErzqf8HQo",
     "zxdM8dSstjrpZaRUwBmDvjGXweKuEMVN95A9oJBFjkWMh",
     "2vZNsG3UKvvO/CDlrdvyZRISOFylinBh0Jupc6KcWoJWExHptCfduPleDbG3rko3YZnn9Lw0IjpixVmexJDegg", True, None),
    ("ES256K", "EcdsaSecp256k1VerificationKey2019", "did:key:zQ3shqwJEJyMBsBXCWyCBpUBMqxcon9oHB7mCvx4sSpMdLJwc",
     "z25z9DTpsiYYJKGsWmSPJK2NFN8PcJtZig12K59UgW7q5t",
     "5WpdIuEUUfVUYaozsi8G0B3cWO09cgZbIIwg1t2YKdUn/FEznOndsz/qgiYb89zwxYCbB71f7yQK5Lr7NasfoA", True, None),
    ("ES256", "EcdsaSecp256r1VerificationKey2019", "did:key:zDnaembgSGUhZULN2Caob4HLJPaxBh92N7rtH21TErzqf8HQo",
     "zxdM8dSstjrpZaRUwBmDvjGXweKuEMVN95A9oJBFjkWMh",
     "2vZNsG3UKvvO/CDlrdvyZRISOFylinBh0Jupc6KcWoKp7O4VS9giSAah8k5IUbXIW00SuOrjfEqQ9HEkN9JGzw", False, "high-s"),
    ("ES256K", "EcdsaSecp256k1VerificationKey2019", "did:key:zQ3shqwJEJyMBsBXCWyCBpUBMqxcon9oHB7mCvx4sSpMdLJwc",
     "z25z9DTpsiYYJKGsWmSPJK2NFN8PcJtZig12K59UgW7q5t",
     "5WpdIuEUUfVUYaozsi8G0B3cWO09cgZbIIwg1t2YKdXYA67MYxYiTMAVfdnkDCMN9S5B3vHosRe07aORmoshoQ", False, "high-s"),
    ("ES256", "EcdsaSecp256r1VerificationKey2019", "did:key:zDnaeT6hL2RnTdUhAPLij1QBkhYZnmuKyM7puQLW1tkF4Zkt8",
     "ze8N2PPxnu19hmBQ58t5P3E9Yj6CqakJmTVCaKvf9Byq2",
     "MEQCIFxYelWJ9lNcAVt+jK0y/T+DC/X4ohFZ+m8f9SEItkY1AiACX7eXz5sgtaRrz/SdPR8kprnbHMQVde0T2R8yOTBweA", False,
     "der-encoded"),
    ("ES256K", "EcdsaSecp256k1VerificationKey2019", "did:key:zQ3shnriYMXc8wvkbJqfNWh5GXn2bVAeqTC92YuNbek4npqGF",
     "z22uZXWP8fdHXi4jyx8cCDiBf9qQTsAe6VcycoMQPfcMQX",
     "MEUCIQCWumUqJqOCqInXF7AzhIRg2MhwRz2rWZcOEsOjPmNItgIgXJH7RnqfYY6M0eg33wU0sFYDlprwdOcpRn78Sz5ePgk", False,
     "der-encoded"),
]


@pytest.mark.parametrize("alg,suite,did_key,multibase,sig_b64,valid,tag", FIXTURES)
async def test_reference_signature_vectors(alg, suite, did_key, multibase, sig_b64, valid, tag):
    message = base64.urlsafe_b64decode("oWVoZWxsb2V3b3JsZA==")
    sig = base64.b64decode(sig_b64 + "=" * (-len(sig_b64) % 4))
    doc = {"id": USER, "verificationMethod": [{"id": "#atproto", "type": suite, "publicKeyMultibase": multibase}]}
    assert key_from_document(USER, doc) == did_key  # the legacy suites' raw keys
    assert jwt_signature_ok(did_key, alg, message, sig, allow_high_s=False) is valid  # the strict rule
    assert jwt_signature_ok(did_key, alg, message, sig) is (valid or tag == "high-s")  # the JWT rule
    assert not jwt_signature_ok(did_key, "ES256K" if alg == "ES256" else "ES256", message, sig)
