"""The copyright catalogue's rows on both backends (store/catalogue.py, store/pg/catalogue.py):
what `catalogue add|remove|list|stats` and every scan worker's index rely on."""

from __future__ import annotations

import numpy as np
import pytest

from firehose_mod.store.open import open_catalogue_store

pytestmark = pytest.mark.anyio

LABEL_LOG_BACKENDS = ("sqlite", "postgres")


def blob(n: int) -> bytes:
    return np.arange(n, dtype="<u4").tobytes()


async def test_a_reference_is_added_replaced_found_and_removed(settings):
    async with open_catalogue_store(settings) as store:
        first = await store.add_reference("ref:song", blob(10), fp_version="v2", entry_count=10, title="Song",
                                          artist="Band", duration=181.5, sha256="aa" * 32,
                                          chromaprint=np.array([1, 2, 3], "<u4"))
        again = await store.add_reference("ref:song", blob(12), fp_version="v2", entry_count=12, title="Song (remaster)")
        assert again == first  # same ref: the row is replaced, its id kept
        got = await store.get("ref:song")
        assert (got.title, got.entries, got.kind, got.removed, got.chromaprint) == ("Song (remaster)", 12, "reference",
                                                                                     False, None)
        assert await store.find_sha256("aa" * 32) is None  # the replacement carried no sha256
        await store.add_reference("ref:other", blob(5), fp_version="v2", entry_count=5, sha256="bb" * 32,
                                  chromaprint=np.array([7, 8], "<u4"))
        found = await store.find_sha256("bb" * 32)
        assert found.ref == "ref:other" and found.chromaprint.tolist() == [7, 8]
        before = await store.reference_signature()
        assert await store.remove("ref:other") and not await store.remove("ref:other")  # once only
        assert not await store.remove("ref:unknown")
        after = await store.reference_signature()
        assert before[0::2] == (2, 0) and after == (2, before[1], 1)  # a removal changes what the watcher compares
        assert await store.find_sha256("bb" * 32) is None
        assert [r.ref for r in await store.list()] == ["ref:song"]
        assert [(r.ref, r.removed) for r in await store.list(include_removed=True)] == [("ref:song", False),
                                                                                         ("ref:other", True)]


async def test_uploads_and_stale_versions_are_told_apart_when_the_index_loads(settings):
    async with open_catalogue_store(settings) as store:
        ref_id = await store.add_reference("ref:a", blob(4), fp_version="v2", entry_count=4)
        upload = await store.add_upload("at://did:plc:x/fm.plyr.track/1", blob(6), fp_version="v2", entry_count=6)
        await store.add_reference("ref:old", blob(3), fp_version="v1", entry_count=3)
        await store.add_reference("ref:gone", blob(2), fp_version="v2", entry_count=2)
        await store.remove("ref:gone")
        loaded, stale = await store.load_all("v2")
        assert [(ref, data) for ref, data in loaded] == [("ref:a", blob(4)), ("at://did:plc:x/fm.plyr.track/1", blob(6))]
        assert stale == ["ref:old"]
        live, stale = await store.live_refs("v2")
        assert {ref: row_id for ref, (row_id, _added) in live.items()} == {"ref:a": ref_id,
                                                                           "at://did:plc:x/fm.plyr.track/1": upload}
        assert stale == ["ref:old"]
        entries = await store.load_entries([upload, ref_id, 999])
        assert [(ref, row_id, data) for ref, row_id, _added, data in entries] == [
            ("ref:a", ref_id, blob(4)), ("at://did:plc:x/fm.plyr.track/1", upload, blob(6))]
        assert [r.ref for r in await store.list(kind="upload")] == ["at://did:plc:x/fm.plyr.track/1"]
        stats = await store.stats()
        assert stats == {"reference": 2, "upload": 1, "removed": 1, "entries": 13,
                         "bytes": len(blob(4)) + len(blob(6)) + len(blob(3))}
        assert all(type(v) is int for v in stats.values())  # `catalogue stats --json` prints them


async def test_two_processes_see_one_catalogue(settings, backend):
    async with open_catalogue_store(settings) as one, open_catalogue_store(settings) as two:
        await one.add_reference("ref:shared", blob(8), fp_version="v2", entry_count=8)
        assert (await two.get("ref:shared")).entries == 8
        assert await two.remove("ref:shared")
        assert (await one.get("ref:shared")).removed
