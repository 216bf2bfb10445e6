"""A local `com.atproto.sync.subscribeRepos` server serving real DAG-CBOR frames, with fault knobs.

    relay = FakeRelay([commit_frame(1, DID, "rev1", [("create", "fm.plyr.track", "3k1", record)])])
    await relay.start()            # ws://127.0.0.1:<port>
    relay.faults[0] = Fault("drop", after=2)   # first connection: abort TCP after 2 frames
    relay.publish(frame)           # a live frame for connected subscribers
    await relay.restart()          # stop and start on the same port

`commit_frame(..., signer=SigningKey)` builds a verifiable commit instead: its records in a real
(one-node) MST, the commit signed as the repository spec says; `tamper=` breaks it after signing.

Cursor handling follows the spec: `?cursor=N` sends the stored frames with seq > N (frames
without a seq, such as a garbage frame, go with their position in the list), then live
frames; no cursor sends live frames only; a cursor above the head gets a FutureCursor error.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal
from urllib.parse import parse_qs, urlsplit

import libipld
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from tests.fakes.car import block, make_car

if TYPE_CHECKING:
    from firehose_mod.labels.signing import SigningKey

SUBSCRIBE_PATH = "/xrpc/com.atproto.sync.subscribeRepos"
TIME = "2025-01-01T00:00:00.000Z"
OTHER_DID = "did:plc:" + "z" * 24


# --------------------------------------------------------------------------- frames


def _frame(t: str, body: dict) -> bytes:
    return libipld.encode_dag_cbor({"op": 1, "t": t}) + libipld.encode_dag_cbor(body)


def mst_node(leaves: dict[str, bytes]) -> tuple[bytes, bytes]:
    """(cid, block) of a one-node MST holding `leaves` (path -> value CID), keys prefix-compressed.
    (A real repo spreads keys over layers by hash; a lookup walks either shape the same way.)"""
    entries, prev = [], b""
    for path in sorted(leaves, key=str.encode):
        key = path.encode()
        p = 0
        while p < min(len(prev), len(key)) and prev[p] == key[p]:
            p += 1
        entries.append({"p": p, "k": key[p:], "v": leaves[path], "t": None})
        prev = key
    return block({"e": entries, "l": None})


def signed_commit(did: str, rev: str, data_cid: bytes, signer: SigningKey, *, version: int = 3) -> dict:
    """A commit object signed as the repository spec says (DAG-CBOR without `sig`, SHA-256)."""
    unsigned = {"did": did, "version": version, "data": data_cid, "rev": rev, "prev": None}
    return {**unsigned, "sig": signer.sign_bytes(libipld.encode_dag_cbor(unsigned))}


def commit_frame(
    seq: int, did: str, rev: str, ops: list[tuple[str, str, str, dict | None]], *,
    omit_blocks: frozenset[str] | set[str] = frozenset(), too_big: bool = False, time: str = TIME,
    signer: SigningKey | None = None, tamper: Literal["record", "commit", "did"] | None = None,
    leaves: dict[str, bytes] | None = None,
) -> bytes:
    """A `#commit` frame. `ops` = [(action, collection, rkey, record or None)]; each record is
    DAG-CBOR encoded into a block of the CAR (except rkeys in `omit_blocks`), with a commit
    block as the CAR root. Without `signer`: an empty MST and a junk sig (the decoder never
    walks it). With `signer`: the op records (plus `leaves`, other paths -> CIDs in the repo) in
    a one-node MST, the commit signed by `signer`. `tamper` then breaks it after signing:
    "record" swaps the first record for another (op CID and block consistent, tree not),
    "commit" changes the signed commit's rev, "did" signs a commit naming `OTHER_DID`."""
    blocks: list[tuple[bytes, bytes]] = []
    wire_ops = []
    tree = dict(leaves or {})
    for action, collection, rkey, record in ops:
        cid = None
        if record is not None:
            cid, data = block(record)
            tree[f"{collection}/{rkey}"] = cid
            if tamper == "record" and not any(op["cid"] for op in wire_ops):
                cid, data = block({**record, "title": "swapped by the relay"})
            if rkey not in omit_blocks:
                blocks.append((cid, data))
        else:
            tree.pop(f"{collection}/{rkey}", None)
        wire_ops.append({"action": action, "path": f"{collection}/{rkey}", "cid": cid})
    if signer is None:
        data_cid, data_block = block({"e": [], "l": None})  # an empty MST node
        commit = {"did": did, "version": 3, "data": data_cid, "rev": rev, "prev": None, "sig": bytes(range(64))}
    else:
        data_cid, data_block = mst_node(tree)
        # "did": a properly signed commit of another repo, replayed under `did`
        commit = signed_commit(OTHER_DID if tamper == "did" else did, rev, data_cid, signer)
        if tamper == "commit":
            commit["rev"] = rev + "x"
    commit_cid, commit_block = block(commit)
    car = make_car(commit_cid, [(commit_cid, commit_block), (data_cid, data_block), *blocks])
    return _frame("#commit", {
        "seq": seq, "rebase": False, "tooBig": too_big, "repo": did, "commit": commit_cid, "rev": rev,
        "since": None, "blocks": b"" if too_big else car, "ops": wire_ops, "blobs": [], "time": time,
    })


