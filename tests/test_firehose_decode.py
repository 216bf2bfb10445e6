"""Relay firehose: pure frame decoding, then the source against a real local subscribeRepos server."""

from __future__ import annotations

import json
import random
import socket

import anyio
import libipld
import pytest

from firehose_mod.ingest.events import Decoded, RepoEvent, TrackEvent
from firehose_mod.ingest.filters import Collections
from firehose_mod.ingest.firehose import MAX_FRAME_BYTES, SOURCE, FirehoseSource, decode_firehose_frame
from firehose_mod.ingest.reconnect import Backoff
from tests.fakes.car import block, cid_for, make_car
from tests.fakes.ingest import collect
from tests.fakes.relay import (
    FakeRelay, Fault, account_frame, commit_frame, error_frame, garbage_frame, identity_frame, info_frame,
    sync_frame,
)

DID = "did:plc:uploader"
OTHER = "did:plc:someoneelse"
TRACK = "fm.plyr.track"
TRACKS = Collections.parse([TRACK])
PLYR = Collections.parse(["fm.plyr.*"])

pytestmark = pytest.mark.anyio


def track(**kw) -> dict:
    return {"$type": TRACK, "title": "Song", "artist": "Me", "fileType": "mp3",
            "createdAt": "2025-01-01T00:00:00Z", **kw}


def cid_str(record: dict) -> str:
    return libipld.encode_cid(block(record)[0])


# --------------------------------------------------------------------------- pure decoding


def test_create_update_delete_of_a_track():
    a, b = track(title="A"), track(title="B")
    frame = commit_frame(7, DID, "rev7", [
        ("create", TRACK, "3k1", a), ("update", TRACK, "3k2", b), ("delete", TRACK, "3k3", None)])
    d = decode_firehose_frame(frame, TRACKS)
    assert d.cursor == 7 and not d.dead and d.skipped == 0
    assert d.events == [
        TrackEvent(DID, TRACK, "3k1", "create", cid_str(a), a, 7, "rev7", SOURCE),
        TrackEvent(DID, TRACK, "3k2", "update", cid_str(b), b, 7, "rev7", SOURCE),
        TrackEvent(DID, TRACK, "3k3", "delete", None, None, 7, "rev7", SOURCE),
    ]
    assert d.events[0].uri == f"at://{DID}/{TRACK}/3k1"
    json.dumps([e.record for e in d.events])


def test_other_collections_are_skipped_without_touching_the_car():
    frame = commit_frame(3, DID, "r", [("create", "app.bsky.feed.post", "3kp", {"text": "hi"})])
    d = decode_firehose_frame(frame, TRACKS)
    assert (d.cursor, d.events, d.dead, d.skipped) == (3, [], [], 1)
    # Same commit with an unreadable CAR: still skipped, the blocks are never parsed.
    body = libipld.decode_dag_cbor_multi(frame)[1] | {"blocks": b"\x05garbage"}
    frame2 = libipld.encode_dag_cbor({"op": 1, "t": "#commit"}) + libipld.encode_dag_cbor(body)
    d2 = decode_firehose_frame(frame2, TRACKS)
    assert (d2.cursor, d2.events, d2.dead, d2.skipped) == (3, [], [], 1)


def test_prefix_filter_matches_but_only_tracks_become_events():
    frame = commit_frame(4, DID, "r", [
        ("create", "fm.plyr.like", "3kl", {"subject": "x"}), ("create", TRACK, "3kt", track()),
        ("create", "app.bsky.feed.like", "3kb", {"subject": "y"})])
    d = decode_firehose_frame(frame, PLYR)
    assert [e.rkey for e in d.events] == ["3kt"] and d.skipped == 2 and not d.dead


def test_record_failing_the_lexicon_is_a_dead_letter():
    bad = {"$type": TRACK, "artist": "Me", "fileType": "mp3", "createdAt": "yesterday"}
    frame = commit_frame(5, DID, "r", [("create", TRACK, "3kbad", bad), ("create", TRACK, "3kok", track())])
    d = decode_firehose_frame(frame, TRACKS)
    assert [e.rkey for e in d.events] == ["3kok"]
    [dead] = d.dead
    assert dead.reason == "lexicon" and "title: required" in dead.detail and "createdAt" in dead.detail
    assert (dead.cursor, dead.did, dead.uri, dead.source) == (5, DID, f"at://{DID}/{TRACK}/3kbad", SOURCE)
    assert libipld.decode_dag_cbor(dead.raw) == bad  # the record block, for the operator


