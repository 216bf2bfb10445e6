"""The soak's subscribeLabels clients, all in one process: readers that keep up, and one that never reads.

    python3 bench/soak_subscribers.py --port P --readers 49

Readers are minimal asyncio WebSocket clients (no `websockets` library: its per-frame cost would
make this process, not the daemon, the bottleneck during the burst). Each connects with
`cursor=0`, answers pings, and records the `seq` of every `#labels` frame in order. The seq is
read straight from the DAG-CBOR bytes (`{"seq": N, "labels": [...]}`: `seq` sorts first); every
500th frame, and any frame that does not start with the `#labels` header, is also fully decoded
with libipld to check that shortcut. A reader whose connection ends resumes with `cursor=<last
seq>`, as a real consumer does, and the reconnect is counted.

The slow client (`slow` on stdin) is a plain socket with a 4 KiB receive buffer: it sends the
handshake, reads the 101 response and then nothing, and never answers a ping. `slow-drain`
makes it read whatever is left (frames, an error frame, a close frame or a reset) and report.

stdin commands: `stats`, `slow [CURSOR]`, `slow-drain`, `hold` (stop reconnecting), `report DB_PATH`,
`quit`.
stdout: JSON lines (`{"ready": n}`, `{"stats": ...}` every 5 s and on `stats`, `{"slow": ...}`,
`{"report": ...}`).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import socket
import sqlite3
import struct
import sys
import time
from array import array
from pathlib import Path

HERE = Path(__file__).resolve().parent
for p in (str(HERE.parent), str(HERE)):
    if p not in sys.path:
        sys.path.insert(0, p)

import libipld  # noqa: E402

from firehose_mod.server.frames import LABELS_HEADER  # noqa: E402
from stream_bench import _client_frame  # noqa: E402

SUBSCRIBE = "/xrpc/com.atproto.label.subscribeLabels"
SEQ_KEY = b"\xa2\x63seq"  # a 2-entry map whose first key is "seq"
CHECK_EVERY = 500


def handshake(host: str, port: int, cursor: int | None, agent: str) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    path = SUBSCRIBE + (f"?cursor={cursor}" if cursor is not None else "")
    return (f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nUser-Agent: {agent}\r\n\r\n").encode()


def fast_seq(payload: bytes) -> int | None:
    """The seq of a `#labels` frame read from its bytes, or None if the frame is not one."""
    h = len(LABELS_HEADER)
    if payload[:h] != LABELS_HEADER or payload[h:h + 5] != SEQ_KEY:
        return None
    b = payload[h + 5]
    if b < 0x18:
        return b
    width = {0x18: 1, 0x19: 2, 0x1A: 4, 0x1B: 8}.get(b)
    return int.from_bytes(payload[h + 6:h + 6 + width], "big") if width else None


class FrameReader:
    """Splits a byte stream into unmasked WebSocket frames: (opcode, payload)."""

    def __init__(self):
        self.buf = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        self.buf += data
        buf, pos, out = self.buf, 0, []
        while len(buf) - pos >= 2:
            ln, hdr = buf[pos + 1] & 0x7F, 2
            if ln == 126:
                if len(buf) - pos < 4:
                    break
                ln, hdr = struct.unpack_from(">H", buf, pos + 2)[0], 4
            elif ln == 127:
                if len(buf) - pos < 10:
                    break
                ln, hdr = struct.unpack_from(">Q", buf, pos + 2)[0], 10
            if pos + hdr + ln > len(buf):
                break
            out.append((buf[pos] & 0x0F, bytes(buf[pos + hdr:pos + hdr + ln])))
            pos += hdr + ln
        del buf[:pos]
        return out


class Tally:
    """What one client received: seqs in arrival order, and the frames that were not labels."""

    def __init__(self):
        self.seqs = array("q")
        self.out_of_order = 0
        self.checked = 0
        self.check_failures = 0
        self.errors: list[dict] = []  # error frames ({op: -1} header): {error, message}
        self.infos: list[dict] = []
        self.close_codes: list[int] = []
        self.frames = 0

    def payload(self, data: bytes) -> None:
        self.frames += 1
        seq = fast_seq(data)
        if seq is None or self.frames % CHECK_EVERY == 0:
            self.checked += 1
            try:
                header, body = libipld.decode_dag_cbor_multi(data)[:2]
            except Exception as exc:  # noqa: BLE001 - a broken frame is a finding, not a crash
                self.errors.append({"error": "undecodable", "message": repr(exc)[:200]})
                return
            if header.get("op") == -1:
                self.errors.append({"error": body.get("error"), "message": body.get("message")})
                return
            if header.get("t") == "#info":
                self.infos.append(body)
                return
            if header.get("t") != "#labels" or (seq is not None and body.get("seq") != seq):
                self.check_failures += 1
            seq = body.get("seq")
        if self.seqs and seq <= self.seqs[-1]:
            self.out_of_order += 1
        self.seqs.append(seq)


class Reader(asyncio.Protocol):
    def __init__(self, sub: "Subscribers", n: int):
        self.sub, self.n = sub, n
        self.tally = Tally()
        self.frames = FrameReader()
        self.transport = None
        self.open = False
        self.reconnects = 0
        self.failures = 0
        self.connected = False

    def connect(self, cursor: int | None) -> None:
        self.open = False
        loop = asyncio.get_running_loop()
        loop.create_task(self._connect(cursor))

    async def _connect(self, cursor: int | None) -> None:
        try:
            await asyncio.get_running_loop().create_connection(lambda: self, self.sub.host, self.sub.port)
            self.transport.write(handshake(self.sub.host, self.sub.port, cursor, f"soak-reader/{self.n}"))
        except OSError as exc:
            self.failures += 1
            if self.failures == 1:  # once per outage, not once a second
                self.sub.event({"reader": self.n, "connect_failed": repr(exc)})
            self._retry()

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.connected = True

    def data_received(self, data: bytes) -> None:
        if not self.open:
            self.frames.buf += data
            end = self.frames.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            status = bytes(self.frames.buf[:end]).split(b"\r\n", 1)[0]
            del self.frames.buf[:end + 4]
            if b" 101 " not in status:
                self.sub.event({"reader": self.n, "handshake": status.decode("latin-1")})
                self.transport.close()
                return
            self.open = True
            self.failures = 0
            data = b""
        for op, payload in self.frames.feed(data):
            if op == 2:
                self.tally.payload(payload)
            elif op == 9:
                self.transport.write(_client_frame(0xA, payload))
            elif op == 8:
                code = struct.unpack(">H", payload[:2])[0] if len(payload) >= 2 else 1005
                self.tally.close_codes.append(code)
                self.transport.write(_client_frame(0x8, payload[:2]))
                self.transport.close()

    def connection_lost(self, exc) -> None:
        self.connected = False
        self.open = False
        self.frames = FrameReader()
        if not self.sub.stopping:
            self.reconnects += 1
            self.sub.event({"reader": self.n, "disconnected": repr(exc), "last_seq": self.last})
            self._retry()

    def _retry(self) -> None:
        if not self.sub.stopping:
            asyncio.get_running_loop().call_later(1.0, self.connect, self.last if self.tally.seqs else 0)

    @property
    def last(self) -> int:
        return self.tally.seqs[-1] if self.tally.seqs else 0


class SlowClient:
    """Connects, completes the handshake, then reads nothing until told to drain."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.sock: socket.socket | None = None
        self.connected_at = None
        self.result: dict = {}

    async def connect(self, cursor: int | None) -> dict:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a small window
        sock.setblocking(False)
        await loop.sock_connect(sock, (self.host, self.port))
        await loop.sock_sendall(sock, handshake(self.host, self.port, cursor, "soak-slow"))
        head = b""
        while b"\r\n\r\n" not in head:  # byte by byte: not one byte of the stream after the headers
            chunk = await loop.sock_recv(sock, 1)
            if not chunk:
                break
            head += chunk
        self.sock, self.connected_at = sock, time.time()
        return {"connected": True, "status": head.split(b"\r\n", 1)[0].decode("latin-1"),
                "rcvbuf": sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)}

    async def drain(self, quiet: float = 3.0) -> dict:
        """Read everything the kernel kept for us, until EOF, a reset or `quiet` s of silence."""
        loop = asyncio.get_running_loop()
        tally, frames, nbytes, ended = Tally(), FrameReader(), 0, "silence"
        t0 = time.time()
        while True:
            try:
                data = await asyncio.wait_for(loop.sock_recv(self.sock, 65536), quiet)
            except asyncio.TimeoutError:
                break
            except OSError as exc:
                ended = f"error: {exc!r}"
                break
            if not data:
                ended = "eof"
                break
            nbytes += len(data)
            for op, payload in frames.feed(data):
                if op == 2:
                    tally.payload(payload)
                elif op == 8:
                    tally.close_codes.append(struct.unpack(">H", payload[:2])[0] if len(payload) >= 2 else 1005)
        self.sock.close()
        return {"bytes": nbytes, "label_frames": len(tally.seqs), "first_seq": tally.seqs[0] if tally.seqs else None,
                "last_seq": tally.seqs[-1] if tally.seqs else None, "out_of_order": tally.out_of_order,
                "error_frames": tally.errors, "close_codes": tally.close_codes, "ended": ended,
                "drain_s": round(time.time() - t0, 2)}


