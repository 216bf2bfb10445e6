"""The landmark matcher against the edits copiers make, and against what must never match."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from firehose_mod.scan.copyright import load_index
from firehose_mod.scan.fingerprint import (
    FINGERPRINT_VERSION, FingerprintIndex, bit_error_rate, chromaprint_file, fingerprint_file, index_entries,
    is_duplicate,
)
from firehose_mod.store.catalogue import CatalogueStore

from tests import media as M

SONG_S = 32.0
REFERENCES = [1, 2, 3, 4, 5, 6]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict:
    d: Path = tmp_path_factory.mktemp("audio")
    songs = {s: M.song(s, SONG_S) for s in REFERENCES}
    refs = {s: M.write_wav(d / f"ref{s}.wav", x) for s, x in songs.items()}
    a, x = refs[1], songs[1]
    variants = {
        "exact": (a, SONG_S),
        "mp3-32k": (M.mp3(a, d / "a.mp3"), SONG_S),
        "excerpt-15s": (M.write_wav(d / "ex15.wav", M.excerpt(x, 8, 15)), 15),
        "excerpt-10s": (M.write_wav(d / "ex10.wav", M.excerpt(x, 18, 10)), 10),
        "embedded": (M.write_wav(d / "emb.wav", M.embed(M.song(101, SONG_S), M.excerpt(x, 8, 15), 10)), 15),
        "pitch+2": (M.pitch_shift(a, d / "p+2.wav", 2), SONG_S),
        "pitch-2": (M.pitch_shift(a, d / "p-2.wav", -2), SONG_S),
        "tempo+5%": (M.tempo_change(a, d / "t+5.wav", 1.05), SONG_S / 1.05),
        "tempo-5%": (M.tempo_change(a, d / "t-5.wav", 0.95), SONG_S / 0.95),
        "speed+5%": (M.speed_change(a, d / "s+5.wav", 1.05), SONG_S / 1.05),
        "speed-5%": (M.speed_change(a, d / "s-5.wav", 0.95), SONG_S / 0.95),
        "quieter-20dB": (M.write_wav(d / "quiet.wav", M.gain_db(x, -20)), SONG_S),
        "noise-10dB-snr": (M.write_wav(d / "noise.wav", M.add_noise(x, 10)), SONG_S),
    }
    index = FingerprintIndex()
    fps = {s: fingerprint_file(p) for s, p in refs.items()}
    index.add_many((f"song{s}", fp) for s, fp in fps.items())
    return {"dir": d, "songs": songs, "refs": refs, "fps": fps, "variants": variants, "index": index}


VARIANTS = ["exact", "mp3-32k", "excerpt-15s", "excerpt-10s", "embedded", "pitch+2", "pitch-2", "tempo+5%",
            "tempo-5%", "speed+5%", "speed-5%", "quieter-20dB", "noise-10dB-snr"]


@pytest.mark.parametrize("name", VARIANTS)
def test_every_variant_matches_its_reference_with_the_seconds_it_shares(corpus, name):
    path, shared = corpus["variants"][name]
    matches = corpus["index"].query(fingerprint_file(path))
    assert matches, f"{name}: no match"
    best = matches[0]
    assert best.ref_id == "song1"
    assert [m.ref_id for m in matches] == ["song1"], f"{name}: unrelated references matched too: {matches}"
    assert 0.75 * shared <= best.seconds_matched <= shared + 1.0, best


def test_edit_estimates_are_reported(corpus):
    index, v = corpus["index"], corpus["variants"]
    up = index.query(fingerprint_file(v["pitch+2"][0]))[0]
    assert up.pitch_shift_semitones == pytest.approx(2.0, abs=0.2) and up.time_scale == pytest.approx(1.0, abs=0.01)
    fast = index.query(fingerprint_file(v["speed+5%"][0]))[0]
    assert fast.time_scale == pytest.approx(1 / 1.05, abs=0.01)
    assert fast.pitch_shift_semitones == pytest.approx(12 * np.log2(1.05), abs=0.2)
    emb = index.query(fingerprint_file(v["embedded"][0]))[0]
    assert emb.query_start == pytest.approx(10, abs=1.0) and emb.ref_start == pytest.approx(8, abs=1.0)


def test_unrelated_music_matches_nothing(corpus, tmp_path):
    for seed in (201, 202, 203, 204):
        fp = fingerprint_file(M.write_wav(tmp_path / f"u{seed}.wav", M.song(seed, SONG_S)))
        assert len(fp) > 500
        assert corpus["index"].query(fp) == [], seed


@pytest.mark.parametrize("audio", ["silence", "near-silence", "quiet-hum"])
def test_silence_and_near_silence_yield_no_landmarks_and_no_match(corpus, tmp_path, audio):
    x = {"silence": M.silence(20), "near-silence": M.near_silence(20, -70),
         "quiet-hum": M.near_silence(20, -45)}[audio]
    fp = fingerprint_file(M.write_wav(tmp_path / "q.wav", x))
    assert corpus["index"].query(fp) == []
    if audio != "quiet-hum":
        assert len(fp) == 0


def test_shared_intro_reports_only_the_shared_seconds(tmp_path):
    a, b = M.shared_intro_pair(11, 12, 13, intro_s=8.0, body_s=24.0)
    index = FingerprintIndex()
    index.add("a", fingerprint_file(M.write_wav(tmp_path / "a.wav", a)))
    (m,) = index.query(fingerprint_file(M.write_wav(tmp_path / "b.wav", b)))
    assert m.ref_id == "a"
    assert 5.5 <= m.seconds_matched <= 9.0, m
    assert m.query_start < 1.0 and m.query_end <= 9.0, m


def test_removed_reference_no_longer_matches(corpus):
    index = FingerprintIndex()
    index.add("song1", corpus["fps"][1])
    index.add("song2", corpus["fps"][2])
    assert index.remove("song1") and not index.remove("song1")
    assert index.query(corpus["fps"][1]) == []
    index.compact()
    assert [m.ref_id for m in index.query(corpus["fps"][2])] == ["song2"]
    assert index.stats()["entries"] == len(corpus["fps"][2])


def test_chromaprint_tells_a_reencode_from_another_recording(corpus):
    a, _ = chromaprint_file(corpus["refs"][1])
    reencoded, _ = chromaprint_file(corpus["variants"]["mp3-32k"][0])
    other, _ = chromaprint_file(corpus["refs"][2])
    assert is_duplicate(a, reencoded)
    assert not is_duplicate(a, other) and bit_error_rate(a, other) > 0.3


@pytest.mark.anyio
async def test_index_rebuilt_from_sqlite_matches_the_same(corpus, tmp_path):
    store = await CatalogueStore.open(tmp_path / "db.sqlite3")
    try:
        for s, fp in corpus["fps"].items():
            e = index_entries(fp)
            await store.add_reference(f"song{s}", e.to_bytes(), fp_version=FINGERPRINT_VERSION, entry_count=len(e),
                                      title=f"Song {s}", duration=fp.duration)
        await store.remove("song6")
        rebuilt = FingerprintIndex()
        counts = await load_index(store, rebuilt)
        assert counts["loaded"] == 5 and counts["stale"] == 0
        stats = await store.stats()
        assert stats["reference"] == 5 and stats["removed"] == 1
    finally:
        await store.close()
    for name in ("mp3-32k", "excerpt-15s", "pitch-2"):
        fp = fingerprint_file(corpus["variants"][name][0])
        before = [m for m in corpus["index"].query(fp)]
        assert rebuilt.query(fp) == before, name
    assert rebuilt.query(corpus["fps"][6]) == []