def test_missing_block_is_a_dead_letter():
    frame = commit_frame(6, DID, "r", [("create", TRACK, "3kgone", track())], omit_blocks={"3kgone"})
    d = decode_firehose_frame(frame, TRACKS)
    assert d.cursor == 6 and not d.events
    assert [x.reason for x in d.dead] == ["missing_block"] and d.dead[0].uri == f"at://{DID}/{TRACK}/3kgone"
    too_big = decode_firehose_frame(commit_frame(6, DID, "r", [("update", TRACK, "3k", track())], too_big=True), TRACKS)
    assert [x.reason for x in too_big.dead] == ["missing_block"] and "tooBig" in too_big.dead[0].detail


def test_block_that_does_not_hash_to_its_cid_is_a_dead_letter():
    real_cid, _ = block(track())
    forged = libipld.encode_dag_cbor(track(title="swapped"))
    commit_cid, commit_block = block({"did": DID})
    car = make_car(commit_cid, [(commit_cid, commit_block), (real_cid, forged)])
    body = {"seq": 9, "repo": DID, "rev": "r", "commit": commit_cid, "blocks": car, "tooBig": False,
            "ops": [{"action": "create", "path": f"{TRACK}/3k", "cid": real_cid}], "time": "t"}
    frame = libipld.encode_dag_cbor({"op": 1, "t": "#commit"}) + libipld.encode_dag_cbor(body)
    d = decode_firehose_frame(frame, TRACKS)
    assert not d.events and [x.reason for x in d.dead] == ["block_hash_mismatch"]


def _frame(header, body) -> bytes:
    return libipld.encode_dag_cbor(header) + libipld.encode_dag_cbor(body)


BAD_FRAMES = [
    (garbage_frame(), "malformed_cbor"),
    (b"", "malformed_event"),
    (commit_frame(1, DID, "r", [("create", TRACK, "3k", track())])[:-7], "malformed_cbor"),
    (libipld.encode_dag_cbor({"op": 1, "t": "#commit"}), "malformed_event"),
    (_frame({"op": 1, "t": "#commit"}, {"repo": DID, "ops": []}), "malformed_event"),
    (_frame({"op": 1, "t": "#commit"}, {"seq": "12", "repo": DID, "ops": []}), "malformed_event"),
    (_frame({"op": 1, "t": "#commit"}, {"seq": True, "repo": DID, "ops": []}), "malformed_event"),
    (_frame({"op": 1, "t": "#commit"}, {"seq": 3, "repo": "nobody", "ops": []}), "malformed_event"),
    (_frame({"op": 1, "t": "#commit"}, {"seq": 3, "repo": DID, "ops": "x"}), "malformed_event"),
    (_frame({"op": 1, "t": "#commit"}, {"seq": 3, "repo": DID, "ops": [{"action": "create", "path": TRACK}]}), "malformed_event"),
    (_frame({"op": 1, "t": "#commit"}, {"seq": 3, "repo": DID, "ops": [{"action": "create", "path": f"{TRACK}/3k", "cid": None}]}), "malformed_event"),
    (_frame({"op": 1, "t": "#commit"}, {"seq": 3, "repo": DID, "blocks": b"\x01", "ops": [
        {"action": "create", "path": f"{TRACK}/3k", "cid": cid_for(b"x")}]}), "malformed_cbor"),
    (_frame({"op": 1, "t": "#commit"}, {"seq": 3, "repo": DID, "ops": [{"action": "move", "path": f"{TRACK}/3k"}]}), "malformed_event"),
    (_frame({"op": 7, "t": "#commit"}, {"seq": 3}), "malformed_event"),
    (_frame({"op": 1}, {"seq": 3}), "malformed_event"),
    (_frame({"op": 1, "t": "#identity"}, {"seq": 3}), "malformed_event"),
    (libipld.encode_dag_cbor([1, 2]) + libipld.encode_dag_cbor({"seq": 1}), "malformed_event"),
    (b"\x00" * (MAX_FRAME_BYTES + 1), "oversized"),
]


@pytest.mark.parametrize("frame, reason", BAD_FRAMES, ids=[f"{i}-{r}" for i, (_, r) in enumerate(BAD_FRAMES)])
def test_bad_frames_are_dead_letters_never_exceptions(frame, reason):
    d = decode_firehose_frame(frame, TRACKS)
    assert [x.reason for x in d.dead] == [reason] and not d.events
    assert d.dead[0].source == SOURCE and len(d.dead[0].raw) <= 4096


