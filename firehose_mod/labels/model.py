"""The `com.atproto.label.defs#label` model.

A label is stored and sent exactly as it was signed: the string fields (notably `cts`
and `exp`) are kept as text, never re-rendered from a datetime, and `neg` is present only
when true. Changing either would break the signature that verifiers check.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable
from dataclasses import MISSING, dataclass, fields
from datetime import UTC, datetime

import libipld

LABEL_VERSION = 1
MAX_VAL_LEN = 128
# Apps only show custom values made of lowercase letters and hyphens; global values
# such as `!hide` and `!warn` carry a leading `!`.
VAL_RE = re.compile(r"^!?[a-z][a-z0-9-]*$")


class LabelError(ValueError):
    """A label field breaks the lexicon; the message says which and how to fix it."""


def now_iso() -> str:
    """The current time as an atproto datetime string with millisecond precision."""
    return format_datetime(datetime.now(UTC))


def format_datetime(dt: datetime) -> str:
    dt = dt.astimezone(UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def parse_datetime(text: str) -> datetime:
    """Parse an atproto datetime (RFC 3339 with a timezone)."""
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise LabelError(f"not an RFC 3339 datetime: {text!r} (example: 2026-01-31T12:00:00.000Z)") from exc
    if dt.tzinfo is None:
        raise LabelError(f"datetime {text!r} has no timezone; add 'Z' for UTC")
    return dt


_SPACE = re.compile(r"\s")  # str.isspace()'s characters (both use Py_UNICODE_ISSPACE), at C speed


def validate_label_fields(uri: str, val: str, cid: str | None = None, exp: str | None = None) -> None:
    """Check the fields a caller chooses; raise LabelError with a fix-it message."""
    if not (uri.startswith("at://") or uri.startswith("did:")):
        raise LabelError(f"subject {uri!r} is neither an at:// URI nor a DID")
    if len(uri) > 8192 or _SPACE.search(uri):
        raise LabelError(f"subject {uri[:80]!r} is too long or contains whitespace")
    if len(val) > MAX_VAL_LEN or not VAL_RE.match(val):
        raise LabelError(
            f"label value {val!r} must be at most {MAX_VAL_LEN} characters of lowercase a-z, 0-9 and '-'"
            " (optionally with a leading '!' for global values); apps hide other values"
        )
    if cid is not None:
        if not uri.startswith("at://"):
            raise LabelError("a cid pins a record version, so it needs an at:// subject, not a DID")
        try:
            libipld.decode_cid(cid)
        except Exception as exc:  # libipld raises ValueError subclasses without a common base
            raise LabelError(f"cid {cid!r} is not a valid CID string") from exc
    if exp is not None:
        parse_datetime(exp)


def fast_frozen_init(cls: type) -> type:
    """Give a frozen, slotted dataclass an `__init__` that sets its slots through their descriptors.

    The `__init__` dataclasses generates for a frozen class calls `object.__setattr__` per field:
    ~0.25 us a field, 3 us for a 12-field `DecisionRow`, paid per label on the label log's write
    path (issue 19). This one takes the same arguments (same names, order and defaults) and stores
    the same values; the instance stays frozen (assignment still raises FrozenInstanceError) and
    `replace`, `asdict`, equality, hashing and pickling are unchanged. Fields with a
    `default_factory`, `init=False` or `kw_only` fields and `__post_init__` are refused here."""
    if not getattr(cls, "__dataclass_params__", None) or not cls.__dataclass_params__.frozen \
            or "__slots__" not in cls.__dict__ or hasattr(cls, "__post_init__"):
        raise TypeError(f"{cls.__name__} is not a frozen, slotted dataclass without __post_init__")
    params, body, env = [], [], {}
    for f in fields(cls):
        if f.default_factory is not MISSING or not f.init or f.kw_only is True:
            raise TypeError(f"{cls.__name__}.{f.name}: default_factory, init=False and kw_only are not supported")
        if f.default is MISSING:
            params.append(f.name)
        else:
            env[f"_default_{f.name}"] = f.default
            params.append(f"{f.name}=_default_{f.name}")
        env[f"_set_{f.name}"] = cls.__dict__[f.name].__set__  # the slot's member descriptor
        body.append(f"    _set_{f.name}(self, {f.name})\n")
    namespace: dict = {}
    exec(f"def __init__(self, {', '.join(params)}):\n{''.join(body)}", env, namespace)  # noqa: S102
    init = namespace["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__doc__ = cls.__init__.__doc__
    cls.__init__ = init
    return cls


@fast_frozen_init
@dataclass(frozen=True, slots=True)
class Label:
    """One signed (or about to be signed) label, field for field as on the wire."""

    src: str
    uri: str
    val: str
    cts: str
    cid: str | None = None
    neg: bool = False
    exp: str | None = None
    ver: int = LABEL_VERSION
    sig: bytes | None = None

    def unsigned(self) -> dict:
        """The fields that are signed: schema fields with `ver`, no `sig`, no `neg` when false."""
        out: dict = {"ver": self.ver, "src": self.src, "uri": self.uri, "val": self.val, "cts": self.cts}
        if self.cid is not None:
            out["cid"] = self.cid
        if self.neg:
            out["neg"] = True
        if self.exp is not None:
            out["exp"] = self.exp
        return out

    def signing_bytes(self) -> bytes:
        """The DAG-CBOR encoding whose SHA-256 is signed."""
        return libipld.encode_dag_cbor(self.unsigned())

    def wire(self) -> dict:
        """The signed label as sent in a subscribeLabels frame (sig as bytes)."""
        if self.sig is None:
            raise LabelError("label is not signed")
        out = self.unsigned()
        out["sig"] = self.sig
        return out

    def to_cbor(self) -> bytes:
        return libipld.encode_dag_cbor(self.wire())

    def signed(self, sign_bytes: Callable[[bytes], bytes]) -> tuple[Label, bytes]:
        """This label signed by `sign_bytes` (of `signing_bytes()`), and its wire CBOR: the
        signed fields are built once for both (the label log's bulk path)."""
        fields = self.unsigned()
        sig = sign_bytes(libipld.encode_dag_cbor(fields))
        fields["sig"] = sig
        label = Label(self.src, self.uri, self.val, self.cts, self.cid, self.neg, self.exp, self.ver, sig)
        return label, libipld.encode_dag_cbor(fields)

    def to_json(self) -> dict:
        """The lexicon JSON form (queryLabels): `sig` as {"$bytes": base64}."""
        out = self.unsigned()
        if self.sig is not None:
            out["sig"] = {"$bytes": base64.b64encode(self.sig).decode("ascii").rstrip("=")}
        return out

    def in_force_at(self, when: datetime) -> bool:
        """True for a positive label that has not expired at `when`."""
        if self.neg:
            return False
        return self.exp is None or parse_datetime(self.exp) > when

    @classmethod
    def from_wire(cls, d: dict) -> Label:
        return cls(
            src=d["src"],
            uri=d["uri"],
            val=d["val"],
            cts=d["cts"],
            cid=d.get("cid"),
            neg=bool(d.get("neg", False)),
            exp=d.get("exp"),
            ver=d.get("ver", LABEL_VERSION),
            sig=d.get("sig"),
        )
