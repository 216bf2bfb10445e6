"""CAR v1 reading and DAG-CBOR to atproto-JSON conversion for firehose records.

libipld decodes both CID links and byte strings to plain `bytes`, which loses the
difference the atproto JSON form needs (`{"$link"}` vs `{"$bytes"}`), so records are
converted from their raw block bytes by a small walker that sees CBOR tag 42, after
libipld has checked that the block is strict DAG-CBOR.
"""

from __future__ import annotations

import base64
import struct
from typing import Any

import libipld



def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data):
            raise ValueError("truncated varint")
        b = data[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _cid_end(data: bytes, pos: int) -> int:
    """The end offset of the binary CID starting at `pos`."""
    if data[pos:pos + 2] == b"\x12\x20":  # CIDv0: a bare sha2-256 multihash
        return pos + 34
    version, p = _varint(data, pos)
    if version != 1:
        raise ValueError(f"CID version {version}")
    _codec, p = _varint(data, p)
    _code, p = _varint(data, p)
    size, p = _varint(data, p)
    return p + size


def read_car_blocks(car: bytes) -> dict[bytes, bytes]:
    """The raw blocks of a CAR v1 file, keyed by binary CID (libipld's `decode_car` only gives
    decoded blocks, and decoding loses the difference between CID links and byte strings)."""
    hlen, pos = _varint(car, 0)
    if pos + hlen > len(car):
        raise ValueError("truncated CAR header")
    header = libipld.decode_dag_cbor(car[pos:pos + hlen])
    if not isinstance(header, dict) or header.get("version") != 1:
        raise ValueError("not a CAR v1 header")
    pos += hlen
    blocks: dict[bytes, bytes] = {}
    while pos < len(car):
        length, pos = _varint(car, pos)
        end = pos + length
        if length == 0 or end > len(car):
            raise ValueError("truncated CAR section")
        cid_end = _cid_end(car, pos)
        if cid_end > end:
            raise ValueError("CID longer than its section")
        blocks[car[pos:cid_end]] = car[cid_end:end]
        pos = end
    return blocks


def dag_cbor_to_json(data: bytes) -> Any:
    """Convert one DAG-CBOR value (already checked by libipld) to the atproto JSON data model."""
    value, pos = _cbor_item(data, 0)
    if pos != len(data):
        raise ValueError("trailing bytes after the record")
    return value


def _cbor_arg(data: bytes, pos: int, info: int) -> tuple[int, int]:
    if info < 24:
        return info, pos
    if info == 24:
        return data[pos], pos + 1
    if info == 25:
        return struct.unpack_from(">H", data, pos)[0], pos + 2
    if info == 26:
        return struct.unpack_from(">I", data, pos)[0], pos + 4
    if info == 27:
        return struct.unpack_from(">Q", data, pos)[0], pos + 8
    raise ValueError(f"unsupported CBOR additional info {info}")


def _cbor_item(data: bytes, pos: int) -> tuple[Any, int]:
    initial = data[pos]
    major, info = initial >> 5, initial & 0x1F
    pos += 1
    if major == 7:
        if info == 20:
            return False, pos
        if info == 21:
            return True, pos
        if info == 22:
            return None, pos
        if info == 25:
            return struct.unpack_from(">e", data, pos)[0], pos + 2
        if info == 26:
            return struct.unpack_from(">f", data, pos)[0], pos + 4
        if info == 27:
            return struct.unpack_from(">d", data, pos)[0], pos + 8
        raise ValueError(f"unsupported CBOR simple value {info}")
    arg, pos = _cbor_arg(data, pos, info)
    if major == 0:
        return arg, pos
    if major == 1:
        return -1 - arg, pos
    if major in (2, 3):
        end = pos + arg
        if end > len(data):
            raise ValueError("truncated CBOR string")
        raw = data[pos:end]
        if major == 3:
            return raw.decode("utf-8"), end
        return {"$bytes": base64.b64encode(raw).decode("ascii").rstrip("=")}, end  # atproto: no padding
    if major == 4:
        items = []
        for _ in range(arg):
            item, pos = _cbor_item(data, pos)
            items.append(item)
        return items, pos
    if major == 5:
        out: dict[str, Any] = {}
        for _ in range(arg):
            key, pos = _cbor_item(data, pos)
            if not isinstance(key, str):
                raise ValueError("non-string map key")
            out[key], pos = _cbor_item(data, pos)
        return out, pos
    if major == 6 and arg == 42:
        if data[pos] >> 5 != 2:
            raise ValueError("CID tag on something other than a byte string")
        n, p = _cbor_arg(data, pos + 1, data[pos] & 0x1F)
        raw = data[p:p + n]
        if not raw or raw[0] != 0:
            raise ValueError("CID link without the identity multibase prefix")
        return {"$link": libipld.encode_cid(raw[1:])}, p + n
    raise ValueError(f"unsupported CBOR major type {major} / tag {arg}")