def test_mutated_frames_never_raise():
    rng = random.Random(1)
    good = commit_frame(1, DID, "r", [("create", TRACK, "3k", track(audioBlob={
        "$type": "blob", "ref": cid_for(b"audio", 0x55), "mimeType": "audio/mpeg", "size": 5}))])
    for _ in range(400):
        f = bytearray(good)
        for _ in range(rng.randint(1, 4)):
            f[rng.randrange(len(f))] = rng.randrange(256)
        d = decode_firehose_frame(bytes(f), TRACKS)
        assert isinstance(d, Decoded)
        assert len(d.events) + len(d.dead) + d.skipped >= 1


def test_identity_and_account_only_for_watched_dids():
    frames = [identity_frame(10, DID, handle="me.plyr.fm"), account_frame(11, DID, False, "takendown"),
              identity_frame(12, OTHER, handle="x.test"), account_frame(13, OTHER, True)]
    watched = [decode_firehose_frame(f, TRACKS, watched_dids=frozenset({DID})) for f in frames]
    assert [d.events for d in watched] == [
        [RepoEvent(DID, "identity", 10, None, None, "me.plyr.fm", SOURCE)],
        [RepoEvent(DID, "account", 11, False, "takendown", None, SOURCE)], [], []]
    assert [(d.cursor, d.skipped) for d in watched[2:]] == [(12, 1), (13, 1)]
    unwatched = [decode_firehose_frame(f, TRACKS) for f in frames]
    assert all(not d.events and d.skipped == 1 for d in unwatched)
    assert [d.cursor for d in unwatched] == [10, 11, 12, 13]


def test_blob_ref_becomes_a_link_and_bytes_become_base64():
    audio_cid = cid_for(b"audio bytes", codec=0x55)  # raw codec, as blobs are
    record = track(audioBlob={"$type": "blob", "ref": audio_cid, "mimeType": "audio/mpeg", "size": 11},
                   extra={"blob": b"\x00\x01\x02\x03"})
    d = decode_firehose_frame(commit_frame(8, DID, "r", [("create", TRACK, "3kb", record)]), TRACKS)
    [e] = d.events
    assert e.record["audioBlob"] == {"$type": "blob", "ref": {"$link": libipld.encode_cid(audio_cid)},
                                     "mimeType": "audio/mpeg", "size": 11}
    assert e.record["audioBlob"]["ref"]["$link"].startswith("bafkrei")
    assert e.record["extra"] == {"blob": {"$bytes": "AAECAw"}}
    json.dumps(e.record)


def test_error_frame_is_a_dead_letter_without_a_cursor():
    d = decode_firehose_frame(error_frame("FutureCursor", "cursor in the future"), TRACKS)
    assert d.cursor is None and not d.events
    assert [(x.reason, x.detail) for x in d.dead] == [("error_frame", "FutureCursor: cursor in the future")]


def test_sync_info_and_unknown_types_are_skipped():
    assert (decode_firehose_frame(sync_frame(20, DID), TRACKS).cursor, decode_firehose_frame(sync_frame(20, DID), TRACKS).skipped) == (20, 1)
    info = decode_firehose_frame(info_frame("OutdatedCursor"), TRACKS)
    assert (info.cursor, info.skipped, info.dead) == (None, 1, [])
    new = decode_firehose_frame(_frame({"op": 1, "t": "#somethingNew"}, {"seq": 21}), TRACKS)
    assert (new.cursor, new.skipped, new.dead) == (21, 1, [])


# --------------------------------------------------------------------------- the source over a local relay


def commits(seqs) -> list[bytes]:
    return [commit_frame(s, DID, f"rev{s}", [("create", TRACK, f"3k{s:04d}", track(title=f"t{s}"))]) for s in seqs]


def make_source(*endpoints: str, read_timeout: float = 2.0, watched_dids: set[str] | None = None) -> FirehoseSource:
    return FirehoseSource(list(endpoints), TRACKS, read_timeout=read_timeout, open_timeout=2.0,
                          backoff=Backoff(base=0.01, cap=0.05), watched_dids=watched_dids)


def cursors(received: list[Decoded]) -> list[int]:
    return [d.cursor for d in received if d.cursor is not None]


def upto(n: int):
    return lambda received: n in cursors(received)