def identity_frame(seq: int, did: str, handle: str | None = None, time: str = TIME) -> bytes:
    body: dict = {"seq": seq, "did": did, "time": time}
    if handle is not None:
        body["handle"] = handle
    return _frame("#identity", body)


def account_frame(seq: int, did: str, active: bool, status: str | None = None, time: str = TIME) -> bytes:
    body: dict = {"seq": seq, "did": did, "time": time, "active": active}
    if status is not None:
        body["status"] = status
    return _frame("#account", body)


def sync_frame(seq: int, did: str, rev: str = "rev", time: str = TIME) -> bytes:
    return _frame("#sync", {"seq": seq, "did": did, "rev": rev, "blocks": b"", "time": time})


def info_frame(name: str, message: str | None = None) -> bytes:
    body = {"name": name} if message is None else {"name": name, "message": message}
    return _frame("#info", body)


def error_frame(error: str, message: str | None = None) -> bytes:
    body = {"error": error} if message is None else {"error": error, "message": message}
    return libipld.encode_dag_cbor({"op": -1}) + libipld.encode_dag_cbor(body)


def garbage_frame() -> bytes:
    return b"\xff\x00 this is not DAG-CBOR \x9f\x9f"


def frame_seq(frame: bytes) -> int | None:
    """The seq of a frame, None for frames without one (errors, #info, garbage)."""
    try:
        parts = libipld.decode_dag_cbor_multi(frame)
    except ValueError:
        return None
    if len(parts) == 2 and isinstance(parts[1], dict) and isinstance(parts[1].get("seq"), int):
        return parts[1]["seq"]
    return None


# --------------------------------------------------------------------------- server


@dataclass
class Fault:
    """What to do on one connection after `after` frames were sent on it.

    drop: abort the TCP connection (no close frame); silent: send nothing more, keep the socket
    open; close: a clean close (code 1000).
    """

    kind: Literal["drop", "silent", "close"]
    after: int = 0


@dataclass
class FakeRelay:
    frames: list[bytes] = field(default_factory=list)
    faults: dict[int, Fault] = field(default_factory=dict)  # connection number (from 0) -> fault
    port: int = 0
    requests: list[int | None] = field(default_factory=list)  # the cursor of each connection
    _server: Server | None = field(default=None, repr=False)
    _tick: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def connections(self) -> int:
        return len(self.requests)

    async def start(self) -> FakeRelay:
        self._server = await serve(self._handler, "127.0.0.1", self.port, compression=None, max_size=2**20)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()  # closes open connections too (code 1001)
            await self._server.wait_closed()
            self._server = None

    async def restart(self) -> None:
        await self.stop()
        await self.start()

    async def __aenter__(self) -> FakeRelay:
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    def publish(self, *frames: bytes) -> None:
        """Append live frames; connected subscribers get them."""
        self.frames.extend(frames)
        tick, self._tick = self._tick, asyncio.Event()
        tick.set()

    def _start_index(self, cursor: int | None) -> int:
        if cursor is None:
            return len(self.frames)
        for i, f in enumerate(self.frames):
            seq = frame_seq(f)
            if seq is not None and seq > cursor:
                # frames without a seq just before it belong to the same position
                while i > 0 and frame_seq(self.frames[i - 1]) is None:
                    i -= 1
                return i
        return len(self.frames)

    def _head(self) -> int:
        seqs = [s for s in map(frame_seq, self.frames) if s is not None]
        return max(seqs, default=0)

    async def _handler(self, ws: ServerConnection) -> None:
        try:
            await self._serve(ws)
        except ConnectionClosed:
            pass

    async def _serve(self, ws: ServerConnection) -> None:
        url = urlsplit(ws.request.path)
        conn = len(self.requests)
        if url.path != SUBSCRIBE_PATH:
            self.requests.append(None)
            await ws.close(1008, "not found")
            return
        raw = parse_qs(url.query).get("cursor", [None])[0]
        cursor = int(raw) if raw is not None else None
        self.requests.append(cursor)
        if cursor is not None and cursor > self._head():
            await ws.send(error_frame("FutureCursor", "cursor in the future"))
            await ws.close(1008, "FutureCursor")
            return
        fault = self.faults.get(conn)
        i, sent = self._start_index(cursor), 0
        while True:
            if fault is not None and sent >= fault.after:
                if fault.kind == "drop":
                    ws.transport.abort()
                elif fault.kind == "close":
                    await ws.close()
                else:
                    await ws.wait_closed()
                return
            tick = self._tick
            if i < len(self.frames):
                await ws.send(self.frames[i])
                i += 1
                sent += 1
                continue
            await _first(asyncio.ensure_future(tick.wait()), asyncio.ensure_future(ws.wait_closed()))
            if ws.state.name in ("CLOSING", "CLOSED"):
                return


async def _first(*futures: asyncio.Future):
    done, pending = await asyncio.wait(futures, return_when=asyncio.FIRST_COMPLETED)
    for p in pending:
        p.cancel()
    return done, pending
