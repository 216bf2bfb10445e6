#!/usr/bin/env python3
"""Check a running skyware labeler: subscribeLabels backfill frames + queryLabels paging.

Usage: SKYWARE_SIGNING_KEY=<hex> python3 verify_client.py PORT EXPECTED_N [--cursor 0] [--no-sigs]

- Opens ws://127.0.0.1:PORT/xrpc/com.atproto.label.subscribeLabels?cursor=C, reads binary
  frames until EXPECTED_N label frames arrived (or 2 s of silence), decodes each as two
  concatenated DAG-CBOR objects (header, body), and checks header/body shape, seq order and
  (unless --no-sigs) every label's secp256k1 signature against the public key of
  SKYWARE_SIGNING_KEY.
- Pages GET /xrpc/com.atproto.label.queryLabels?uriPatterns=*&limit=250 through all labels.
"""
import asyncio
import base64
import hashlib
import json
import os
import sys
import time
import urllib.request

import libipld
import websockets
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed, encode_dss_signature

N_ORDER = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


def pubkey_from_hex(h):
    return ec.derive_private_key(int(h, 16), ec.SECP256K1()).public_key()


def verify_label(pub, label):
    lab = dict(label)
    lab.pop("id", None)  # skyware quirk: queryLabels JSON labels carry a non-lexicon "id" (= seq)
    sig = lab.pop("sig")
    if isinstance(sig, dict):  # JSON form {"$bytes": b64}
        sig = base64.b64decode(sig["$bytes"] + "==")
    assert len(sig) == 64, len(sig)
    r, s = int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big")
    assert s <= N_ORDER // 2, "high-S signature"
    digest = hashlib.sha256(libipld.encode_dag_cbor(lab)).digest()
    pub.verify(encode_dss_signature(r, s), digest, ec.ECDSA(Prehashed(hashes.SHA256())))


def split_frame(data):
    # libipld.decode_dag_cbor_multi decodes concatenated DAG-CBOR objects
    objs = libipld.decode_dag_cbor_multi(data)
    assert len(objs) == 2, f"expected header+body, got {len(objs)} objects"
    return objs


async def subscribe(port, expected, cursor, pub):
    url = f"ws://127.0.0.1:{port}/xrpc/com.atproto.label.subscribeLabels"
    if cursor is not None:
        url += f"?cursor={cursor}"
    frames = labels = 0
    last_seq = None
    first = None
    t0 = time.perf_counter()
    headers_seen = set()
    async with websockets.connect(url, max_size=None) as ws:
        while labels < expected:
            try:
                msg = await asyncio.wait_for(ws.recv(), timeout=2.0)
            except asyncio.TimeoutError:
                break
            if not isinstance(msg, bytes):
                raise SystemExit(f"non-binary frame: {msg!r}")
            header, body = split_frame(msg)
            headers_seen.add(json.dumps(header, sort_keys=True))
            if header.get("op") != 1:
                raise SystemExit(f"error frame: {header} {body}")
            assert header.get("t") == "#labels", header
            assert set(body) == {"seq", "labels"}, body.keys()
            if first is None:
                first = (header, body)
            seq = body["seq"]
            assert last_seq is None or seq > last_seq, (last_seq, seq)
            last_seq = seq
            frames += 1
            labels += len(body["labels"])
            if pub is not None:
                for lab in body["labels"]:
                    verify_label(pub, lab)
    dt = time.perf_counter() - t0
    return frames, labels, last_seq, dt, first, headers_seen


def query_all(port, pub):
    cursor = None
    total = 0
    pages = 0
    t0 = time.perf_counter()
    first = None
    while True:
        url = f"http://127.0.0.1:{port}/xrpc/com.atproto.label.queryLabels?uriPatterns=*&limit=250"
        if cursor:
            url += f"&cursor={cursor}"
        with urllib.request.urlopen(url) as r:
            resp = json.load(r)
        pages += 1
        if first is None:
            first = resp
        if pub is not None:
            for lab in resp["labels"]:
                verify_label(pub, lab)
        total += len(resp["labels"])
        if not resp["labels"]:
            # skyware quirk: an empty page answers cursor "0" -- following it would restart
            break
        cursor = resp["cursor"]
    return total, pages, time.perf_counter() - t0, first, cursor


def main():
    args = sys.argv[1:]
    port, expected = int(args[0]), int(args[1])
    cursor = args[args.index("--cursor") + 1] if "--cursor" in args else "0"
    key = os.environ.get("SKYWARE_SIGNING_KEY")
    pub = None if ("--no-sigs" in args or not key) else pubkey_from_hex(key)

    frames, labels, last_seq, dt, first, hdrs = asyncio.run(subscribe(port, expected, cursor, pub))
    print(f"subscribeLabels cursor={cursor}: {frames} binary frames, {labels} labels, "
          f"last seq={last_seq}, {dt:.2f}s, sigs {'verified' if pub else 'not checked'}")
    print(f"  distinct headers: {sorted(hdrs)}")
    if first:
        print(f"  first frame: header={first[0]} body={first[1]!r}"[:600])
    total, pages, qdt, qfirst, qcursor = query_all(port, pub)
    print(f"queryLabels uriPatterns=*&limit=250: {total} labels in {pages} pages, {qdt:.2f}s, "
          f"final cursor={qcursor!r}")
    if qfirst and qfirst["labels"]:
        print(f"  first label JSON: {json.dumps(qfirst['labels'][0])}")
        print(f"  first page cursor: {qfirst['cursor']!r}")
    ok = labels == expected and total == expected
    print("OK" if ok else f"MISMATCH expected={expected}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
