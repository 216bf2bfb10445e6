"""A realistic, deterministic replay of the whole network for the ingest benchmark.

One pass generates N Jetstream events and writes them, pre-framed as the bytes a server puts on
the wire (unmasked WebSocket frames), in four encodings of the SAME events:

    v1.json.ws   Jetstream v1 `/subscribe`, text JSON                (what JetstreamSource reads)
    v1.zstd.ws   the same, `compress=true`: one zstd frame per event with Jetstream's dictionary
    v2.json.ws   Jetstream v2 `network.bsky.jetstream.subscribeEvents`, `xrpc.v1.json` text
                 frames (what the atproto SDK 0.0.73 Jetstream client reads; it speaks v2 only)
    v2.zstd.ws   the same, `zstdDictionary=<id>`, same dictionary

and, separately, a relay `subscribeRepos` replay of M DAG-CBOR `#commit` frames (firehose.ws)
with the same mix and track ratio. Each `.ws` file has a `.idx` beside it: frame-aligned offsets
every ~256 KiB, so the server can interleave pongs between frames.

The mix follows the public network's (likes dominate, then follows, reposts, posts, deletes, a few
blocks/profiles/list items/other app records, and rare identity/account events). About one event
in 1,000 is an `fm.plyr.track` create (70 %), update (20 %) or delete (10 %) by one of 60 artists;
some identity/account events concern those artists (the daemon keeps those).

Run directly to (re)build a cache: `python3 bench/gen_jetstream.py --events 100000`.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from array import array
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import libipld  # noqa: E402
import zstandard  # noqa: E402

from firehose_mod.ingest.jetstream import zstd_dictionary  # noqa: E402
from firehose_mod.ingest.lexicon import validate_track  # noqa: E402
from tests.fakes.car import block, make_car  # noqa: E402
from tests.fakes.jetstream import T0, commit as js_commit, track_record  # noqa: E402

GEN_VERSION = 4  # bump when the generated data changes
B32 = "abcdefghijklmnopqrstuvwxyz234567"
TID_CHARS = "234567abcdefghijklmnopqrstuvwxyz"
V2_NSID = "network.bsky.jetstream.subscribeEvents"
TRACK = "fm.plyr.track"
IDX_STEP = 256 * 1024

WORDS = ("the of and to in is it you that was for on are with as I his they be at one have this from "
         "or had by hot but some what there we can out other were all your when up use word how said an "
         "each she which do their time if will way about many then them would write like so these her long "
         "make thing see him two has look more day could go come did my sound no most number who over know "
         "water than call first people may down side been now find any new work part take get place made "
         "live where after back little only round man year came show every good me give our under name very "
         "music album song track listen tonight mix live set remix vinyl release drop beat bass guitar").split()
EMOJI = ["🎶", "🔥", "✨", "💙", "😂", "🦋", "🎧", "🙏", "❤️", "👀"]
LANGS = [["en"]] * 12 + [["pt"]] * 3 + [["ja"]] * 2 + [["es"], ["de"], ["fr"], ["en", "pt"], []]


def wire_frame(payload: bytes, binary: bool) -> bytes:
    """An unmasked (server to client) WebSocket data frame, FIN set."""
    n = len(payload)
    op = 0x82 if binary else 0x81
    if n < 126:
        return bytes((op, n)) + payload
    if n < 65536:
        return bytes((op, 126)) + n.to_bytes(2, "big") + payload
    return bytes((op, 127)) + n.to_bytes(8, "big") + payload


def iter_wire_frames(buf) -> "iter[memoryview]":
    """The payloads of a file of unmasked WebSocket frames (for the decode-only measurement)."""
    mv = memoryview(buf)
    pos, end = 0, len(mv)
    while pos < end:
        b1 = mv[pos + 1] & 0x7F
        pos += 2
        if b1 == 126:
            n = int.from_bytes(mv[pos:pos + 2], "big")
            pos += 2
        elif b1 == 127:
            n = int.from_bytes(mv[pos:pos + 8], "big")
            pos += 8
        else:
            n = b1
        yield mv[pos:pos + n]
        pos += n


class WireWriter:
    """Appends frames to `<name>.ws` and records a frame-aligned index every IDX_STEP bytes."""

    def __init__(self, path: Path, binary: bool):
        self.path, self.binary = path, binary
        self.f = open(path.with_suffix(".ws.tmp"), "wb", buffering=4 * 1024 * 1024)
        self.pos = 0
        self.idx = array("Q", [0])
        self.payload_bytes = 0
        self.frames = 0

    def add(self, payload: bytes) -> None:
        if self.pos - self.idx[-1] >= IDX_STEP:
            self.idx.append(self.pos)
        fr = wire_frame(payload, self.binary)
        self.f.write(fr)
        self.pos += len(fr)
        self.payload_bytes += len(payload)
        self.frames += 1

    def close(self) -> dict:
        self.f.close()
        self.idx.append(self.pos)
        with open(self.path.with_suffix(".idx"), "wb") as f:
            self.idx.tofile(f)
        os.replace(self.path.with_suffix(".ws.tmp"), self.path)
        return {"file": self.path.name, "frames": self.frames, "wire_bytes": self.pos,
                "payload_bytes": self.payload_bytes, "avg_payload": round(self.payload_bytes / max(1, self.frames), 1)}


# --------------------------------------------------------------------------- realistic values


class Gen:
    def __init__(self, seed: int):
        self.rng = random.Random(seed)
        r = self.rng
        self.dids = [self.did() for _ in range(50_000)]
        self.artists = [self.did() for _ in range(60)]
        self.tracks_live: list[tuple[str, str, int]] = []  # (did, rkey, version) created, not deleted
        self.t = T0

    def did(self) -> str:
        return "did:plc:" + "".join(self.rng.choices(B32, k=24))

    def any_did(self) -> str:
        r = self.rng.random()
        if r < 0.02:  # a few did:web accounts
            return f"did:web:{''.join(self.rng.choices(B32[:26], k=8))}.example.com"
        return self.dids[self.rng.randrange(len(self.dids))]

    def cid(self, codec: int = 0x71) -> str:
        """A valid CIDv1 (sha2-256) string: bafyrei... (dag-cbor) or bafkrei... (raw, for blobs)."""
        return libipld.encode_cid(bytes((1, codec, 0x12, 0x20)) + self.rng.randbytes(32))

    def tid(self, t: int | None = None) -> str:
        v = ((t if t is not None else self.t) << 10) | self.rng.randrange(1024)
        out = []
        for _ in range(13):
            out.append(TID_CHARS[v & 31])
            v >>= 5
        return "".join(reversed(out))

    def iso(self, t_us: int, ms: bool = True) -> str:
        dt = datetime.fromtimestamp(t_us / 1e6, tz=timezone.utc)
        return dt.strftime("%Y-%m-%dT%H:%M:%S.") + (f"{dt.microsecond // 1000:03d}Z" if ms else f"{dt.microsecond:06d}Z")

    def text(self, lo: int, hi: int) -> str:
        r = self.rng
        n = min(hi, max(lo, int(r.lognormvariate(2.6, 0.8))))
        words = r.choices(WORDS, k=n)
        if r.random() < 0.3:
            words.append(r.choice(EMOJI))
        s = " ".join(words)
        return s[:300]

    def strong_ref(self) -> dict:
        return {"cid": self.cid(), "uri": f"at://{self.any_did()}/app.bsky.feed.post/{self.tid(self.t - self.rng.randrange(10**10))}"}

    def blob(self, mime: str, lo: int, hi: int) -> dict:
        return {"$type": "blob", "ref": {"$link": self.cid(0x55)}, "mimeType": mime,
                "size": self.rng.randrange(lo, hi)}

    # ---- records
    def post(self) -> dict:
        r = self.rng
        rec: dict = {"$type": "app.bsky.feed.post", "createdAt": self.iso(self.t), "langs": r.choice(LANGS),
                     "text": self.text(1, 55)}
        if r.random() < 0.45:
            root = self.strong_ref()
            rec["reply"] = {"parent": self.strong_ref() if r.random() < 0.6 else root, "root": root}
        x = r.random()
        if x < 0.15:
            rec["embed"] = {"$type": "app.bsky.embed.images", "images": [
                {"alt": self.text(0, 20) if r.random() < 0.4 else "", "aspectRatio": {"height": 1080, "width": 1440},
                 "image": self.blob("image/jpeg", 50_000, 900_000)} for _ in range(r.choice((1, 1, 1, 2, 4)))]}
        elif x < 0.22:
            rec["embed"] = {"$type": "app.bsky.embed.external", "external": {
                "uri": f"https://example.com/{self.tid()}", "title": self.text(3, 12), "description": self.text(5, 30),
                "thumb": self.blob("image/jpeg", 20_000, 200_000)}}
        elif x < 0.28:
            rec["embed"] = {"$type": "app.bsky.embed.record", "record": self.strong_ref()}
        if r.random() < 0.12:
            did = self.any_did()
            rec["facets"] = [{"$type": "app.bsky.richtext.facet", "features": [
                {"$type": "app.bsky.richtext.facet#mention", "did": did}], "index": {"byteEnd": 12, "byteStart": 0}}]
        return rec

    def like(self, kind: str = "app.bsky.feed.like") -> dict:
        rec = {"$type": kind, "createdAt": self.iso(self.t), "subject": self.strong_ref()}
        if self.rng.random() < 0.1:
            rec["via"] = self.strong_ref()
        return rec

    def follow(self, kind: str = "app.bsky.graph.follow") -> dict:
        return {"$type": kind, "createdAt": self.iso(self.t), "subject": self.any_did()}

    def profile(self) -> dict:
        return {"$type": "app.bsky.actor.profile", "avatar": self.blob("image/jpeg", 20_000, 900_000),
                "banner": self.blob("image/jpeg", 50_000, 900_000), "description": self.text(3, 40),
                "displayName": self.text(1, 4)[:64], "createdAt": self.iso(self.t)}

    def listitem(self) -> dict:
        return {"$type": "app.bsky.graph.listitem", "createdAt": self.iso(self.t), "subject": self.any_did(),
                "list": f"at://{self.any_did()}/app.bsky.graph.list/{self.tid(self.t - 10**9)}"}

    def threadgate(self) -> dict:
        return {"$type": "app.bsky.feed.threadgate", "createdAt": self.iso(self.t),
                "post": f"at://{self.any_did()}/app.bsky.feed.post/{self.tid()}",
                "allow": [{"$type": "app.bsky.feed.threadgate#mentionRule"}]}

    def track(self, version: int) -> dict:
        r = self.rng
        extra: dict = {"album": self.text(1, 4)[:80], "duration": r.randrange(60, 900),
                       "description": self.text(5, 60), "fileType": r.choice(("mp3", "mp3", "m4a", "flac", "wav")),
                       "audioUrl": f"https://cdn.plyr.fm/audio/{self.cid()[:24]}.mp3",
                       "imageUrl": f"https://cdn.plyr.fm/images/{self.cid()[:24]}.jpg",
                       "createdAt": self.iso(self.t)}
        if r.random() < 0.3:
            extra["features"] = [{"did": r.choice(self.artists), "handle": "someone.bsky.social"}]
        if r.random() < 0.5:
            extra["audioBlob"] = self.blob("audio/mpeg", 1_000_000, 20_000_000)
        rec = track_record(self.text(1, 8)[:100] + (f" (v{version})" if version else ""), self.text(1, 3)[:60], **extra)
        assert not validate_track(rec), validate_track(rec)
        return rec


# Mix of non-track events, cumulative weights (roughly the public network's).
MIX = [("like", 0.55), ("follow", 0.12), ("repost", 0.09), ("post", 0.11), ("delete", 0.075), ("block", 0.02),
       ("profile", 0.008), ("listitem", 0.012), ("threadgate", 0.005), ("other", 0.005), ("identity", 0.0025),
       ("account", 0.0025)]
DELETE_COLLS = ["app.bsky.feed.like"] * 6 + ["app.bsky.graph.follow"] * 2 + ["app.bsky.feed.post", "app.bsky.feed.repost"]


def _cum(mix):
    out, acc = [], 0.0
    tot = sum(w for _, w in mix)
    for k, w in mix:
        acc += w / tot
        out.append((acc, k))
    return out


CUM = _cum(MIX)


def next_event(g: Gen, i: int) -> dict:
    """The i-th event (v1 dict). Every 1000th position (offset 500) is an fm.plyr.track event."""
    r = g.rng
    g.t += r.randrange(20, 600)  # ~3,000 events/s of event time
    t = g.t
    if i % 1000 == 500:
        x = r.random()
        if x < 0.7 or len(g.tracks_live) < 5:
            did, rkey = r.choice(g.artists), g.tid()
            g.tracks_live.append((did, rkey, 0))
            return js_commit(t, did, TRACK, rkey, "create", g.track(0), cid=g.cid(), rev=g.tid())
        k = r.randrange(len(g.tracks_live))
        did, rkey, v = g.tracks_live[k]
        if x < 0.9:
            g.tracks_live[k] = (did, rkey, v + 1)
            return js_commit(t, did, TRACK, rkey, "update", g.track(v + 1), cid=g.cid(), rev=g.tid())
        g.tracks_live.pop(k)
        return js_commit(t, did, TRACK, rkey, "delete", rev=g.tid())
    x = r.random()
    kind = next(k for c, k in CUM if x <= c) if x <= CUM[-1][0] else "like"
    if kind in ("identity", "account"):
        did = r.choice(g.artists) if r.random() < 0.2 else g.any_did()
        body: dict = {"did": did, "seq": 8_000_000_000 + i, "time": g.iso(t)}
        if kind == "identity":
            body["handle"] = f"{''.join(r.choices(B32[:26], k=9))}.bsky.social"
        else:
            body["active"] = r.random() < 0.7
            if not body["active"]:
                body["status"] = r.choice(("deactivated", "takendown", "deleted"))
        return {"did": did, "time_us": t, "kind": kind, kind: body}
    did = g.any_did()
    if kind == "delete":
        return js_commit(t, did, r.choice(DELETE_COLLS), g.tid(t - r.randrange(10**11)), "delete", rev=g.tid())
    coll, rec = {
        "like": lambda: ("app.bsky.feed.like", g.like()),
        "repost": lambda: ("app.bsky.feed.repost", g.like("app.bsky.feed.repost")),
        "follow": lambda: ("app.bsky.graph.follow", g.follow()),
        "block": lambda: ("app.bsky.graph.block", g.follow("app.bsky.graph.block")),
        "post": lambda: ("app.bsky.feed.post", g.post()),
        "profile": lambda: ("app.bsky.actor.profile", g.profile()),
        "listitem": lambda: ("app.bsky.graph.listitem", g.listitem()),
        "threadgate": lambda: ("app.bsky.feed.threadgate", g.threadgate()),
        "other": lambda: ("chat.bsky.actor.declaration", {"$type": "chat.bsky.actor.declaration", "allowIncoming": "following"}),
    }[kind]()
    rkey = "self" if coll in ("app.bsky.actor.profile", "chat.bsky.actor.declaration") else g.tid()
    op = "update" if rkey == "self" and r.random() < 0.8 else "create"
    return js_commit(t, did, coll, rkey, op, rec, cid=g.cid(), rev=g.tid())


def to_v2(ev: dict, seq: int, g: Gen) -> dict:
    """The same event as a Jetstream v2 `xrpc.v1.json` message frame."""
    kind = ev["kind"]
    p: dict = {"$type": f"{V2_NSID}#{kind}", "did": ev["did"], "seq": seq, "time": g.iso(ev["time_us"], ms=False)}
    if kind == "commit":
        c = ev["commit"]
        p.update({"collection": c["collection"], "operation": c["operation"], "rev": c["rev"], "rkey": c["rkey"]})
        if "cid" in c:
            p["cid"] = c["cid"]
            p["record"] = c["record"]
    else:
        p[kind] = ev[kind]
    return {"$type": "message", "payload": p}


def dumps(obj) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def generate_jetstream(out: Path, n: int, seed: int = 1) -> dict:
    """Writes v1/v2 json/zstd `.ws` files for n events; returns the manifest."""
    out.mkdir(parents=True, exist_ok=True)
    g = Gen(seed)
    zd = zstd_dictionary()
    zc = zstandard.ZstdCompressor(dict_data=zd, level=3, write_content_size=True, write_checksum=False)
    writers = {name: WireWriter(out / f"{name}.ws", binary) for name, binary in
               (("v1.json", False), ("v1.zstd", True), ("v2.json", False), ("v2.zstd", True))}
    counts: dict[str, int] = {}
    track_ops: dict[str, int] = {}
    artist_repo_events = 0
    last_time_us = 0
    artists = set(g.artists)
    t0 = time.perf_counter()
    for i in range(n):
        ev = next_event(g, i)
        v1 = dumps(ev)
        v2 = dumps(to_v2(ev, i + 1, g))
        writers["v1.json"].add(v1)
        writers["v1.zstd"].add(zc.compress(v1))
        writers["v2.json"].add(v2)
        writers["v2.zstd"].add(zc.compress(v2))
        kind = ev["kind"]
        key = kind if kind != "commit" else ev["commit"]["collection"]
        counts[key] = counts.get(key, 0) + 1
        if kind == "commit" and ev["commit"]["collection"] == TRACK:
            track_ops[ev["commit"]["operation"]] = track_ops.get(ev["commit"]["operation"], 0) + 1
        elif kind != "commit" and ev["did"] in artists:
            artist_repo_events += 1
        last_time_us = ev["time_us"]
    files = {k: w.close() for k, w in writers.items()}
    manifest = {
        "gen_version": GEN_VERSION, "events": n, "seed": seed, "seconds": round(time.perf_counter() - t0, 1),
        "first_time_us": T0, "last_time_us": last_time_us, "tracks": sum(track_ops.values()), "track_ops": track_ops,
        "artist_repo_events": artist_repo_events, "by_collection": dict(sorted(counts.items(), key=lambda kv: -kv[1])),
        "zstd": {"level": 3, "dict_id": zd.dict_id()}, "files": files,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest


# --------------------------------------------------------------------------- relay firehose


def _frame(t: str, body: dict) -> bytes:
    return libipld.encode_dag_cbor({"op": 1, "t": t}) + libipld.encode_dag_cbor(body)


def _mst_node(g: Gen) -> tuple[bytes, bytes]:
    """A plausible MST node: 2-6 entries with key suffixes and value/subtree links (~150-400 bytes)."""
    r = g.rng
    entries = []
    for j in range(r.randrange(2, 7)):
        _, leaf = block({"x": r.randbytes(8)})
        entries.append({"k": (f"app.bsky.feed.like/{g.tid()}" if j == 0 else g.tid()[r.randrange(4, 10):]).encode(),
                        "p": 0 if j == 0 else r.randrange(10, 30), "t": None, "v": block({"y": r.randbytes(8)})[0]})
    return block({"e": entries, "l": None})


def firehose_commit(g: Gen, seq: int, ev: dict) -> bytes:
    """A `#commit` frame as a relay sends it for the v1 event `ev`: record block, commit block signed
    with a 64-byte sig, and 2-4 MST nodes on the path (real frames carry the changed MST path)."""
    c = ev["commit"]
    did, rev = ev["did"], c["rev"]
    blocks: list[tuple[bytes, bytes]] = []
    cid = None
    if c["operation"] != "delete":
        rec = c["record"]
        cid, data = block(_links(rec))
        blocks.append((cid, data))
    for _ in range(g.rng.randrange(1, 4)):
        blocks.append(_mst_node(g))
    data_cid = blocks[-1][0]
    commit_cid, commit_block = block({"did": did, "version": 3, "data": data_cid, "rev": rev, "prev": None,
                                      "sig": g.rng.randbytes(64)})
    car = make_car(commit_cid, [(commit_cid, commit_block), *blocks])
    return _frame("#commit", {
        "seq": seq, "rebase": False, "tooBig": False, "repo": did, "commit": commit_cid, "rev": rev,
        "since": g.tid(ev["time_us"] - 10**7), "blocks": car,
        "ops": [{"action": c["operation"], "path": f"{c['collection']}/{c['rkey']}", "cid": cid}],
        "blobs": [], "time": g.iso(ev["time_us"]),
    })


def _links(value):
    """atproto JSON -> DAG-CBOR data model: {"$link": s} becomes a CID (bytes libipld encodes as tag 42)."""
    if isinstance(value, dict):
        if len(value) == 1 and "$link" in value:
            return _cid_bin(value["$link"])
        return {k: _links(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_links(v) for v in value]
    return value


def _cid_bin(s: str) -> bytes:
    from tests.fakes.car import cid_bytes
    try:
        return cid_bytes(s)
    except ValueError:  # our synthetic "bafkrei..." strings are not real CIDs: make a real one
        return block({"s": s})[0]


def generate_firehose(out: Path, m: int, seed: int = 2) -> dict:
    """Writes firehose.ws: m relay frames, same mix as Jetstream (#identity/#account included)."""
    out.mkdir(parents=True, exist_ok=True)
    g = Gen(seed)
    w = WireWriter(out / "firehose.ws", True)
    track_ops: dict[str, int] = {}
    t0 = time.perf_counter()
    for i in range(m):
        ev = next_event(g, i)
        seq = 1_000_000 + i
        if ev["kind"] == "commit":
            c = ev["commit"]
            if c["operation"] != "delete" and c.get("cid"):
                pass
            fr = firehose_commit(g, seq, ev)
            if c["collection"] == TRACK:
                track_ops[c["operation"]] = track_ops.get(c["operation"], 0) + 1
        else:
            body = {k: v for k, v in ev[ev["kind"]].items()}
            body["seq"] = seq
            fr = _frame("#" + ev["kind"], body)
        w.add(fr)
    info = w.close()
    manifest = {"gen_version": GEN_VERSION, "frames": m, "seed": seed, "seconds": round(time.perf_counter() - t0, 1),
                "tracks": sum(track_ops.values()), "track_ops": track_ops, "file": info,
                "first_seq": 1_000_000, "last_seq": 1_000_000 + m - 1}
    (out / "firehose.json").write_text(json.dumps(manifest, indent=1))
    return manifest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--firehose-frames", type=int, default=0)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "ingest-cache")
    a = ap.parse_args()
    out = a.out / f"jetstream-{a.events}-g{GEN_VERSION}"
    print(json.dumps(generate_jetstream(out, a.events), indent=1))
    if a.firehose_frames:
        print(json.dumps(generate_firehose(a.out / f"firehose-{a.firehose_frames}-g{GEN_VERSION}", a.firehose_frames), indent=1))


if __name__ == "__main__":
    main()
