"""The on-disk index: memory-mapped segments give the same matches as memory, start-up maps
them instead of reading SQLite, and a catalogue change never rebuilds them."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from firehose_mod.scan import catalogue as cat
from firehose_mod.scan.fingerprint import (
    FINGERPRINT_VERSION,
    FingerprintIndex,
    MatchParams,
    fingerprint_samples,
    index_entries,
)
from firehose_mod.scan.fingerprint.align import SCALE_BIN, WINDOW
from firehose_mod.scan.fingerprint.segment import (
    list_segments,
    pack_postings,
    unpack_pitch_span,
    unpack_postings,
    unpack_ref_time,
)
from firehose_mod.store.catalogue import CatalogueStore
from tests import media as M

SEEDS = (1, 2, 3, 5, 7)


@pytest.fixture(scope="module")
def fps() -> dict:
    return {s: fingerprint_samples(M.song(s, 24.0, sr=8000)) for s in SEEDS}


def _excerpt(fp, a: float, b: float):
    return fp.window(a, b)


def test_postings_pack_what_the_vote_needs():
    ref = np.array([0, 5, (1 << 22) - 1])
    t = np.array([0.0, 61.234, 9 * 3600.0], np.float32)
    f = np.array([0.0, 33.3, 59.9], np.float32)
    span = np.array([0.04, 0.5, 1.4], np.float32)
    r2, t2, f2, s2 = unpack_postings(pack_postings(ref, t, f, span))
    assert (r2 == ref).all()
    assert np.abs(t2 - t).max() <= 0.004 + 1e-3
    assert np.abs(f2 - f).max() <= 1 / 32 + 1e-6
    assert np.abs(np.log(s2 / span)).max() <= 0.003


def test_a_flushed_segment_matches_exactly_as_memory_did(fps, tmp_path):
    memory = FingerprintIndex()
    memory.add_many((f"s{s}", fp) for s, fp in fps.items())
    disk = FingerprintIndex()
    disk.add_many((f"s{s}", fp) for s, fp in fps.items())
    disk.flush(tmp_path, FINGERPRINT_VERSION)
    assert disk.memory_entries() == 0 and disk.stats()["segments"] == 1
    for fp in fps.values():
        q = _excerpt(fp, 3.0, 18.0)
        assert disk.query(q) == memory.query(q) != []
    assert disk.remove("s2") and disk.query(fps[2]) == []
    # a merge drops the removed reference and keeps the rest
    old = [s for s, _ in disk.segments()]
    disk.merge_segments(tmp_path, FINGERPRINT_VERSION)
    (seg, live), = disk.segments()
    assert seg not in old and live.all() and len(seg.refs) == len(SEEDS) - 1
    assert [m.ref_id for m in disk.query(fps[3])] == ["s3"]


def test_the_candidate_budget_samples_the_search_never_the_evidence(fps):
    index = FingerprintIndex()
    index.add_many((f"s{s}", fp) for s, fp in fps.items())
    q = _excerpt(fps[5], 2.0, 20.0)
    full = index.query(q, params=replace(index.params, hit_budget=0))
    tight = index.query(q, params=replace(index.params, hit_budget=2000))
    assert full and tight == full  # the fine stage read every hit of the candidate either way


@pytest.mark.anyio
async def test_start_up_maps_segments_and_a_change_reads_only_what_changed(fps, tmp_path, monkeypatch):
    monkeypatch.setattr(cat, "BULK_ENTRIES", 1)  # every chunk read from SQLite goes to a segment
    monkeypatch.setattr(cat, "LOAD_CHUNK", 2)
    db = tmp_path / "cat.sqlite3"
    store = await CatalogueStore.open(db)
    try:
        for s in SEEDS[:4]:
            e = index_entries(fps[s])
            await store.add_reference(f"s{s}", e.to_bytes(), fp_version=FINGERPRINT_VERSION, entry_count=len(e))
        files = cat.IndexFiles(cat.index_dir(db), writable=True)
        first = FingerprintIndex()
        counts = await cat.load_segmented(store, first, files)
        assert counts["from_sqlite"] == 4 and counts["segments"] >= 1 and first.memory_entries() == 0
        built = set(list_segments(files.root))

        second = FingerprintIndex()
        counts = await cat.load_segmented(store, second, files)
        assert counts["from_segments"] == 4 and counts["from_sqlite"] == 0
        assert [m.ref_id for m in second.query(fps[3])] == ["s3"]

        # add one, replace one, remove one: only the added and the replaced are read from SQLite
        e = index_entries(fps[7])
        await store.add_reference("s7", e.to_bytes(), fp_version=FINGERPRINT_VERSION, entry_count=len(e))
        e = index_entries(fps[2])
        await store.add_reference("s1", e.to_bytes(), fp_version=FINGERPRINT_VERSION, entry_count=len(e))
        await store.remove("s2")
        monkeypatch.setattr(cat, "BULK_ENTRIES", 10**9)
        third = FingerprintIndex()
        counts = await cat.load_segmented(store, third, files)
        assert counts["from_sqlite"] == 2 and counts["from_segments"] == 2
        now = set(list_segments(files.root))
        assert now and now <= built  # nothing rebuilt (the segment left with no live reference is dropped)
        assert [m.ref_id for m in third.query(fps[7])] == ["s7"]
        assert [m.ref_id for m in third.query(fps[2])] == ["s1"]  # the replaced fingerprint; s2 is removed
        assert third.query(fps[1]) == []  # s1's old fingerprint is gone
        files.close()
    finally:
        await store.close()


def test_maintain_merges_the_smallest_segments_and_deletes_them(fps, tmp_path):
    index = FingerprintIndex()
    files = cat.IndexFiles(tmp_path / "ix", writable=True)
    for s in SEEDS[:4]:
        index.add(f"s{s}", fps[s])
        index.flush(files.root, FINGERPRINT_VERSION)
    assert len(list_segments(files.root)) == 4
    cat.maintain(index, files, max_segments=2)
    assert len(list_segments(files.root)) == len(index.segments()) <= 2
    for s in SEEDS[:4]:
        assert [m.ref_id for m in index.query(fps[s])] == [f"s{s}"]
    files.close()


def test_split_unpacking_gives_what_unpack_postings_gives():
    rng = np.random.default_rng(3)
    p = rng.integers(0, 2**63, 10_007, dtype=np.uint64)
    ref, t, f, span = unpack_postings(p)
    f2, span2 = unpack_pitch_span(p)
    ref2, t2 = unpack_ref_time(p)
    assert (ref2 == ref).all() and (t2 == t).all() and (f2 == f).all()
    assert (span2.view(np.uint32) == span.view(np.uint32)).all()  # bit for bit: the cuts compare it


def _vote_every_hit(ref, tq, tr, df, ls, p) -> list[int]:
    """The candidate vote as it was, over every hit (what the pruned vote must reproduce)."""
    lo_bin = np.floor(ls / np.float32(SCALE_BIN)).astype(np.int64)
    ref, tq, tr, df = (np.concatenate([v, v]) for v in (ref, tq, tr, df))
    kbin = np.concatenate([lo_bin, lo_bin + 1])
    pitch = np.round(df).astype(np.int64)
    win = np.floor(tq / np.float32(WINDOW)).astype(np.int64)
    local = tr - (tq - win * np.float32(WINDOW)) * np.exp(-kbin * np.float32(SCALE_BIN)).astype(np.float32)
    off = np.floor(local / np.float32(2.0)).astype(np.int64)
    cells: dict[tuple, int] = {}
    for c in zip(ref.tolist(), pitch.tolist(), kbin.tolist(), win.tolist(), off.tolist()):
        cells[c] = cells.get(c, 0) + 1
    floor = p.min_votes or max(3, p.min_matches // 4)
    strong = sorted((-n, c) for c, n in cells.items() if n >= floor)
    out: list[int] = []
    for _, c in strong:
        if c[0] not in out:
            out.append(c[0])
    return out[:p.candidates]


@pytest.mark.parametrize("seed", range(6))
def test_the_pruned_candidate_vote_picks_what_a_vote_of_every_hit_picks(seed):
    rng = np.random.default_rng(seed)
    n_refs, n = (50, 2000) if seed % 2 else (5000, 20000)
    ref = rng.integers(0, n_refs, n)
    tq = rng.uniform(0, 120, n).astype(np.float32)
    tr = rng.uniform(0, 200, n).astype(np.float32)
    df = rng.uniform(-5.5, 5.5, n).astype(np.float32)
    ls = rng.uniform(-0.4, 0.4, n).astype(np.float32)
    # a few references with real alignments: many hits in one cell, on and off scale-bin edges
    for r, scale in ((7, 1.0), (11, 1.25), (23, 0.8), (31, np.exp(0.06))):
        k = 40 + 5 * r
        tq_r = rng.uniform(10, 100, k).astype(np.float32)
        ref = np.concatenate([ref, np.full(k, r)])
        tq = np.concatenate([tq, tq_r])
        tr = np.concatenate([tr, (tq_r / scale + 3.0).astype(np.float32)])
        df = np.concatenate([df, np.full(k, -12 * np.log2(scale), np.float32)])
        ls = np.concatenate([ls, (np.log(scale) + rng.normal(0, 0.02, k)).astype(np.float32)])
    p = MatchParams()
    for params in (p, replace(p, min_votes=0, min_matches=6), replace(p, candidates=3)):
        expected = _vote_every_hit(ref, tq, tr, df, ls, params)
        assert {7, 11} <= set(expected) or params.candidates < 4
        assert FingerprintIndex._candidates(ref, tq, tr, df, ls, n_refs, params) == expected
