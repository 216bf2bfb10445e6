"""Event-stream frames: a DAG-CBOR header then a DAG-CBOR body, in one binary message.

A `#labels` frame is assembled from the stored wire CBOR of its label without decoding
it: the body `{seq, labels: [label]}` is a two-key map whose canonical DAG-CBOR key order
is `seq` (3 bytes) before `labels` (6 bytes).
"""

from __future__ import annotations

import struct

import libipld

LABELS_HEADER = libipld.encode_dag_cbor({"op": 1, "t": "#labels"})
INFO_HEADER = libipld.encode_dag_cbor({"op": 1, "t": "#info"})
ERROR_HEADER = libipld.encode_dag_cbor({"op": -1})
_BODY_SEQ = b"\xa2\x63seq"
_LABELS_ONE = b"\x66labels\x81"


def cbor_uint(n: int) -> bytes:
    """The canonical (shortest) CBOR encoding of an unsigned integer."""
    if n < 24:
        return bytes([n])
    if n < 0x100:
        return b"\x18" + bytes([n])
    if n < 0x10000:
        return b"\x19" + struct.pack(">H", n)
    if n < 0x100000000:
        return b"\x1a" + struct.pack(">I", n)
    return b"\x1b" + struct.pack(">Q", n)


def labels_frame(seq: int, label_cbor: bytes) -> bytes:
    """The `#labels` frame carrying one label at `seq`."""
    return b"".join((LABELS_HEADER, _BODY_SEQ, cbor_uint(seq), _LABELS_ONE, label_cbor))


def ws_binary(payload: bytes) -> bytes:
    """`payload` as one unmasked, unfragmented WebSocket binary message (RFC 6455 5.2).

    Server-to-client frames are never masked and we negotiate no extension, so these bytes
    are the same for every subscriber: a label is framed once and written to many sockets.
    """
    n = len(payload)
    if n < 126:
        header = bytes((0x82, n))
    elif n < 0x10000:
        header = b"\x82\x7e" + struct.pack(">H", n)
    else:
        header = b"\x82\x7f" + struct.pack(">Q", n)
    return header + payload


def info_frame(name: str, message: str | None = None) -> bytes:
    body = {"name": name} if message is None else {"name": name, "message": message}
    return INFO_HEADER + libipld.encode_dag_cbor(body)


def error_frame(error: str, message: str | None = None) -> bytes:
    body = {"error": error} if message is None else {"error": error, "message": message}
    return ERROR_HEADER + libipld.encode_dag_cbor(body)
