"""A plain subscribeLabels client for tests: real WebSocket, frames decoded with libipld."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field

import anyio
import libipld
from websockets.asyncio.client import ClientConnection, connect

from firehose_mod.labels import Label


@dataclass
class Received:
    seqs: list[int] = field(default_factory=list)
    labels: list[Label] = field(default_factory=list)
    infos: list[dict] = field(default_factory=list)
    error: dict | None = None


def decode(frame: bytes) -> tuple[dict, dict]:
    header, body = libipld.decode_dag_cbor_multi(frame)
    return header, body


def subscribe(ws_base: str, cursor: int | str | None = None, **kw) -> connect:
    url = f"{ws_base}/xrpc/com.atproto.label.subscribeLabels"
    if cursor is not None:
        url += f"?cursor={cursor}"
    return connect(url, compression=None, max_size=None, **kw)


async def collect(ws: ClientConnection, out: Received, *, until_seq: int | None = None, count: int | None = None,
                  timeout: float = 20) -> Received:
    """Read frames into `out` until `until_seq` or `count` labels arrived, or an error frame."""
    with anyio.fail_after(timeout):
        while True:
            if until_seq is not None and out.seqs and out.seqs[-1] >= until_seq:
                return out
            if count is not None and len(out.seqs) >= count:
                return out
            header, body = decode(await ws.recv())
            if header["op"] == -1:
                out.error = body
                return out
            if header["t"] == "#info":
                out.infos.append(body)
                continue
            assert header == {"op": 1, "t": "#labels"}
            assert set(body) == {"seq", "labels"}
            out.seqs.append(body["seq"])
            out.labels.extend(Label.from_wire(d) for d in body["labels"])


def tiny_receive_buffer_socket(port: int) -> socket.socket:
    """A connected socket whose kernel receive buffer is tiny, so a client that stops reading
    pushes back on the server within a few kilobytes."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.setblocking(False)
    return sock
