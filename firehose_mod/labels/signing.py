"""Signing keys for labels: secp256k1 (the atproto default) or P-256.

Per the atproto label spec: DAG-CBOR of the label without `sig`, SHA-256, ECDSA, low-S,
raw 64-byte r||s (not DER). The public key is published as a `did:key` multibase string
under the `#atproto_label` verification method of the labeler's DID document.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from collections.abc import Callable, Sequence
from hashlib import sha256
from dataclasses import dataclass, replace
from pathlib import Path

import coincurve
import libipld
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

from firehose_mod.labels.model import Label

CURVES = {
    # name: (curve, group order, multicodec varint prefix of the compressed public key)
    "secp256k1": (ec.SECP256K1(), 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141, b"\xe7\x01"),
    "p256": (ec.SECP256R1(), 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551, b"\x80\x24"),
}
_ECDSA = ec.ECDSA(hashes.SHA256())


class KeyError_(ValueError):
    """A key file or did:key string cannot be used; the message says how to fix it."""


@dataclass(frozen=True)
class SigningKey:
    """A private signing key and its `did:key` identifier."""

    curve: str
    private: ec.EllipticCurvePrivateKey

    @classmethod
    def generate(cls, curve: str = "secp256k1") -> SigningKey:
        if curve not in CURVES:
            raise KeyError_(f"unknown curve {curve!r}; use one of {sorted(CURVES)}")
        return cls(curve, ec.generate_private_key(CURVES[curve][0]))

    @classmethod
    def from_hex(cls, hex_key: str, curve: str = "secp256k1") -> SigningKey:
        """The key whose 32-byte scalar is `hex_key`: exactly 64 hex digits, no `0x`."""
        if curve not in CURVES:
            raise KeyError_(f"unknown curve {curve!r}; use one of {sorted(CURVES)}")
        if not isinstance(hex_key, str):
            kind = "a JSON number" if isinstance(hex_key, (int, float)) else type(hex_key).__name__
            raise KeyError_(f"private_key_hex is {kind}: it must be a string of 64 hex characters, in quotes")
        digits = hex_key.strip()
        if digits[:2].lower() == "0x":
            raise KeyError_("private_key_hex must be 64 hex characters without 0x (a 32-byte scalar)")
        if len(digits) != 64 or any(c not in "0123456789abcdefABCDEF" for c in digits):
            raise KeyError_(f"private_key_hex must be 64 hex characters (a 32-byte scalar), not {len(digits)}")
        secret = int(digits, 16)
        if not 0 < secret < CURVES[curve][1]:
            raise KeyError_(f"private_key_hex is out of range for {curve} (zero, or not below the group order)")
        return cls(curve, ec.derive_private_key(secret, CURVES[curve][0]))

    def private_hex(self) -> str:
        return f"{self.private.private_numbers().private_value:064x}"

    def _k1(self) -> coincurve.PrivateKey:
        key = self.__dict__.get("_coincurve")
        if key is None:
            key = coincurve.PrivateKey(self.private.private_numbers().private_value.to_bytes(32, "big"))
            object.__setattr__(self, "_coincurve", key)
        return key

    @property
    def did_key(self) -> str:
        """`did:key:z...` for the DID document's `#atproto_label` verification method."""
        return public_did_key(self.curve, self.private.public_key())

    @property
    def multibase(self) -> str:
        """The `publicKeyMultibase` value (the did:key without its `did:key:` prefix)."""
        return self.did_key.removeprefix("did:key:")

    def sign_bytes(self, data: bytes) -> bytes:
        """ECDSA-SHA256 over `data`, low-S, as raw 64-byte r||s."""
        if self.curve == "secp256k1":
            # libsecp256k1 (RFC 6979 nonces, always low-S) signs ~14x faster than OpenSSL here.
            fast = self.__dict__.get("_fast")
            if fast is None:
                fast = k1_signer(self._k1().secret) or (lambda d: self._k1().sign_recoverable(d)[:64])
                object.__setattr__(self, "_fast", fast)
            return fast(data)
        der = self.private.sign(data, _ECDSA)
        r, s = decode_dss_signature(der)
        order = CURVES[self.curve][1]
        if s > order // 2:
            s = order - s
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")

    def sign(self, label: Label) -> Label:
        """Return `label` with its `sig` set."""

        return replace(label, sig=self.sign_bytes(label.signing_bytes()))

    # -- the key file ---------------------------------------------------------------
    def save(self, path: Path) -> None:
        """Write the key file, mode 0600, durably: the file and its directory entry are fsynced.

        The key is written to a temporary file and linked into place, so `path` is never partial
        and never replaced: FileExistsError if another process saved a key there first.
        """
        if path.parent.exists() and not path.parent.is_dir():  # else mkdir's FileExistsError reads as a race
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(path.parent))
        path.parent.mkdir(parents=True, exist_ok=True)
        body = json.dumps({"curve": self.curve, "private_key_hex": self.private_hex()}) + "\n"
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")  # mode 0600
        try:
            with os.fdopen(fd, "w") as f:
                f.write(body)
                f.flush()
                os.fsync(f.fileno())
            os.link(tmp, path)
        finally:
            os.unlink(tmp)
        try:
            _fsync_dir(path.parent)
        except OSError:
            path.unlink(missing_ok=True)  # not known to be on disk: never sign with it
            raise

    @classmethod
    def load(cls, path: Path) -> SigningKey:
        """The key in `path`, a file only its owner may read."""
        form = 'JSON {"curve": "secp256k1", "private_key_hex": "<64 hex digits>"}'
        try:
            mode = path.stat().st_mode & 0o777
            text = path.read_text()
        except OSError as exc:
            raise KeyError_(f"cannot read signing key {path}: {exc.strerror}") from None
        if mode & 0o077:
            raise KeyError_(f"signing key {path} is readable by group or others (mode {mode:o}); run: chmod 600 {path}")
        try:
            data = json.loads(text)
            hex_key, curve = data["private_key_hex"], data.get("curve", "secp256k1")
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise KeyError_(
                f"cannot read signing key {path}: {exc!r}. The file holds {form}; move a broken file away to "
                "generate a new key (labels signed by the old key then need re-signing)"
            ) from None
        try:
            return cls.from_hex(hex_key, curve)
        except KeyError_ as exc:
            raise KeyError_(f"cannot use signing key {path}: {exc} (the file holds {form})") from None

    @classmethod
    def load_or_create(cls, path: Path, curve: str = "secp256k1") -> tuple[SigningKey, bool]:
        """Load the key at `path`, or generate and save one. Returns (key, created)."""
        if path.exists():
            return cls.load(path), False
        key = cls.generate(curve)
        try:
            key.save(path)
        except FileExistsError:  # another process created it first: use theirs
            return cls.load(path), False
        except OSError as exc:
            raise KeyError_(f"cannot write signing key {path}: {exc.strerror or exc}") from exc
        return key, True


