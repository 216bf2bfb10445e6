"""Label signing per the atproto spec, checked against the reference implementation's vector."""

from __future__ import annotations

import base64

import libipld
import pytest
from atproto_crypto.verify import verify_signature

from firehose_mod.labels import Label, SigningKey, verify_label
from firehose_mod.labels.signing import CURVES, parse_did_key, verify_bytes

# indigo atproto/labeling/label_test.go TestVerifyLabel: a label signed by the Go reference
# implementation, and the public key that must verify it.
INDIGO_PUBKEY = "did:key:zQ3shcnfWLQN1bY4d2patsEAYFzy4xp1zdckEvHsV7S4ocTnC"
INDIGO_SIG = "uCRNA5mTzh078T5xZtkvLEt/O+z0gsKM3aqRI/lVAB8ZtbMnznwS/JwHopZE40JhNNDj80z8gsDLAp/hWqG5Pg"
INDIGO_LABEL = Label(
    src="did:plc:n3timvoib5nau7gvwd6cshap",
    uri="did:plc:44ybard66vv44zksje25o7dz",
    val="bladerunner",
    cts="2024-10-23T17:51:19.128Z",
    sig=base64.b64decode(INDIGO_SIG + "=="),
)


def test_reference_vector_from_indigo_verifies():
    assert INDIGO_LABEL.signing_bytes().hex().startswith("a5")  # five fields: no neg, no cid, no exp
    assert verify_label(INDIGO_PUBKEY, INDIGO_LABEL)
    assert verify_signature(INDIGO_PUBKEY, INDIGO_LABEL.signing_bytes(), INDIGO_LABEL.sig)


def test_reference_vector_fails_when_any_signed_field_changes():
    from dataclasses import replace

    for changed in (
        replace(INDIGO_LABEL, val="wrong"),
        replace(INDIGO_LABEL, ver=0),
        replace(INDIGO_LABEL, neg=True),
        replace(INDIGO_LABEL, cts="2024-10-23T17:51:19.129Z"),
    ):
        assert not verify_label(INDIGO_PUBKEY, changed)


def test_signing_bytes_omit_false_neg_and_absent_fields_but_keep_ver():
    label = Label(src="did:web:x", uri="did:plc:y", val="porn", cts="2026-01-01T00:00:00.000Z")
    assert libipld.decode_dag_cbor(label.signing_bytes()) == {
        "ver": 1, "src": "did:web:x", "uri": "did:plc:y", "val": "porn", "cts": "2026-01-01T00:00:00.000Z",
    }
    neg = Label(src="did:web:x", uri="did:plc:y", val="porn", cts="2026-01-01T00:00:00.000Z", neg=True)
    assert libipld.decode_dag_cbor(neg.signing_bytes())["neg"] is True


@pytest.mark.parametrize("curve", ["secp256k1", "p256"])
def test_our_signatures_verify_with_the_sdk_and_are_low_s(curve):
    key = SigningKey.generate(curve)
    order = CURVES[curve][1]
    for i in range(50):  # random k: about half the raw signatures are high-S before normalising
        label = key.sign(Label(src="did:web:x", uri=f"at://did:plc:y/fm.plyr.track/{i}", val="porn", cts="2026-01-01T00:00:00.000Z"))
        assert len(label.sig) == 64
        assert int.from_bytes(label.sig[32:], "big") <= order // 2
        assert verify_signature(key.did_key, label.signing_bytes(), label.sig)


def test_high_s_signature_is_rejected():
    key = SigningKey.generate()
    label = key.sign(Label(src="did:web:x", uri="did:plc:y", val="porn", cts="2026-01-01T00:00:00.000Z"))
    order = CURVES["secp256k1"][1]
    s = int.from_bytes(label.sig[32:], "big")
    high = label.sig[:32] + (order - s).to_bytes(32, "big")
    assert not verify_bytes(key.did_key, label.signing_bytes(), high)
    assert not verify_signature(key.did_key, label.signing_bytes(), high)


def test_did_key_round_trips_and_uses_the_multicodec_prefixes():
    k = SigningKey.generate("secp256k1")
    assert k.did_key.startswith("did:key:zQ3s")
    p = SigningKey.generate("p256")
    assert p.did_key.startswith("did:key:zDn")
    assert parse_did_key(k.did_key)[0] == "secp256k1"
    assert parse_did_key(p.did_key)[0] == "p256"


def test_key_file_is_private_and_reloads_the_same_key(tmp_path):
    path = tmp_path / "k" / "signing.key"
    key, created = SigningKey.load_or_create(path)
    assert created and path.stat().st_mode & 0o777 == 0o600
    again, created = SigningKey.load_or_create(path)
    assert not created and again.did_key == key.did_key


def test_broken_key_file_says_how_to_fix_it(tmp_path):
    path = tmp_path / "signing.key"
    path.write_text("not json")
    path.chmod(0o600)
    with pytest.raises(ValueError, match="move a broken file away"):
        SigningKey.load(path)
