"""atproto service JWTs for tests: real secp256k1 and P-256 keys, tokens as the reference's
createServiceJwt makes them, and a fake PLC directory / did:web host serving their documents."""

from __future__ import annotations

import base64
import json
import secrets
import time

import coincurve
import libipld
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from tests.fakes.pds import FakeNetwork

LABELER = "did:plc:" + "l" * 24
USER = "did:plc:" + "u" * 24
LXM = "com.atproto.moderation.createReport"
N = {"secp256k1": 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141,
     "p256": 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551}


class Key:
    """A test key: multicodec prefixes from the did:key spec, signatures made by the libraries."""

    def __init__(self, curve: str = "secp256k1"):
        self.curve = curve
        self.alg = "ES256K" if curve == "secp256k1" else "ES256"
        self.private = ec.generate_private_key(ec.SECP256K1() if curve == "secp256k1" else ec.SECP256R1())
        point = self.private.public_key().public_bytes(serialization.Encoding.X962,
                                                       serialization.PublicFormat.CompressedPoint)
        prefix = b"\xe7\x01" if curve == "secp256k1" else b"\x80\x24"
        self.multibase = libipld.encode_multibase("z", prefix + point)

    def sign(self, data: bytes) -> bytes:
        """Low-S r||s: coincurve (libsecp256k1) for secp256k1, cryptography (OpenSSL) for P-256."""
        if self.curve == "secp256k1":
            secret = self.private.private_numbers().private_value.to_bytes(32, "big")
            r, s = decode_dss_signature(coincurve.PrivateKey(secret).sign(data))  # DER, low-S
        else:
            r, s = decode_dss_signature(self.private.sign(data, ec.ECDSA(hashes.SHA256())))
            s = min(s, N[self.curve] - s)
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def token(key: Key, *, header: dict | None = None, sig=None, **claims) -> str:
    """A service JWT as the reference createServiceJwt makes it; claims=None drops a claim;
    `sig(signing_input, r||s)` replaces the signature bytes."""
    now = int(time.time())
    head = {"typ": "JWT", "alg": key.alg} | (header or {})
    body = {"iat": now, "iss": USER, "aud": LABELER, "exp": now + 60, "lxm": LXM, "jti": secrets.token_hex(16)}
    body = {k: v for k, v in (body | claims).items() if v is not None}
    signing = f"{b64(json.dumps(head).encode())}.{b64(json.dumps(body).encode())}"
    raw = key.sign(signing.encode())
    return f"{signing}.{b64(raw if sig is None else sig(signing, raw))}"


def high_s(_signing: str, raw: bytes, curve: str = "secp256k1") -> bytes:
    return raw[:32] + (N[curve] - int.from_bytes(raw[32:], "big")).to_bytes(32, "big")


class Net(FakeNetwork):
    """The fake PLC directory / did:web host, serving chosen verification methods per DID."""

    def __init__(self) -> None:
        super().__init__()
        self.methods: dict[str, list[dict]] = {}

    def register(self, did: str, key: Key | None = None, **others: Key | dict) -> None:
        methods = {"atproto": key, **others} if key is not None else others
        self.methods[did] = [
            m | {"id": f"{did}#{name}"} if isinstance(m, dict) else
            {"id": f"{did}#{name}", "type": "Multikey", "controller": did, "publicKeyMultibase": m.multibase}
            for name, m in methods.items()]
        if did not in self.accounts:
            self.add_repo(did, None, in_relay=False)

    def document(self, did: str) -> dict | None:
        doc = super().document(did)
        if doc is not None:
            doc["verificationMethod"] = self.methods.get(did, [])
        return doc

    def fetches(self, did: str) -> int:
        return self.count(did.removeprefix("did:web:") if did.startswith("did:web:") else did)