async def test_events_arrive_in_order_with_their_cursors():
    frames = [*commits([1, 2]), identity_frame(3, DID, "me.test"),
              commit_frame(4, DID, "rev4", [("create", "app.bsky.feed.post", "3kp", {"text": "x"})]), *commits([5])]
    async with FakeRelay(frames) as relay:
        source = make_source(relay.url)
        got = await collect(source, 0, upto(5))
    assert cursors(got) == [1, 2, 3, 4, 5]
    assert [e.rkey for d in got for e in d.events] == ["3k0001", "3k0002", "3k0005"]
    assert all(e.cursor == d.cursor for d in got for e in d.events)
    assert relay.requests == [0]
    assert source.stats.frames == 5 and source.stats.reconnects == 0 and source.stats.bytes == sum(map(len, frames))
    assert source.cursor == 5


async def test_no_cursor_is_live_only():
    async with FakeRelay(commits([1, 2])) as relay:
        source = make_source(relay.url)

        async def publish_when_connected():
            while not relay.connections:
                await anyio.sleep(0.01)
            relay.publish(*commits([3]))

        async with anyio.create_task_group() as tg:
            tg.start_soon(publish_when_connected)
            got = await collect(source, None, upto(3))
    assert cursors(got) == [3] and relay.requests == [None]


@pytest.mark.parametrize("fault", ["drop", "close", "silent", "restart"])
async def test_resumes_from_the_last_seq_without_loss_or_repeat(fault):
    async with FakeRelay(commits(range(1, 7))) as relay:
        # restart: the first connection stalls after 3 frames, then the server restarts under it
        relay.faults[0] = Fault("silent" if fault == "restart" else fault, after=3)

        async def on_frame(decoded, tg):
            if fault == "restart" and decoded.cursor == 3 and relay.connections == 1:
                tg.start_soon(relay.restart)

        source = make_source(relay.url, read_timeout=0.3 if fault == "silent" else 2.0)
        got = await collect(source, 0, upto(6), on_frame=on_frame)
        assert cursors(got) == [1, 2, 3, 4, 5, 6]
        assert [e.rkey for d in got for e in d.events] == [f"3k{s:04d}" for s in range(1, 7)]
        assert relay.requests == [0, 3] and source.stats.reconnects == 1

        # The caller saved seq 6 with its batch; a new process resumes from it and gets only what is new.
        relay.publish(*commits([7, 8]))
        again = await collect(make_source(relay.url), cursors(got)[-1], upto(8))
        assert cursors(again) == [7, 8] and relay.requests[-1] == 6


async def test_garbage_frame_is_a_dead_letter_and_the_stream_continues():
    async with FakeRelay([*commits([1, 2]), garbage_frame(), *commits([3])]) as relay:
        source = make_source(relay.url)
        got = await collect(source, 0, upto(3))
    assert [d.cursor for d in got] == [1, 2, None, 3]
    assert [x.reason for x in got[2].dead] == ["malformed_cbor"]
    assert source.stats.dead == 1 and source.stats.reconnects == 0


async def test_fails_over_to_the_next_endpoint_when_the_first_refuses():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = f"ws://127.0.0.1:{s.getsockname()[1]}"
    async with FakeRelay(commits([1, 2])) as relay:
        source = make_source(dead, relay.url)
        got = await collect(source, 0, upto(2))
    assert cursors(got) == [1, 2] and relay.requests == [0]
    assert source.stats.reconnects == 1 and source.endpoint == source.endpoints[1]


async def test_error_frame_reaches_the_sink_then_the_source_reconnects():
    async with FakeRelay(commits([1, 2])) as relay:
        source = make_source(relay.url)
        got = await collect(source, 10, lambda r: len(r) >= 2)
    assert [x.reason for d in got for x in d.dead] == ["error_frame", "error_frame"]
    assert relay.requests[:2] == [10, 10] and source.stats.reconnects >= 1


async def test_dids_added_to_the_watched_set_while_running_are_honoured():
    watched: set[str] = set()
    async with FakeRelay([identity_frame(1, DID, "before.test"), *commits([2]), identity_frame(3, DID, "after.test")]) as relay:
        source = make_source(relay.url, watched_dids=watched)

        async def on_frame(decoded, tg):
            watched.update(e.did for e in decoded.events)  # as the daemon's tracking sink does

        got = await collect(source, 0, upto(3), on_frame=on_frame)
    assert [type(e).__name__ for d in got for e in d.events] == ["TrackEvent", "RepoEvent"]
    assert got[2].events[0].handle == "after.test" and got[0].skipped == 1
