"""A local Jetstream speaking the v1 `/subscribe` wire format, for tests and benchmarks.

JSON text frames, or binary zstd frames compressed with Jetstream's published dictionary
when the client asks `compress=true`; `wantedCollections` (exact or `prefix.*`) filters
commits as the real server does; `cursor` (unix µs) replays events with time_us >= cursor.
Fault knobs reproduce what the network does: a TCP reset after K frames, a garbage frame,
silence with the socket open, a restart on the same port.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

import anyio
import zstandard
from websockets.asyncio.server import ServerConnection, serve

from firehose_mod.ingest.jetstream import zstd_dictionary

T0 = 1_764_000_000_000_000  # 2025-11-24, unix µs


def real_cid(data: bytes) -> str:
    """A valid CIDv1 (dag-cbor, sha2-256) string, as Jetstream carries for records."""
    import hashlib

    import libipld

    return libipld.encode_cid(b"\x01\x71\x12\x20" + hashlib.sha256(data).digest())


def tid(n: int) -> str:
    alphabet = "234567abcdefghijklmnopqrstuvwxyz"
    v, out = 1_700_000_000_000_000 + n, []
    for _ in range(13):
        out.append(alphabet[v & 31])
        v >>= 5
    return "".join(reversed(out))


def track_record(title: str, artist: str = "Some Artist", **extra) -> dict:
    record = {
        "$type": "fm.plyr.track",
        "title": title,
        "artist": artist,
        "fileType": "mp3",
        "createdAt": "2026-11-24T10:00:00.000Z",
        "audioUrl": "https://cdn.plyr.fm/audio/abc.mp3",
        "imageUrl": "https://cdn.plyr.fm/images/abc.jpg",
        "duration": 215,
    }
    record.update(extra)
    return record


def commit(time_us: int, did: str, collection: str, rkey: str, operation: str, record: dict | None = None,
           cid: str | None = None, rev: str | None = None) -> dict:
    c: dict = {"rev": rev or tid(time_us), "operation": operation, "collection": collection, "rkey": rkey}
    if operation != "delete":
        c["record"] = record
        c["cid"] = cid or real_cid(json.dumps([did, rkey, record, time_us], sort_keys=True).encode())
    return {"did": did, "time_us": time_us, "kind": "commit", "commit": c}


def other_commit(time_us: int, rng: random.Random) -> dict:
    """Background network traffic: posts and likes from random accounts."""
    did = f"did:plc:{rng.randrange(10**12):024d}"
    if rng.random() < 0.5:
        record = {"$type": "app.bsky.feed.post", "text": "hello " * rng.randrange(1, 30), "createdAt": "2026-11-24T10:00:00Z",
                  "langs": ["en"]}
        return commit(time_us, did, "app.bsky.feed.post", tid(time_us), "create", record)
    record = {"$type": "app.bsky.feed.like", "createdAt": "2026-11-24T10:00:00Z",
              "subject": {"uri": f"at://{did}/app.bsky.feed.post/{tid(time_us - 7)}", "cid": "bafyreib2rxk3ryblouzq"}}
    return commit(time_us, did, "app.bsky.feed.like", tid(time_us), "create", record)


def network(n_tracks: int, noise_per_track: int = 20, seed: int = 7) -> list[dict]:
    """Realistic mixed traffic: mostly posts and likes, now and then a plyr.fm track."""
    rng = random.Random(seed)
    events, t = [], T0
    for i in range(n_tracks):
        for _ in range(noise_per_track):
            t += rng.randrange(50, 400)
            events.append(other_commit(t, rng))
        t += 100
        events.append(commit(t, f"did:plc:artist{i % 7}", "fm.plyr.track", f"3ktrack{i:05d}", "create",
                             track_record(f"Track {i}")))
    return events


def identity(time_us: int, did: str, handle: str) -> dict:
    return {"did": did, "time_us": time_us, "kind": "identity",
            "identity": {"did": did, "handle": handle, "seq": 1, "time": "2026-11-24T10:00:00.000Z"}}


def account(time_us: int, did: str, active: bool, status: str | None = None) -> dict:
    body = {"active": active, "did": did, "seq": 1, "time": "2026-11-24T10:00:00.000Z"}
    if status:
        body["status"] = status
    return {"did": did, "time_us": time_us, "kind": "account", "account": body}


@dataclass
class Faults:
    drop_after: int | None = None  # abort the TCP connection after this many frames (once)
    garbage_at: int | None = None  # send a garbage frame before frame number N (once)
    silent_after: int | None = None  # stop sending after N frames, keep the socket open (once)


@dataclass
class FakeJetstream:
    events: list[dict | bytes] = field(default_factory=list)  # dicts, or raw bytes sent verbatim
    faults: Faults = field(default_factory=Faults)
    connections: list[str] = field(default_factory=list)
    port: int = 0
    pace: float = 0.0  # seconds between frames, to stream like a live network
    live: anyio.Event = field(default_factory=anyio.Event)
    sent: list[int | None] = field(default_factory=list)  # time_us of every event frame sent, in order
    sent_by: list[list[int | None]] = field(default_factory=list)  # the same, per connection

    def _wanted(self, query: dict) -> tuple[set[str], tuple[str, ...]]:
        wanted = query.get("wantedCollections", [])
        return {w for w in wanted if not w.endswith("*")}, tuple(w[:-1] for w in wanted if w.endswith("*"))

    async def handler(self, ws: ServerConnection) -> None:
        url = urlsplit(ws.request.path)
        self.connections.append(ws.request.path)
        self.sent_by.append(mine := [])
        if url.path != "/subscribe":
            await ws.close(1008, "not found")
            return
        query = parse_qs(url.query)
        exact, prefixes = self._wanted(query)
        cursor = int(query["cursor"][0]) if "cursor" in query else None
        compress = query.get("compress", ["false"])[0] == "true"
        encoder = zstandard.ZstdCompressor(dict_data=zstd_dictionary()) if compress else None
        sent = 0
        faults = self.faults
        index = 0
        while True:
            while index >= len(self.events):
                await self.live.wait()
                self.live = anyio.Event()
            ev = self.events[index]
            index += 1
            if isinstance(ev, dict):
                if cursor is not None and ev.get("time_us", 0) < cursor:
                    continue
                if ev.get("kind") == "commit" and (exact or prefixes):
                    coll = ev["commit"].get("collection", "")
                    if coll not in exact and not any(coll.startswith(p) for p in prefixes):
                        continue
                payload = json.dumps(ev, separators=(",", ":")).encode()
            else:
                payload = ev
            if faults.garbage_at is not None and sent == faults.garbage_at:
                faults.garbage_at = None
                await ws.send(b"\x00\xffnot json at all" if not compress else b"\x28\xb5\x2f\xfd garbage")
            if faults.silent_after is not None and sent == faults.silent_after:
                faults.silent_after = None
                await anyio.sleep_forever()
            if faults.drop_after is not None and sent == faults.drop_after:
                faults.drop_after = None
                ws.transport.abort()
                return
            await (ws.send(encoder.compress(payload)) if encoder else ws.send(payload.decode()))
            self.sent.append(ev.get("time_us") if isinstance(ev, dict) else None)
            mine.append(self.sent[-1])
            sent += 1
            if self.pace:
                await anyio.sleep(self.pace)

    def append(self, *events: dict | bytes) -> None:
        self.events.extend(events)
        self.live.set()

    async def serve(self, *, task_status=anyio.TASK_STATUS_IGNORED) -> None:
        async with serve(self.handler, "127.0.0.1", self.port, compression=None) as server:
            self.port = server.sockets[0].getsockname()[1]
            task_status.started(self.port)
            await anyio.sleep_forever()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"
