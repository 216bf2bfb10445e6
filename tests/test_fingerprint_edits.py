"""The edits re-uploaders make (nightcore, slowed + reverb, tempo, pitch, voice-over, DJ mixes,
loops, effects) are matched with the right time scale and pitch; covers, speech, tones never are."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from firehose_mod.scan.fingerprint import FingerprintIndex, describe_edit, fingerprint_file

from tests import media as M

SONG_S = 30.0
SR = M.SR


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory) -> dict:
    d: Path = tmp_path_factory.mktemp("edits")
    songs = {s: M.song(s, SONG_S) for s in (1, 2, 3, 4)}
    paths = {s: M.write_wav(d / f"ref{s}.wav", x) for s, x in songs.items()}
    index = FingerprintIndex()
    index.add_many((f"song{s}", fingerprint_file(p)) for s, p in paths.items())
    return {"dir": d, "songs": songs, "paths": paths, "index": index}


def ffmpeg_edit(src: Path, dst: Path, af: str) -> Path:
    return M.ffmpeg(src, dst, "-af", af)


def speed(factor: float, extra: str = "") -> str:
    """A turntable speed change: faster and higher together (nightcore), or slower and lower."""
    return f"asetrate={SR * factor:.0f},aresample={SR}" + (f",{extra}" if extra else "")


# name -> (ffmpeg filter on song 2, expected time scale (query s per ref s), expected pitch shift in semitones);
# "reverb" edits are made on song 2 in a room (tests.media.reverb: RT60 1.2 s, 40% wet) first.
EDITS = {
    "nightcore x1.25": (speed(1.25), 1 / 1.25, 12 * np.log2(1.25)),
    "nightcore x1.35": (speed(1.35), 1 / 1.35, 12 * np.log2(1.35)),
    "slowed x0.8 + reverb": (speed(0.8), 1 / 0.8, 12 * np.log2(0.8)),
    "slowed x0.75 + reverb": (speed(0.75), 1 / 0.75, 12 * np.log2(0.75)),
    "tempo +15%": ("atempo=1.15", 1 / 1.15, 0.0),
    "tempo -15%": ("atempo=0.85", 1 / 0.85, 0.0),
    "pitch +4": (f"asetrate={SR * 2 ** (4 / 12):.0f},aresample={SR},atempo={2 ** (-4 / 12):.6f}", 1.0, 4.0),
    "pitch -4": (f"asetrate={SR * 2 ** (-4 / 12):.0f},aresample={SR},atempo={2 ** (4 / 12):.6f}", 1.0, -4.0),
    "reverb": ("anull", 1.0, 0.0),
    "bass boost": ("bass=g=15,alimiter=limit=0.9", 1.0, 0.0),
    "heavy compression": ("acompressor=threshold=0.05:ratio=8:attack=20:release=250:makeup=4,alimiter=limit=0.9",
                          1.0, 0.0),
}


@pytest.mark.parametrize("name", list(EDITS))
def test_edit_is_matched_with_its_time_scale_and_pitch(catalogue, tmp_path, name):
    af, scale, pitch = EDITS[name]
    src = catalogue["paths"][2]
    if "reverb" in name:
        src = M.write_wav(tmp_path / "room.wav", M.reverb(catalogue["songs"][2], rt60=1.2, wet=0.4))
    query = ffmpeg_edit(src, tmp_path / "q.wav", af)
    matches = catalogue["index"].query(fingerprint_file(query))
    assert [m.ref_id for m in matches] == ["song2"], f"{name}: {matches}"
    m = matches[0]
    assert m.time_scale == pytest.approx(scale, rel=0.01), m
    assert m.pitch_shift_semitones == pytest.approx(pitch, abs=0.3), m
    assert m.seconds_matched >= 0.7 * SONG_S * scale, m
    assert m.ref_start == pytest.approx(0, abs=1.5) and m.query_start == pytest.approx(0, abs=1.5), m


def test_wrong_scale_or_pitch_evidence_would_fail(catalogue, tmp_path):
    """The evidence is measured, not assumed: a nightcore copy is not reported as tempo- or pitch-only."""
    fp = fingerprint_file(ffmpeg_edit(catalogue["paths"][1], tmp_path / "nc.wav", speed(1.3)))
    (m,) = catalogue["index"].query(fp)
    assert abs(m.time_scale - 1) > 0.2 and abs(m.pitch_shift_semitones) > 4
    assert describe_edit(m.time_scale, m.pitch_shift_semitones) == "nightcore x1.30"
    fp = fingerprint_file(ffmpeg_edit(catalogue["paths"][1], tmp_path / "t.wav", "atempo=0.87"))
    (m,) = catalogue["index"].query(fp)
    assert describe_edit(m.time_scale, m.pitch_shift_semitones) == "tempo x0.87"


def test_describe_edit_names_the_edits():
    assert describe_edit(1.0, 0.0) == "none"
    assert describe_edit(0.8, 12 * np.log2(1.25)) == "nightcore x1.25"
    assert describe_edit(1 / 0.8, 12 * np.log2(0.8)) == "slowed x0.80"
    assert describe_edit(1.0, -3.0) == "pitch -3.0 st"
    assert describe_edit(1 / 1.1, 0.05) == "tempo x1.10"
    assert describe_edit(1 / 1.04, 2.0) == "tempo x1.04, pitch +2.0 st"


def test_voice_over_is_matched(catalogue, tmp_path):
    x = catalogue["songs"][2]
    voice = M.babble(SONG_S, seed=5)
    q = M.write_wav(tmp_path / "vo.wav", 0.6 * x + 0.8 * voice[:x.size])
    (m,) = catalogue["index"].query(fingerprint_file(q))
    assert m.ref_id == "song2" and m.seconds_matched >= 10, m


def test_dj_crossfade_matches_both_tracks_with_their_offsets(catalogue, tmp_path):
    a, b = catalogue["songs"][3], catalogue["songs"][4]
    mix = M.crossfade(a[int(10 * SR):], b, 6.0)  # song3 from 10 s, fading into song4 at 14 s of the mix
    found = {m.ref_id: m for m in catalogue["index"].query(fingerprint_file(M.write_wav(tmp_path / "dj.wav", mix)))}
    assert set(found) == {"song3", "song4"}, found
    assert found["song3"].query_start == pytest.approx(0, abs=1.0) and found["song3"].ref_start == pytest.approx(10, abs=1.0)
    # Inside a linear 6 s fade, song4 becomes recognisable part-way through it.
    assert 14 - 1.0 <= found["song4"].query_start <= 20 and found["song4"].ref_start == pytest.approx(
        found["song4"].query_start - 14, abs=1.0)
    assert found["song3"].query_end <= 21.0 and found["song3"].seconds_matched <= 21.0


def test_loop_of_one_passage_is_matched(catalogue, tmp_path):
    q = M.write_wav(tmp_path / "loop.wav", M.loop(catalogue["songs"][2], 5.0, 12.0, 4))
    (m,) = catalogue["index"].query(fingerprint_file(q))
    assert m.ref_id == "song2" and m.ref_start == pytest.approx(5, abs=1.0), m


def test_stereo_to_mono_fold_is_matched(catalogue, tmp_path):
    x = catalogue["songs"][3]
    lag = int(0.012 * SR)
    stereo = M.write_stereo_wav(tmp_path / "st.wav", x, 0.7 * np.concatenate([np.zeros(lag, np.float32), x[:-lag]]))
    mono = M.ffmpeg(stereo, tmp_path / "mono.mp3", "-ac", "1", "-b:a", "64k")
    (m,) = catalogue["index"].query(fingerprint_file(mono))
    assert m.ref_id == "song3" and m.seconds_matched >= 25, m


@pytest.mark.parametrize(("seed", "performer"), [(5, 1), (7, 2), (9, 1), (12, 1)])
def test_a_cover_from_the_same_score_is_not_a_copy(tmp_path, seed, performer):
    """Same melody, chords and tempo, another band. (Generated songs 2 and 3, loops of four bars,
    are known exceptions: see bench/FINGERPRINT.md.)"""
    index = FingerprintIndex()
    index.add("original", fingerprint_file(M.write_wav(tmp_path / "o.wav", M.song(seed, SONG_S))))
    fp = fingerprint_file(M.write_wav(tmp_path / "c.wav", M.cover(seed, SONG_S, performer)))
    assert len(fp) > 300
    assert index.query(fp) == []


@pytest.mark.parametrize("kind", ["babble", "tone", "sweep", "chord", "silence"])
def test_speech_tones_and_silence_match_nothing(catalogue, tmp_path, kind):
    t = np.arange(int(20 * SR)) / SR
    x = {
        "babble": lambda: M.babble(20, seed=3),
        "tone": lambda: 0.5 * np.sin(2 * np.pi * 440 * t),
        "sweep": lambda: 0.5 * np.sin(2 * np.pi * (100 * t + 95 * t ** 2)),
        "chord": lambda: 0.2 * sum(np.sin(2 * np.pi * f * t) for f in (261.6, 329.6, 392.0)),
        "silence": lambda: M.silence(20),
    }[kind]().astype(np.float32)
    assert catalogue["index"].query(fingerprint_file(M.write_wav(tmp_path / "n.wav", x))) == []


def test_two_references_sharing_an_intro_each_claim_only_what_they_share(tmp_path):
    a, b = M.shared_intro_pair(11, 12, 13, intro_s=8.0, body_s=22.0)
    index = FingerprintIndex()
    index.add("a", fingerprint_file(M.write_wav(tmp_path / "a.wav", a)))
    index.add("b", fingerprint_file(M.write_wav(tmp_path / "b.wav", b)))
    found = {m.ref_id: m for m in index.query(fingerprint_file(M.write_wav(tmp_path / "q.wav", a)))}
    assert found["a"].seconds_matched >= 27, found
    if "b" in found:  # the shared intro is a true 8 s overlap: never more than that
        assert found["b"].seconds_matched <= 9.0 and found["b"].query_end <= 9.0, found


def test_digital_silence_in_a_reference_never_counts(tmp_path):
    intro = M.song(21, 8.0)
    ref = np.concatenate([intro, M.silence(40), M.song(22, 10.0)])
    query = np.concatenate([intro, M.silence(40), M.song(23, 10.0)])
    index = FingerprintIndex()
    index.add("ref", fingerprint_file(M.write_wav(tmp_path / "r.wav", ref)))
    (m,) = index.query(fingerprint_file(M.write_wav(tmp_path / "q.wav", query)))
    assert m.seconds_matched <= 9.0 and m.query_end <= 9.0, m
    silent = fingerprint_file(M.write_wav(tmp_path / "s.wav", M.silence(60)))
    assert len(silent) == 0 and index.query(silent) == []


def test_a_long_upload_is_looked_up_in_windows_and_its_match_joined(catalogue, tmp_path, monkeypatch):
    from firehose_mod.scan.fingerprint import index as index_module

    x = catalogue["songs"][3]
    fp = fingerprint_file(M.write_wav(tmp_path / "long.wav", np.concatenate([M.song(31, 20.0), x])))
    whole = catalogue["index"].query(fp)
    monkeypatch.setattr(index_module, "_QUERY_WINDOW", 12.0)  # a 50 s query in five windows
    monkeypatch.setattr(index_module, "_QUERY_OVERLAP", 4.0)
    pieces = catalogue["index"].query(fp)
    assert [m.ref_id for m in whole] == [m.ref_id for m in pieces] == ["song3"], pieces
    assert pieces[0].query_start == pytest.approx(20, abs=1.0) and pieces[0].ref_start == pytest.approx(0, abs=1.0)
    assert pieces[0].seconds_matched == pytest.approx(whole[0].seconds_matched, abs=3.0), (whole, pieces)
