"""Background merging of the index's segments (scan/catalogue.py `plan_merge`, `keep_merged`):
sizes kept geometric so a lookup touches few segments, every match kept through a merge, a
shutdown that stops a merge leaves no trace, a full disk makes it wait, and a process that
only maps the directory follows the writer's merges."""

from __future__ import annotations

import logging
import shutil

import anyio
import pytest

from firehose_mod.scan import catalogue as cat
from firehose_mod.scan.fingerprint import FINGERPRINT_VERSION, FingerprintIndex, fingerprint_samples, index_entries
from firehose_mod.scan.fingerprint.segment import MergeStopped, list_segments, merge
from firehose_mod.store.catalogue import CatalogueStore
from tests import media as M

SEEDS = (11, 12, 13, 14, 15)


@pytest.fixture(scope="module")
def fps() -> dict:
    return {s: fingerprint_samples(M.song(s, 20.0, sr=8000)) for s in SEEDS}


def _flushed(fps, root) -> FingerprintIndex:
    """An index with one segment per song (what a daemon has after several flushes)."""
    index = FingerprintIndex()
    for s in SEEDS:
        index.add(f"s{s}", fps[s])
        index.flush(root, FINGERPRINT_VERSION)
    return index


def _matches(index, fps) -> dict:
    return {s: [m.ref_id for m in index.query(fps[s].window(2.0, 17.0))] for s in SEEDS}


def _apply(sizes: list[int], ratio: float) -> tuple[list[int], int]:
    """Run the plan to its end on segment sizes; (sizes after, entries written by merges)."""
    written = 0
    while pick := cat.plan_merge([(n, 1, 1.0) for n in sizes], ratio=ratio):
        merged = sum(sizes[i] for i in pick)
        written += merged
        sizes = [n for i, n in enumerate(sizes) if i not in pick] + [merged]
    return sizes, written


def test_the_bulk_segments_of_a_first_start_become_one():
    assert sorted(cat.plan_merge([(64, 8000, 1.0)] * 12)) == list(range(12))
    # as a first start writes them: equal bulk segments and what was left over (fingerprint_scale.py's 100,000)
    assert sorted(cat.plan_merge([(68, 9000, 1.0)] * 11 + [(7.5, 1000, 1.0)])) == list(range(12))


def test_a_small_segment_waits_until_the_small_ones_add_up_to_a_share_of_the_large():
    assert cat.plan_merge([(756, 100_000, 1.0), (4, 500, 1.0)]) == []
    assert sorted(cat.plan_merge([(756, 100_000, 1.0), (4, 500, 1.0), (4, 500, 1.0)])) == [1, 2]
    # the small ones join the large one once they hold a quarter of it
    assert sorted(cat.plan_merge([(100, 1, 1.0), (20, 1, 1.0), (5, 1, 1.0)])) == [0, 1, 2]
    assert sorted(cat.plan_merge([(101, 1, 1.0), (20, 1, 1.0), (5, 1, 1.0)])) == [1, 2]


def test_a_stream_of_flushes_keeps_few_segments_and_rewrites_each_entry_a_bounded_number_of_times():
    sizes: list[int] = []
    most = written = 0
    for _ in range(1600):  # 1,600 flushes of 4M entries: a catalogue of ~850,000 tracks
        sizes, w = _apply(sizes + [4], 4)
        written += w
        most = max(most, len(sizes))
    assert most <= 5 and len(sizes) <= 5
    assert written / sum(sizes) <= 12  # each entry rewritten about log(catalogue) times, not once a flush
    assert sum(sizes) == 1600 * 4


def test_the_plan_respects_the_reference_limit_the_dead_and_the_segment_cap():
    # two segments that would exceed what one segment can number stay apart
    assert cat.plan_merge([(10, 3, 1.0), (10, 3, 1.0)], max_refs=5) == []
    # a segment mostly of removed references is rewritten alone
    assert cat.plan_merge([(1000, 10, 0.3), (10, 1, 1.0)]) == [0]
    # past the cap, the smallest are merged whatever their sizes
    sizes = [(10 ** i, 1, 1.0) for i in range(1, 8)]
    assert cat.plan_merge(sizes, ratio=4) == []
    assert sorted(cat.plan_merge(sizes, ratio=4, max_segments=4)) == [0, 1, 2, 3, 4, 5]  # down to half the cap


def test_maintain_merges_to_one_segment_and_every_match_is_kept(fps, tmp_path):
    files = cat.IndexFiles(tmp_path / "ix", writable=True)
    index = _flushed(fps, files.root)
    before = _matches(index, fps)
    assert all(before[s] == [f"s{s}"] for s in SEEDS)
    shown = cat.index_summary(files.root)  # what `catalogue stats` reports
    assert shown["segments"] == len(SEEDS) and shown["merge_pending"]
    assert cat.maintain(index, files) >= 1
    assert len(list_segments(files.root)) == len(index.segments()) == 1
    assert _matches(index, fps) == before
    shown = cat.index_summary(files.root)
    assert shown["segments"] == 1 and not shown["merge_pending"]
    assert shown["segment_entries"] == [index.stats()["entries"]] and shown["index_bytes"] > 0
    files.close()


