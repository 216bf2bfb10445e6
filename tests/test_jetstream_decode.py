"""Jetstream frames to typed events: pure decoding, no sockets."""

from __future__ import annotations

import json

import pytest
import zstandard

from firehose_mod.ingest.filters import Collections
from firehose_mod.ingest.jetstream import MAX_FRAME_BYTES, Decompressor, decode_jetstream, zstd_dictionary

from tests.fakes.jetstream import T0, account, commit, identity, track_record

TRACKS = Collections.parse(["fm.plyr.track"])
DID = "did:plc:uploader0000000000000000"


def frame(ev: dict) -> str:
    return json.dumps(ev)


def test_create_update_delete_become_track_events_with_the_cursor():
    created = decode_jetstream(frame(commit(T0, DID, "fm.plyr.track", "3kabc", "create", track_record("Song"))), TRACKS)
    (ev,) = created.events
    assert (ev.uri, ev.operation, ev.cursor, created.cursor) == (f"at://{DID}/fm.plyr.track/3kabc", "create", T0, T0)
    assert ev.cid.startswith("bafyrei") and ev.record["title"] == "Song" and ev.rev
    updated = decode_jetstream(frame(commit(T0 + 1, DID, "fm.plyr.track", "3kabc", "update", track_record("Song 2"))), TRACKS)
    assert updated.events[0].operation == "update"
    deleted = decode_jetstream(frame(commit(T0 + 2, DID, "fm.plyr.track", "3kabc", "delete")), TRACKS)
    assert deleted.events[0].operation == "delete" and deleted.events[0].record is None


def test_other_collections_are_skipped_but_advance_the_cursor():
    post = commit(T0, DID, "app.bsky.feed.post", "3kxyz", "create", {"text": "fm.plyr.track is mentioned"})
    out = decode_jetstream(frame(post), TRACKS)
    assert out.events == [] and out.dead == [] and out.skipped == 1 and out.cursor == T0


def test_prefix_filter_matches_the_family_but_only_tracks_are_scanned():
    family = Collections.parse(["fm.plyr.*"])
    like = commit(T0, DID, "fm.plyr.like", "3k1", "create", {"subject": "x", "createdAt": "2026-01-01T00:00:00Z"})
    assert decode_jetstream(frame(like), family).skipped == 1
    track = commit(T0, DID, "fm.plyr.track", "3k2", "create", track_record("x"))
    assert len(decode_jetstream(frame(track), family).events) == 1
    assert family.query_values() == ["fm.plyr.*"]


@pytest.mark.parametrize(
    ("record", "reason_part"),
    [
        ({"artist": "a", "fileType": "mp3", "createdAt": "2026-01-01T00:00:00Z"}, "title: required"),
        (track_record(""), "title: 0 bytes < minLength 1"),
        (track_record("x" * 300), "title: 300 bytes > maxLength 256"),
        (track_record(12), "title: expected string"),
        (track_record("ok", createdAt="yesterday"), "createdAt: not an RFC 3339"),
        (track_record("ok", fileType="a-very-long-file-type"), "fileType: 21 bytes > maxLength 16"),
        (track_record("ok", duration="3:15"), "duration"),
        (track_record("ok", features=[{"did": "nope"}]), "features[0]"),
        (track_record("ok", features=[{"did": "did:plc:a"}] * 11), "at most 10"),
        (track_record("ok", audioBlob={"$type": "blob", "ref": {"$link": "bafk"}, "mimeType": "audio/mpeg"}), "size"),
        (track_record("ok", audioBlob={"$type": "blob", "ref": {"$link": "bafk"}, "mimeType": "audio/mpeg", "size": 200 * 1024 * 1024}), "size"),
        (track_record("ok", labels={"values": "porn"}), "labels"),
        (track_record("ok", description="d" * 5001), "description"),
        ("not an object", "expected an object"),
    ],
)
def test_records_that_break_the_lexicon_are_dead_letters_with_the_reason(record, reason_part):
    out = decode_jetstream(frame(commit(T0, DID, "fm.plyr.track", "3kabc", "create", record)), TRACKS)
    assert out.events == [] and out.cursor == T0
    (dead,) = out.dead
    assert dead.reason == "lexicon" and reason_part in dead.detail and dead.uri.endswith("/3kabc")


