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
    fingerprint_samples,
    index_entries,
)
from firehose_mod.scan.fingerprint.segment import (
    list_segments,
    pack_postings,
    unpack_postings,
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