def test_a_merge_waits_for_disk_and_loses_nothing(fps, tmp_path, monkeypatch, caplog):
    files = cat.IndexFiles(tmp_path / "ix", writable=True)
    index = _flushed(fps, files.root)
    before = set(list_segments(files.root))

    class Usage:
        free = 10 << 20  # 10 MB: less than the copy and the margin

    monkeypatch.setattr(cat.shutil, "disk_usage", lambda _p: Usage)
    with caplog.at_level(logging.WARNING):
        assert cat.maintain(index, files) == 0
    assert set(list_segments(files.root)) == before and len(index.segments()) == len(SEEDS)
    assert all(m == [f"s{s}"] for s, m in _matches(index, fps).items())
    monkeypatch.undo()
    assert cat.maintain(index, files) >= 1  # the next look, with the disk freed, merges
    files.close()


def test_a_stopped_merge_leaves_no_partial_segment(fps, tmp_path):
    files = cat.IndexFiles(tmp_path / "ix", writable=True)
    index = _flushed(fps, files.root)
    segs = index.segments()
    calls = []

    def stop() -> bool:
        calls.append(1)
        return len(calls) > 3  # stops in the middle of the postings

    with pytest.raises(MergeStopped):
        merge(files.root, [s for s, _ in segs], [m for _, m in segs], FINGERPRINT_VERSION, key_chunk=1 << 14, stop=stop)
    assert sorted(p.name for p in files.root.iterdir() if p.name != ".lock") == sorted(s.path.name for s, _ in segs)
    with pytest.raises(MergeStopped):
        index.merge_segments(files.root, FINGERPRINT_VERSION, stop=lambda: True)
    assert len(index.segments()) == len(SEEDS)
    assert all(m == [f"s{s}"] for s, m in _matches(index, fps).items())
    files.close()


def _on_disk(root) -> list:
    """Finished segments (not `list_segments`: it sweeps temporary directories, a merge's own)."""
    return [p for p in root.iterdir() if p.name.startswith("seg-")]


async def _catalogue(db, fps, writable: bool) -> cat.Catalogue:
    store = await CatalogueStore.open(db)
    files = cat.IndexFiles(cat.index_dir(db), writable=writable)
    index = FingerprintIndex()
    await cat.load_segmented(store, index, files)
    return cat.Catalogue(store, index, files)


@pytest.mark.anyio
async def test_the_daemon_merges_in_the_background_and_a_reader_follows(fps, tmp_path, monkeypatch):
    monkeypatch.setattr(cat, "BULK_ENTRIES", 1)  # a first start writes a segment per chunk read
    monkeypatch.setattr(cat, "LOAD_CHUNK", 1)
    db = tmp_path / "cat.sqlite3"
    store = await CatalogueStore.open(db)
    for s in SEEDS:
        e = index_entries(fps[s])
        await store.add_reference(f"s{s}", e.to_bytes(), fp_version=FINGERPRINT_VERSION, entry_count=len(e))
    await store.close()
    writer = await _catalogue(db, fps, True)
    reader = await _catalogue(db, fps, False)
    try:
        assert len(writer.index.segments()) == len(SEEDS)  # start-up did not merge: it stays short
        assert len(reader.index.segments()) == len(SEEDS)
        async with anyio.create_task_group() as tg:
            tg.start_soon(writer.keep_merged, 3600)
            tg.start_soon(reader.follow_imports, 0.05)
            with anyio.fail_after(30):
                while len(_on_disk(cat.index_dir(db))) != 1 or len(reader.index.segments()) != 1:
                    await anyio.sleep(0.05)
            tg.cancel_scope.cancel()
        assert len(writer.index.segments()) == 1
        assert reader.index.stats()["disk_bytes"] == writer.index.stats()["disk_bytes"] > 0
        for c in (writer, reader):
            assert all(m == [f"s{s}"] for s, m in _matches(c.index, fps).items())
    finally:
        for c in (writer, reader):
            c.files.close()
            await c.store.close()


@pytest.mark.anyio
async def test_a_cancelled_merger_stops_at_once_and_cleans_up(fps, tmp_path, monkeypatch):
    files = cat.IndexFiles(tmp_path / "ix", writable=True)
    index = _flushed(fps, files.root)
    started = anyio.Event()
    real_merge = cat.FingerprintIndex.merge_segments

    def slow_merge(self, root, version, which=None, *, stop=None, progress=None):
        anyio.from_thread.run_sync(started.set)
        import time
        while not stop():  # a merge of 100,000 tracks takes minutes: only the stop ends it
            time.sleep(0.01)
        return real_merge(self, root, version, which, stop=stop, progress=progress)

    monkeypatch.setattr(cat.FingerprintIndex, "merge_segments", slow_merge)
    catalogue = cat.Catalogue(None, index, files)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(catalogue.keep_merged, 3600)
            await started.wait()
            tg.cancel_scope.cancel()
    assert not [p for p in files.root.iterdir() if p.name.endswith(".tmp")]
    assert len(list_segments(files.root)) == len(index.segments()) == len(SEEDS)
    files.close()


def test_a_segment_deleted_while_a_reader_lists_it_is_skipped(fps, tmp_path):
    files = cat.IndexFiles(tmp_path / "ix", writable=True)
    index = _flushed(fps, files.root)
    (first, _), (second, _) = index.segments()[:2]
    (second.path / "postings.npy").unlink()  # the writer's rmtree caught halfway
    assert cat._open_segment(first.path) is not None
    assert cat._open_segment(second.path) is None
    assert cat._open_segment(tmp_path / "ix" / "seg-gone") is None
    assert cat._listed(files.root) == [s.path for s, _ in index.segments()]  # oldest first
    size = index.stats()["disk_bytes"]
    shutil.rmtree(first.path)  # merged away by the writer, still mapped here
    assert index.stats()["disk_bytes"] == size  # what /metrics reads does not fail
    assert first.path not in cat._listed(files.root)
    files.close()