def test_a_valid_record_with_every_optional_field_passes():
    record = track_record(
        "Ünïcode title ✨", album="Album", description="liner notes", duration=0,
        features=[{"did": "did:plc:feat", "handle": "feat.bsky.social", "displayName": "Feat"}],
        audioBlob={"$type": "blob", "ref": {"$link": "bafkreiabc"}, "mimeType": "audio/mpeg", "size": 3_000_000},
        labels={"$type": "com.atproto.label.defs#selfLabels", "values": [{"val": "sexual"}]},
        supportGate={"type": "any"},
    )
    assert len(decode_jetstream(frame(commit(T0, DID, "fm.plyr.track", "3k", "create", record)), TRACKS).events) == 1


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("{not json", "malformed_json"),
        ('{"did": "did:plc:x", "time_us": 5, "kind": "commit", "commit": {"collection": "fm.plyr.track", "operation": "create", "rkey": "3k"', "malformed_json"),
        ("[1, 2, 3]", "malformed_event"),
        ('{"kind": "commit", "did": "did:plc:x", "commit": {"collection": "fm.plyr.track"}}', "malformed_event"),
        ('{"kind": "commit", "did": "not-a-did", "time_us": 5, "commit": {"collection": "fm.plyr.track"}}', "malformed_event"),
        ('{"kind": "commit", "did": "did:plc:x", "time_us": 5, "commit": {"collection": "fm.plyr.track", "operation": "create", "rkey": "a/b", "cid": "b", "record": {}}}', "malformed_event"),
        ('{"kind": "commit", "did": "did:plc:x", "time_us": 5, "commit": {"collection": "fm.plyr.track", "operation": "create", "rkey": "3k", "record": {}}}', "malformed_event"),
        ('{"kind": "commit", "did": "did:plc:x", "time_us": 5, "commit": {"collection": "fm.plyr.track", "operation": "explode", "rkey": "3k"}}', "malformed_event"),
        ('{"kind": "commit", "did": "did:plc:x", "time_us": 5, "commit": {"collection": "fm.plyr.track", "operation": "create", "rkey": "3k", "cid": "bafynotacid", "record": {}}}', "malformed_event"),
    ],
)
def test_malformed_frames_are_dead_letters_never_exceptions(raw, reason):
    out = decode_jetstream(raw, TRACKS)
    assert out.events == [] and out.dead[0].reason == reason


def test_oversized_frame_is_a_dead_letter_that_keeps_its_cursor():
    ev = commit(T0, DID, "fm.plyr.track", "3k", "create", track_record("x", description="d" * 10))
    raw = json.dumps(ev)[:-1] + ', "pad": "' + "x" * MAX_FRAME_BYTES + '"}'
    out = decode_jetstream(raw, TRACKS)
    assert out.dead[0].reason == "oversized" and out.cursor == T0


def test_compressed_frames_use_jetstreams_dictionary():
    assert zstd_dictionary().dict_id() == 1612007021
    ev = commit(T0, DID, "fm.plyr.track", "3k", "create", track_record("zstd"))
    data = zstandard.ZstdCompressor(dict_data=zstd_dictionary()).compress(json.dumps(ev).encode())
    out = decode_jetstream(data, TRACKS, decompress=Decompressor())
    assert out.events[0].record["title"] == "zstd"
    bad = decode_jetstream(b"\x28\xb5\x2f\xfd garbage", TRACKS, decompress=Decompressor())
    assert bad.dead[0].reason == "bad_compression"


def test_identity_and_account_events_are_kept_for_watched_dids_only():
    watched = {DID}
    ident = decode_jetstream(frame(identity(T0, DID, "artist.bsky.social")), TRACKS, watched_dids=watched)
    assert ident.events[0].kind == "identity" and ident.events[0].handle == "artist.bsky.social"
    takedown = decode_jetstream(frame(account(T0, DID, False, "takendown")), TRACKS, watched_dids=watched)
    assert (takedown.events[0].active, takedown.events[0].status) == (False, "takendown")
    stranger = decode_jetstream(frame(account(T0, "did:plc:stranger", False, "deleted")), TRACKS, watched_dids=watched)
    assert stranger.events == [] and stranger.skipped == 1 and stranger.cursor == T0
