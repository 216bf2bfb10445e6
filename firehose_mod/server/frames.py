"""Event-stream frames: a DAG-CBOR header then a DAG-CBOR body, in one binary message.

A `#labels` frame is assembled from the stored wire CBOR of its label without decoding
it: the body `{seq, labels: [label]}` is a two-key map whose canonical DAG-CBOR key order
is `seq` (3 bytes) before `labels` (6 bytes).

The JSON-text variant (`subscribe.JSON_PREFIX`, for consumers written against plyr.fm's old
labeler) carries the same bodies as text messages: `{"seq":N,"labels":[label]}` with each
label in its lexicon JSON form, exactly as queryLabels answers it (`sig` as
`{"$bytes": base64}`); an error is `{"error":..., "message":...}`. There is no header: a
message with `seq` and `labels` is a `#labels` frame, one with `error` an error.
"""

from __future__ import annotations

import json
import struct

import libipld

from firehose_mod.labels import Label

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


def ws_text(payload: bytes) -> bytes:
    """UTF-8 `payload` as one unmasked, unfragmented WebSocket text message: `ws_binary`'s
    twin (opcode 1), so JSON frames too are framed once for every subscriber."""
    framed = ws_binary(payload)
    return b"\x81" + framed[1:]


def ws_payload(message: bytes) -> bytes:
    """The payload of one message framed by `ws_binary` or `ws_text`."""
    n = message[1]
    return message[2 if n < 126 else 4 if n == 126 else 10:]


def label_json(label_cbor: bytes) -> dict:
    """A label's lexicon JSON form from its wire DAG-CBOR (the same dict as queryLabels')."""
    return Label.from_wire(libipld.decode_dag_cbor(label_cbor)).to_json()


def json_labels_message(seq: int, label: dict) -> bytes:
    """The text message `{"seq":N,"labels":[label]}` (ASCII JSON, so valid UTF-8), framed."""
    return ws_text(json.dumps({"seq": seq, "labels": [label]}, separators=(",", ":")).encode())


def json_labels_frame(seq: int, label_cbor: bytes) -> bytes:
    """The JSON-text message carrying the label whose wire CBOR is `label_cbor`, at `seq`."""
    return json_labels_message(seq, label_json(label_cbor))


def json_from_binary(message: bytes) -> bytes:
    """The JSON-text twin of a framed binary `#labels` message: same seq, same label (as
    re-signed after a key rotation, if it was), read back from the binary message itself."""
    _header, body = libipld.decode_dag_cbor_multi(ws_payload(message))
    (label,) = body["labels"]
    return json_labels_message(body["seq"], Label.from_wire(label).to_json())


def info_frame(name: str, message: str | None = None) -> bytes:
    body = {"name": name} if message is None else {"name": name, "message": message}
    return INFO_HEADER + libipld.encode_dag_cbor(body)


def error_frame(error: str, message: str | None = None) -> bytes:
    body = {"error": error} if message is None else {"error": error, "message": message}
    return ERROR_HEADER + libipld.encode_dag_cbor(body)


def json_error_frame(error: str, message: str | None = None) -> str:
    """An error as the JSON-text stream sends it: the body of `error_frame`, as a text message."""
    body = {"error": error} if message is None else {"error": error, "message": message}
    return json.dumps(body, separators=(",", ":"))
