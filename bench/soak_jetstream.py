"""A live Jetstream for the soak: the whole network's traffic at a steady rate, stamped with the clock.

    python3 bench/soak_jetstream.py --rate 4000 --media-base http://127.0.0.1:PORT

Speaks Jetstream v1 `/subscribe` (text JSON, or one zstd frame per event with Jetstream's
dictionary when the client asks `compress=true`, as the daemon does by default). Like the ingest
benchmark's replay server it filters nothing: `wantedCollections` and `cursor` are ignored and
every client gets the live stream (the worst case for ingest; a filtering Jetstream would send the
daemon only its ~0.1 % of track events and the identity/account events).

Traffic, from bench/gen_jetstream.py: a pool of `--pool` non-track events in the network's mix
(likes, follows, posts, reposts, deletes, blocks, profiles, identity/account events, some for the
track artists) is generated once and replayed in a loop; every event gets `time_us` = the wall
clock when it is written (strictly increasing), so the daemon's committed cursor read against the
clock is its ingest lag. Every `--track-every`-th event is an `fm.plyr.track` event made fresh
(unique rkey and cid): 70 % creates, 20 % updates, 10 % deletes by gen_jetstream's 60 artists,
lexicon-valid, with titles that read like song titles. `--cover-fraction` of them carry an
`imageUrl` and `--audio-fraction` an `audioUrl` on the `--media-base` server (one of `--covers`
and `--clips` files, a unique query string per track); the others carry no media (no URL, no
audioBlob) so the scanners stay cheap.

stdout: one JSON line `{"port": P}` when listening, then `{"stats": {...}}` every 5 s.
stdin: `stop` ends the traffic (connections stay open); EOF exits.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import base64
import hashlib
import json
import random
import socket
import sys
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

HERE = Path(__file__).resolve().parent
for p in (str(HERE.parent), str(HERE)):
    if p not in sys.path:
        sys.path.insert(0, p)

import zstandard  # noqa: E402

from firehose_mod.ingest.jetstream import zstd_dictionary  # noqa: E402
from firehose_mod.ingest.lexicon import validate_track  # noqa: E402
from gen_jetstream import TRACK, Gen, dumps, next_event, wire_frame  # noqa: E402
from ingest_bench import WS_GUID, _control, _read_client_frame  # noqa: E402
from tests.fakes.jetstream import commit as js_commit, track_record  # noqa: E402

TICK = 0.01  # seconds between writes: 40 events a write at 4,000 events/s
STATS_EVERY = 5.0
MAX_BUFFER = 64 * 1024 * 1024  # a client this far behind is dropped, as Jetstream drops slow consumers

ADJ = ("Neon", "Midnight", "Golden", "Broken", "Electric", "Quiet", "Velvet", "Paper", "Silver", "Lost", "Wild",
       "Hollow", "Northern", "Crystal", "Lonely", "Burning", "Endless", "Faded", "Summer", "Winter")
NOUN = ("Drive", "Hearts", "Skyline", "静寂", "Rain", "Tides", "Signals", "Echoes", "Garden", "Highway", "Static",
        "Lights", "Sirens", "Shadows", "Horizon", "Coração", "Waves", "Machines", "Dreams", "River")
SUFFIX = ("", "", "", "", " (Remix)", " (Live)", " (Demo)", " feat. Mira", " - Radio Edit", " (Acoustic)")
RUDE = ("shit", "fuck")  # ~1 % of titles: the text scanner finds something and opens a review


def song_title(rng: random.Random) -> str:
    if rng.random() < 0.01:
        return f"{rng.choice(ADJ)} {rng.choice(RUDE).title()}"
    if rng.random() < 0.2:
        return f"{rng.choice(ADJ)} {rng.choice(NOUN)} in the {rng.choice(NOUN)}{rng.choice(SUFFIX)}"
    return f"{rng.choice(ADJ)} {rng.choice(NOUN)}{rng.choice(SUFFIX)}"


class Traffic:
    """The event stream: pooled network events and fresh track events, as v1 JSON bytes."""

    def __init__(self, pool: int, track_every: int, media_base: str, cover_fraction: float,
                 audio_fraction: float, covers: int, clips: int, seed: int = 11):
        self.g = Gen(seed)
        self.track_every = track_every
        self.media_base = media_base.rstrip("/")
        self.cover_fraction, self.audio_fraction = cover_fraction, audio_fraction
        self.covers, self.clips = covers, clips
        self.pool: list[tuple[bytes, bytes]] = []  # (JSON up to time_us's value, the rest)
        self.meta: list[tuple[str, str] | None] = []  # (kind, did) of the pool's identity/account events
        self.sent_log = None  # --sent-log: one JSON line per track/identity/account event written
        for i in range(pool + pool // max(1, track_every) + 1):
            if i % 1000 == 500:  # gen_jetstream's track slot: ours are made live
                continue
            raw = dumps(next_event(self.g, i))
            head, _, tail = raw.partition(b'"time_us":')
            digits = len(tail) - len(tail.lstrip(b"0123456789"))
            self.pool.append((head + b'"time_us":', tail[digits:]))
            ev = json.loads(raw)
            self.meta.append((ev["kind"], ev["did"]) if ev.get("kind") in ("identity", "account") else None)
            if len(self.pool) == pool:
                break
        self.i = 0
        self.counts = {"events": 0, "track_create": 0, "track_update": 0, "track_delete": 0, "with_cover": 0,
                       "with_audio": 0}
        self.live: list[tuple[str, str]] = []  # (did, rkey) of tracks created and not deleted

    def next(self, t: int) -> bytes:
        self.i += 1
        self.counts["events"] += 1
        if self.track_every and self.i % self.track_every == 0:
            ev = self._track_event(t)
            if self.sent_log is not None:
                c = ev["commit"]
                self.sent_log.write(json.dumps({"t": t, "kind": "commit", "did": ev["did"], "rkey": c["rkey"],
                                                "op": c["operation"], "cid": c.get("cid")}) + "\n")
            return dumps(ev)
        k = self.i % len(self.pool)
        head, tail = self.pool[k]
        if self.sent_log is not None and self.meta[k] is not None:
            self.sent_log.write(json.dumps({"t": t, "kind": self.meta[k][0], "did": self.meta[k][1]}) + "\n")
        return head + str(t).encode() + tail

    def _track_event(self, t: int) -> dict:
        g, r = self.g, self.g.rng
        g.t = t
        x = r.random()
        if x < 0.7 or len(self.live) < 5:
            did, rkey, op = r.choice(g.artists), g.tid(), "create"
            self.live.append((did, rkey))
        else:
            k = r.randrange(len(self.live))
            did, rkey = self.live[k]
            op = "update" if x < 0.9 else "delete"
            if op == "delete":
                self.live[k] = self.live[-1]
                self.live.pop()
        self.counts[f"track_{op}"] += 1
        if op == "delete":
            return js_commit(t, did, TRACK, rkey, "delete", rev=g.tid())
        return js_commit(t, did, TRACK, rkey, op, self._record(rkey), cid=g.cid(), rev=g.tid())

    def _record(self, rkey: str) -> dict:
        g, r = self.g, self.g.rng
        extra: dict = {"album": g.text(1, 4)[:80], "duration": r.randrange(60, 400), "createdAt": g.iso(g.t),
                       "fileType": r.choice(("mp3", "mp3", "m4a", "flac", "wav"))}
        if r.random() < 0.5:
            extra["description"] = g.text(5, 60)
        if r.random() < 0.2:
            extra["features"] = [{"did": r.choice(g.artists), "handle": "someone.bsky.social"}]
        rec = track_record(song_title(r), r.choice(ADJ) + " " + r.choice(NOUN), **extra)
        del rec["audioUrl"], rec["imageUrl"]  # track_record's defaults point at the real CDN
        if r.random() < self.cover_fraction:
            rec["imageUrl"] = f"{self.media_base}/cover/{r.randrange(self.covers)}.jpg?v={rkey}"
            self.counts["with_cover"] += 1
        if r.random() < self.audio_fraction:
            rec["audioUrl"] = f"{self.media_base}/audio/{r.randrange(self.clips)}.mp3?v={rkey}"
            self.counts["with_audio"] += 1
        assert not validate_track(rec), validate_track(rec)
        return rec


class Client:
    def __init__(self, writer: asyncio.StreamWriter, compress: bool, path: str):
        self.writer, self.compress, self.path = writer, compress, path
        self.pending: list[bytes] = []  # pongs and close replies, written between data frames
        self.closed = False
        self.frames = 0


class LiveJetstream:
    def __init__(self, traffic: Traffic, rate: float):
        self.traffic, self.rate = traffic, rate
        self.clients: list[Client] = []
        self.connections: list[dict] = []
        self.zc = zstandard.ZstdCompressor(dict_data=zstd_dictionary(), level=3, write_content_size=True,
                                           write_checksum=False)
        self.running = True
        self.last_time_us = 0
        self.dropped = 0
        self.max_buffer = 0
        self.behind_max = 0.0  # how far the writer fell behind its schedule, seconds
        self.replay_window = 0.0  # --replay-window: seconds of history kept to honour a client's cursor
        self.history: collections.deque[tuple[int, bytes]] = collections.deque()
        self.replayed: list[dict] = []
        self.sent_log = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client = None
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            target = head[0].split(" ")[1]
            headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in head[1:] if ":" in h)}
            url = urlsplit(target)
            if url.path != "/subscribe" or headers.get("upgrade", "").lower() != "websocket":
                writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                return
            accept = base64.b64encode(hashlib.sha1(headers["sec-websocket-key"].encode() + WS_GUID).digest())
            writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                         b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n")
            compress = parse_qs(url.query).get("compress", ["false"])[0] == "true"
            client = Client(writer, compress, target)
            cursor = parse_qs(url.query).get("cursor", [None])[0]
            if self.replay_window and cursor is not None:
                # As Jetstream does: every event with time_us >= cursor still in the window, then live.
                # No await between this write and joining self.clients, so nothing is missed or doubled.
                cur = int(cursor)
                backlog = [p for (t, p) in self.history if t >= cur]
                oldest = self.history[0][0] if self.history else None
                if backlog:
                    writer.write(b"".join(wire_frame(self.zc.compress(p) if compress else p, compress)
                                          for p in backlog))
                info = {"cursor": cur, "replayed": len(backlog), "oldest_kept": oldest,
                        "cursor_in_window": oldest is not None and oldest <= cur}
                self.replayed.append(info)
                print(json.dumps({"event": {"replay": info}}), flush=True)
            self.connections.append({"at": time.time(), "path": target[:300]})
            print(json.dumps({"connection": target[:300]}), flush=True)
            self.clients.append(client)
            if self.sent_log is not None and self.traffic.sent_log is None:
                self.traffic.sent_log = self.sent_log
            while True:  # answer pings and closes; data frames come from the writer task
                op, data = await _read_client_frame(reader)
                if op == 0x9:
                    client.pending.append(_control(0xA, data))
                elif op == 0x8:
                    writer.write(b"".join(client.pending) + _control(0x8, data[:2]))
                    return
        except (asyncio.IncompleteReadError, ConnectionError, OSError, IndexError, KeyError):
            pass
        finally:
            if client is not None:
                client.closed = True
                if client in self.clients:
                    self.clients.remove(client)
            writer.close()

    async def pump(self) -> None:
        """Write the events due since the last tick to every client, one write per client a tick."""
        start = time.monotonic()
        due_sent = 0
        while True:
            await asyncio.sleep(TICK)
            if not self.running:
                continue
            now = time.monotonic()
            due = int((now - start) * self.rate) - due_sent
            if due <= 0:
                continue
            due_sent += due
            self.behind_max = max(self.behind_max, due / self.rate - TICK)  # a late tick: the loop stalled
            t = max(int(time.time() * 1e6), self.last_time_us + 1)
            payloads = [self.traffic.next(t + k) for k in range(due)]
            self.last_time_us = t + due - 1
            if self.replay_window:
                self.history.extend((t + k, p) for k, p in enumerate(payloads))
                horizon = t - int(self.replay_window * 1e6)
                while self.history and self.history[0][0] < horizon:
                    self.history.popleft()
            if not self.clients:
                continue
            plain = zstd = None
            for c in list(self.clients):
                if c.compress:
                    zstd = zstd or b"".join(wire_frame(self.zc.compress(p), True) for p in payloads)
                    data = zstd
                else:
                    plain = plain or b"".join(wire_frame(p, False) for p in payloads)
                    data = plain
                if c.pending:
                    data = b"".join(c.pending) + data
                    c.pending.clear()
                c.writer.write(data)
                c.frames += due
                size = c.writer.transport.get_write_buffer_size()
                self.max_buffer = max(self.max_buffer, size)
                if size > MAX_BUFFER:
                    self.dropped += 1
                    c.writer.transport.abort()
                    self.clients.remove(c)

    def stats(self) -> dict:
        buf = [c.writer.transport.get_write_buffer_size() for c in self.clients]
        return {"t": time.time(), "cpu_s": round(time.process_time(), 2), "last_time_us": self.last_time_us,
                **self.traffic.counts, "clients": len(self.clients), "connections": len(self.connections),
                "write_buffer": max(buf, default=0), "write_buffer_max": self.max_buffer, "dropped": self.dropped,
                "behind_max_s": round(self.behind_max, 3), "running": self.running,
                "history": len(self.history), "replays": len(self.replayed)}


async def main_async(a: argparse.Namespace) -> None:
    traffic = Traffic(a.pool, a.track_every, a.media_base, a.cover_fraction, a.audio_fraction, a.covers, a.clips)
    js = LiveJetstream(traffic, a.rate)
    js.replay_window = a.replay_window
    if a.sent_log:  # from the first connection on: what was sent before it reached no one
        js.sent_log = open(a.sent_log, "w", buffering=1 << 20)
    server = await asyncio.start_server(js.handle, "127.0.0.1", a.port, limit=1 << 20)
    print(json.dumps({"port": server.sockets[0].getsockname()[1], "pool": len(traffic.pool)}), flush=True)
    loop = asyncio.get_running_loop()
    pump = asyncio.create_task(js.pump())

    async def report() -> None:
        while True:
            await asyncio.sleep(STATS_EVERY)
            print(json.dumps({"stats": js.stats()}), flush=True)

    reporter = asyncio.create_task(report())
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            break
        if line.strip() == "stop":
            js.running = False
            if traffic.sent_log is not None:
                traffic.sent_log.flush()
            print(json.dumps({"stopped": js.stats()}), flush=True)
    pump.cancel()
    reporter.cancel()
    server.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", type=float, default=4000, help="events per second")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--pool", type=int, default=60_000, help="distinct non-track events, replayed in a loop")
    ap.add_argument("--track-every", type=int, default=1000, help="one fm.plyr.track event every N events")
    ap.add_argument("--media-base", default="http://127.0.0.1:9", help="media server base URL")
    ap.add_argument("--cover-fraction", type=float, default=0.1)
    ap.add_argument("--audio-fraction", type=float, default=0.005)
    ap.add_argument("--covers", type=int, default=6)
    ap.add_argument("--clips", type=int, default=3)
    ap.add_argument("--replay-window", type=float, default=0.0,
                    help="keep this many seconds of events and honour a client's cursor from them (0: ignore cursors)")
    ap.add_argument("--sent-log", default="", help="write every track/identity/account event sent, one JSON line each")
    asyncio.run(main_async(ap.parse_args()))


if __name__ == "__main__":
    main()