class Subscribers:
    def __init__(self, host: str, port: int, readers: int, cursor: int | None):
        self.host, self.port = host, port
        self.readers = [Reader(self, i) for i in range(readers)]
        self.cursor = cursor
        self.stopping = False
        self.slow = SlowClient(host, port)

    def event(self, obj: dict) -> None:
        print(json.dumps({"event": obj, "t": time.time()}), flush=True)

    def stats(self) -> dict:
        lasts = [r.last for r in self.readers]
        return {"t": time.time(), "cpu_s": round(time.process_time(), 2),
                "connected": sum(r.open for r in self.readers), "min_last": min(lasts, default=0),
                "max_last": max(lasts, default=0), "frames": sum(r.tally.frames for r in self.readers),
                "reconnects": sum(r.reconnects for r in self.readers),
                "out_of_order": sum(r.tally.out_of_order for r in self.readers),
                "errors": sum(len(r.tally.errors) for r in self.readers),
                "check_failures": sum(r.tally.check_failures for r in self.readers)}

    def report(self, db_path: str) -> dict:
        conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=30)
        try:
            expected = array("q", (s for (s,) in conn.execute("SELECT seq FROM labels ORDER BY seq")))
        finally:
            conn.close()
        exp_set = set(expected)
        readers = []
        for r in self.readers:
            t = r.tally
            exact = t.seqs == expected
            row = {"reader": r.n, "labels": len(t.seqs), "exact": exact, "reconnects": r.reconnects,
                   "out_of_order": t.out_of_order, "errors": t.errors[:3], "close_codes": t.close_codes,
                   "checked": t.checked, "check_failures": t.check_failures}
            if not exact:
                got = set(t.seqs)
                row.update(missing=len(exp_set - got), unexpected=len(got - exp_set), duplicates=len(t.seqs) - len(got),
                           first_missing=min(exp_set - got, default=None))
            readers.append(row)
        return {"expected_labels": len(expected), "expected_first": expected[0] if expected else None,
                "expected_last": expected[-1] if expected else None,
                "readers": len(readers), "readers_exact": sum(r["exact"] for r in readers),
                "failing": [r for r in readers if not r["exact"]][:10],
                "checked_frames": sum(r["checked"] for r in readers),
                "check_failures": sum(r["check_failures"] for r in readers), "reconnects": sum(r["reconnects"] for r in readers)}


