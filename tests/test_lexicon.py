"""fm.plyr.track records against plyr.fm's published lexicon, with atproto's length rules.

`maxLength` counts UTF-8 bytes and `maxGraphemes` grapheme clusters (atproto.com/specs/lexicon);
the boundary cases are derived from the copy of plyr.fm's lexicon in tests/lexicons/.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from firehose_mod.ingest.lexicon import grapheme_count, string_problems, validate_track

from tests.fakes.jetstream import track_record

LEXICON = json.loads((Path(__file__).parent / "lexicons" / "fm.plyr.track.json").read_text())
RECORD = LEXICON["defs"]["main"]["record"]
STRING_LIMITS = {k: (p.get("minLength", 0), p["maxLength"]) for k, p in RECORD["properties"].items()
                 if p["type"] == "string" and "maxLength" in p}

FAMILY = "\U0001F468\u200D\U0001F469\u200D\U0001F467\u200D\U0001F466"  # 👨‍👩‍👧‍👦: 7 code points, 25 bytes
RAINBOW_FLAG = "\U0001F3F3\uFE0F\u200D\U0001F308"  # 🏳️‍🌈: 4 code points, 14 bytes
E_ACUTE = "e\u0301"  # e + combining acute: 2 code points, 3 bytes
FLAG_FR = "\U0001F1EB\U0001F1F7"  # 🇫🇷: a pair of regional indicators
KSSI = "\u0915\u094D\u0937\u093F"  # क्षि: a Devanagari conjunct with a vowel sign


def with_field(key: str, value) -> dict:
    return {**track_record("ok"), key: value}


def sized(n: int) -> str:
    """A string of exactly `n` UTF-8 bytes, mostly 3-byte characters (fewer characters than bytes)."""
    return "日" * (n // 3) + "a" * (n % 3)


@pytest.mark.parametrize(("text", "graphemes"), [
    (FAMILY, 1), (RAINBOW_FLAG, 1), (E_ACUTE, 1), (FLAG_FR, 1), (KSSI, 1),
    (FAMILY * 3 + E_ACUTE * 2 + "ab", 7), ("", 0),
])
def test_graphemes_are_what_a_reader_sees_as_one_character(text, graphemes):
    assert grapheme_count(text) == graphemes


def test_max_graphemes_counts_clusters_not_code_points():
    assert string_problems("name", FAMILY * 64, max_graphemes=64) == []  # 448 code points
    assert string_problems("name", E_ACUTE * 64, max_graphemes=64) == []
    (problem,) = string_problems("name", E_ACUTE * 65, max_graphemes=64)
    assert problem == "name: 65 graphemes > maxGraphemes 64"
    assert string_problems("name", "", min_graphemes=1) == ["name: 0 graphemes < minGraphemes 1"]


def test_max_length_counts_utf8_bytes_even_when_graphemes_fit():
    title = sized(300)  # 100 characters, 300 bytes
    assert grapheme_count(title) == 100
    assert validate_track(track_record(title)) == ["title: 300 bytes > maxLength 256"]
    assert validate_track(track_record(RAINBOW_FLAG * 19)) == ["title: 266 bytes > maxLength 256"]
    assert validate_track(track_record(E_ACUTE * 85 + "a")) == []  # 256 bytes exactly


@pytest.mark.parametrize("key", sorted(STRING_LIMITS))
def test_every_string_limit_of_the_published_lexicon_is_enforced_in_bytes(key):
    low, high = STRING_LIMITS[key]
    assert validate_track(with_field(key, sized(high))) == []
    (problem,) = validate_track(with_field(key, sized(high + 1)))
    assert problem == f"{key}: {high + 1} bytes > maxLength {high}"
    if low:
        assert validate_track(with_field(key, "")) == [f"{key}: 0 bytes < minLength {low}"]


def test_required_fields_are_the_published_ones():
    record = track_record("ok")
    for key in RECORD["required"]:
        broken = {k: v for k, v in record.items() if k != key}
        assert validate_track(broken) == [f"{key}: required"]


def test_limits_of_the_published_lexicon_beyond_strings():
    props = RECORD["properties"]
    blob = {"$type": "blob", "ref": {"$link": "bafkreiabc"}, "mimeType": "audio/mpeg"}
    assert validate_track(track_record("ok", audioBlob={**blob, "size": props["audioBlob"]["maxSize"]})) == []
    assert validate_track(track_record("ok", audioBlob={**blob, "size": props["audioBlob"]["maxSize"] + 1}))
    feature = {"did": "did:plc:feat"}
    assert validate_track(track_record("ok", features=[feature] * props["features"]["maxLength"])) == []
    assert validate_track(track_record("ok", features=[feature] * (props["features"]["maxLength"] + 1)))
    # "duration": minimum 0 and no maximum: a 12-day DJ set is a valid track
    assert validate_track(track_record("ok", duration=1_036_800)) == []
    assert validate_track(track_record("ok", duration=-1))


def test_featured_artists_follow_the_featured_artist_def():
    display = LEXICON["defs"]["featuredArtist"]["properties"]["displayName"]["maxLength"]
    ok = {"did": "did:web:artist.example", "handle": "feat.bsky.social", "displayName": sized(display)}
    assert validate_track(track_record("ok", features=[ok])) == []
    assert validate_track(track_record("ok", features=[{**ok, "displayName": sized(display + 1)}])) == [
        f"features[0].displayName: {display + 1} bytes > maxLength {display}"]
    assert validate_track(track_record("ok", features=[{**ok, "handle": "not a handle"}])) == [
        "features[0].handle: not a handle"]
    assert validate_track(track_record("ok", features=[{**ok, "did": "did:plc:abc:"}]))  # a DID cannot end in ':'


def test_self_label_values_are_at_most_128_bytes():
    labels = {"$type": "com.atproto.label.defs#selfLabels", "values": [{"val": E_ACUTE * 42}]}  # 126 bytes
    assert validate_track(track_record("ok", labels=labels)) == []
    labels["values"] = [{"val": "é" * 100}]  # 100 characters, 200 bytes
    assert validate_track(track_record("ok", labels=labels)) == ["labels.values[0].val: 200 bytes > maxLength 128"]


def test_a_support_gate_needs_its_type():
    assert validate_track(track_record("ok", supportGate={"type": "any"})) == []
    assert validate_track(track_record("ok", supportGate={})) == ["supportGate: expected an object with a type string"]


def test_a_lone_surrogate_is_not_a_string():
    assert validate_track(json.loads('{"title": "a\\ud800", "artist": "x", "fileType": "mp3",'
                                     ' "createdAt": "2026-01-01T00:00:00Z"}')) == ["title: not valid Unicode"]


def test_a_title_plyr_fm_shows_is_scanned_though_its_bytes_exceed_the_spec_limit():
    """plyr.fm's indexer counts code points: a 100-character Japanese title is shown there, so it
    must be scanned here (a dead letter would be a way to dodge the labeler)."""
    from firehose_mod.ingest.lexicon import blocking_problems

    shown = track_record("夜" * 100)  # 300 bytes, 100 code points
    assert validate_track(shown) == ["title: 300 bytes > maxLength 256"]  # the spec's rule, reported
    assert blocking_problems(shown) == []  # but scanned
    assert blocking_problems(track_record("夜" * 257)) == ["title: 771 bytes > maxLength 256"]  # over in both
    assert blocking_problems(track_record(5)) != []  # a title that is not a string still blocks