def k1_signer(secret: bytes) -> Callable[[bytes], bytes] | None:
    """`sign(data) -> r||s` for a secp256k1 `secret`: `k1_chunk_signer` for one payload (see there).
    The same 64 bytes as `PrivateKey.sign_recoverable(data)[:64]` without the recoverable wrapping
    (~4 us of Python a label, issue 19). None where those bindings are not there."""
    chunk = k1_chunk_signer(secret)
    return None if chunk is None else (lambda data: chunk((data,)))


def k1_chunk_signer(secret: bytes) -> Callable[[Sequence[bytes]], bytes] | None:
    """`sign_chunk([data, ...]) -> r||s r||s ...` for a secp256k1 `secret`, straight through
    coincurve's libsecp256k1 bindings: `secp256k1_ecdsa_sign` (RFC 6979 nonce, low-S) and its compact
    form, concatenated; the library's buffers are made once a call, not twice a signature (~2.5 us of
    a ~30 us signature, issue 19). None where those bindings are not there (another coincurve build):
    the caller then uses coincurve's public API. Safe from several threads: buffers are per call, and
    the library releases the GIL while it signs."""
    try:
        from coincurve._libsecp256k1 import ffi, lib
        from coincurve.context import GLOBAL_CONTEXT
    except ImportError:  # pragma: no cover - coincurve without its cffi module
        return None
    ctx, sign, compact, new, buffer, null = (GLOBAL_CONTEXT.ctx, lib.secp256k1_ecdsa_sign,
                                             lib.secp256k1_ecdsa_signature_serialize_compact, ffi.new,
                                             ffi.buffer, ffi.NULL)
    key = bytes(secret)
    if len(key) != 32:
        return None

    def k1_sign_chunk(payloads) -> bytes:  # a list or tuple of bytes
        sig = new("secp256k1_ecdsa_signature *")
        out = new("unsigned char[64]")
        view = buffer(out)
        parts = []
        for data in payloads:
            if not sign(ctx, sig, sha256(data).digest(), key, null, null):
                raise ValueError("libsecp256k1 could not sign")  # only for an invalid secret
            compact(ctx, out, sig)
            parts.append(view[:])
        return b"".join(parts)

    return k1_sign_chunk


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def public_did_key(curve: str, public: ec.EllipticCurvePublicKey) -> str:
    point = public.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint)
    return "did:key:" + libipld.encode_multibase("z", CURVES[curve][2] + point)


def parse_did_key(did_key: str) -> tuple[str, ec.EllipticCurvePublicKey]:
    """Parse `did:key:z...` (or a bare multibase) into (curve, public key)."""
    mb = did_key.removeprefix("did:key:")
    try:
        _, raw = libipld.decode_multibase(mb)
    except Exception as exc:
        raise KeyError_(f"not a multibase did:key: {did_key!r}") from exc
    raw = bytes(raw)
    for name, (curve, _, prefix) in CURVES.items():
        if raw.startswith(prefix):
            return name, ec.EllipticCurvePublicKey.from_encoded_point(curve, raw[len(prefix):])
    raise KeyError_(f"did:key {did_key!r} is neither secp256k1 nor P-256")


def verify_bytes(did_key: str, data: bytes, sig: bytes, *, require_low_s: bool = True) -> bool:
    """Verify a raw r||s signature over `data` as atproto verifiers do (low-S required)."""
    curve, public = parse_did_key(did_key)
    if len(sig) != 64:
        return False
    r, s = int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big")
    if require_low_s and s > CURVES[curve][1] // 2:
        return False
    try:
        public.verify(encode_dss_signature(r, s), data, _ECDSA)
    except InvalidSignature:
        return False
    return True


def verify_label(did_key: str, label: Label) -> bool:
    """True when `label.sig` is a valid signature by `did_key` over the label's signed fields."""
    return label.sig is not None and verify_bytes(did_key, label.signing_bytes(), label.sig)