async def main_async(a: argparse.Namespace) -> None:
    subs = Subscribers(a.host, a.port, a.readers, a.cursor)
    loop = asyncio.get_running_loop()
    for i, r in enumerate(subs.readers):
        r.connect(a.cursor)
        if i % 10 == 9:
            await asyncio.sleep(0.05)
    deadline = time.time() + 30
    while sum(r.open for r in subs.readers) < a.readers and time.time() < deadline:
        await asyncio.sleep(0.05)
    print(json.dumps({"ready": sum(r.open for r in subs.readers)}), flush=True)

    async def periodic() -> None:
        while True:
            await asyncio.sleep(5)
            print(json.dumps({"stats": subs.stats()}), flush=True)

    ticker = asyncio.create_task(periodic())
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            break
        cmd, *args = line.split()
        if cmd == "stats":
            print(json.dumps({"stats": subs.stats()}), flush=True)
        elif cmd == "slow":
            try:
                res = await subs.slow.connect(int(args[0]) if args else 0)
            except OSError as exc:
                res = {"connected": False, "error": repr(exc)}
            print(json.dumps({"slow": res, "t": time.time()}), flush=True)
        elif cmd == "slow-drain":
            res = await subs.slow.drain() if subs.slow.sock else {"never_connected": True}
            print(json.dumps({"slow_drain": res, "t": time.time()}), flush=True)
        elif cmd == "hold":  # the daemon is about to stop: do not reconnect
            subs.stopping = True
        elif cmd == "report":
            subs.stopping = True
            print(json.dumps({"report": subs.report(args[0]), "stats": subs.stats()}), flush=True)
        elif cmd == "quit":
            break
    subs.stopping = True
    ticker.cancel()
    for r in subs.readers:
        if r.transport is not None:
            r.transport.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--readers", type=int, default=49)
    ap.add_argument("--cursor", type=int, default=0, help="the readers' first cursor (-1: live only)")
    a = ap.parse_args()
    a.cursor = None if a.cursor < 0 else a.cursor
    asyncio.run(main_async(a))


if __name__ == "__main__":
    main()
