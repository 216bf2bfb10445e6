"""A tiny CAR v1 writer for tests, checked against libipld's reader."""

from __future__ import annotations

import hashlib

import libipld

DAG_CBOR = 0x71
SHA2_256 = 0x12


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def cid_for(data: bytes, codec: int = DAG_CBOR) -> bytes:
    """The binary CIDv1 (sha2-256) of a block; libipld.encode_cid(cid) gives its string form.

    libipld encodes bytes that parse as a CID as a DAG-CBOR link (tag 42), so these bytes can
    be put in a record dict wherever a CID link belongs (e.g. a blob's `ref`).
    """
    return bytes([0x01]) + varint(codec) + bytes([SHA2_256, 32]) + hashlib.sha256(data).digest()


def cid_bytes(cid: bytes | str) -> bytes:
    """Binary form of a CID given as bytes or as a string (`bafy...`)."""
    if isinstance(cid, bytes):
        return cid
    parsed = libipld.decode_cid(cid)
    mh = parsed["hash"]
    return varint(1) + varint(parsed["codec"]) + varint(mh["code"]) + varint(mh["size"]) + mh["digest"]


def make_car(root_cid: bytes | str, blocks: list[tuple[bytes | str, bytes]]) -> bytes:
    """A CAR v1 file: varint-framed header {version: 1, roots: [root]}, then varint-framed blocks."""
    header = libipld.encode_dag_cbor({"version": 1, "roots": [cid_bytes(root_cid)]})
    out = [varint(len(header)), header]
    for cid, data in blocks:
        c = cid_bytes(cid)
        out += [varint(len(c) + len(data)), c, data]
    return b"".join(out)


def block(value: object) -> tuple[bytes, bytes]:
    """(cid, data) of a value encoded as DAG-CBOR."""
    data = libipld.encode_dag_cbor(value)
    return cid_for(data), data
