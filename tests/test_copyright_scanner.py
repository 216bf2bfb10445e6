"""CopyrightScanner and the catalogue import, over a real SQLite file and a real process pool."""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import anyio
import anyio.to_thread
import pytest

from firehose_mod.scan.base import ScanContext, Scanner, Track
from firehose_mod.scan.catalogue import Catalogue
from firehose_mod.scan.copyright import CopyrightScanner, import_paths, load_index, remove_reference
from firehose_mod.scan.fingerprint import FingerprintIndex
from firehose_mod.store.catalogue import CatalogueStore

from tests import media as M

pytestmark = pytest.mark.anyio


class LocalMedia:
    """Media that serves local files by track uri."""

    def __init__(self, files: dict[str, Path]):
        self.files = files

    async def audio(self, track: Track) -> Path | None:
        return self.files.get(track.uri)

    async def image(self, track: Track) -> Path | None:
        return None


def track(uri: str, title: str = "t") -> Track:
    did, _, rkey = uri.removeprefix("at://").partition("/fm.plyr.track/")
    return Track(uri=uri, did=did, rkey=rkey, cid="bafy" + rkey, record={"title": title, "artist": "a"})


@pytest.fixture(scope="module")
def pool():
    with ProcessPoolExecutor(max_workers=2) as p:
        yield p


@pytest.fixture
def run_cpu(pool):
    async def run(fn, *args):
        return await anyio.to_thread.run_sync(pool.submit(fn, *args).result)
    return run


@pytest.fixture
async def store(tmp_path):
    s = await CatalogueStore.open(tmp_path / "db.sqlite3")
    yield s
    await s.close()


ORIGINAL = "at://did:plc:alice/fm.plyr.track/3kaaa"
COPY = "at://did:plc:mallory/fm.plyr.track/3kbbb"
OTHER = "at://did:plc:bob/fm.plyr.track/3kccc"


async def test_reupload_of_an_indexed_upload_is_found_and_own_uri_is_not(tmp_path, store, run_cpu):
    x = M.song(21, 30)
    original = M.write_wav(tmp_path / "orig.wav", x)
    files = {
        ORIGINAL: original,
        COPY: M.mp3(original, tmp_path / "copy.mp3"),
        OTHER: M.write_wav(tmp_path / "other.wav", M.song(22, 30)),
    }
    catalogue = Catalogue(store, FingerprintIndex())
    scanner = catalogue.scanner
    assert isinstance(scanner, Scanner)

    async def scan(uri: str) -> list:
        """Scan as the engine does: then perform the effects the scanner described."""
        ctx = ScanContext(media=LocalMedia(files), run_cpu=run_cpu)
        before = [(r.ref, r.added) for r in await store.list(kind="upload")]
        findings = await scanner.scan(track(uri), ctx)
        assert [(r.ref, r.added) for r in await store.list(kind="upload")] == before  # the scanner wrote nothing
        for effect in ctx.effects:
            await catalogue.index_upload(effect)
        return findings

    assert await scan(ORIGINAL) == []  # first seen: nothing to match, now indexed
    assert await scan(ORIGINAL) == []  # a new version of the same record: not itself
    assert await scan(OTHER) == []

    (finding,) = await scan(COPY)
    assert finding.kind == "copyright-match" and finding.value == "copyright-violation"
    ev = finding.evidence
    assert ev["ref"] == ORIGINAL and ev["ref_kind"] == "upload" and ev["title"] == "t"
    assert ev["seconds_matched"] > 25 and ev["chromaprint_duplicate"] is True
    assert ev["edit"] == "none" and ev["time_scale"] == pytest.approx(1, abs=0.01) and ev["pitch_bands"] >= 8
    assert 0 < finding.score <= 1

    # The index survives a restart: rebuilt from SQLite, the copy is still found.
    rebuilt = FingerprintIndex()
    assert (await load_index(store, rebuilt))["loaded"] == 3
    ctx = ScanContext(media=LocalMedia(files), run_cpu=run_cpu)
    (again,) = await CopyrightScanner(store, rebuilt).scan(track(COPY), ctx)
    assert again.evidence["ref"] == ORIGINAL


async def test_track_without_audio_or_undecodable_gives_no_finding(tmp_path, store, run_cpu):
    bad = tmp_path / "bad.mp3"
    bad.write_bytes(b"not audio at all" * 100)
    ctx = ScanContext(media=LocalMedia({OTHER: bad}), run_cpu=run_cpu)
    scanner = CopyrightScanner(store, FingerprintIndex())
    assert await scanner.scan(track(ORIGINAL), ctx) == []
    assert await scanner.scan(track(OTHER), ctx) == []


async def test_catalogue_import_is_resumable_and_matches_then_removal_unmatches(tmp_path, store, run_cpu):
    cat = tmp_path / "catalogue"
    (cat / "album").mkdir(parents=True)
    ref_path = M.write_wav(cat / "album" / "hit.wav", M.song(31, 30))
    M.write_wav(cat / "other.wav", M.song(32, 30))
    M.write_wav(cat / "silent.wav", M.silence(10))
    (cat / "notes.txt").write_text("liner notes")
    index = FingerprintIndex()
    seen = []
    report = await import_paths([cat], store, index, progress=lambda *a: seen.append(a), run_cpu=run_cpu)
    assert len(report.added) == 2 and not report.failed
    reasons = dict(report.skipped)
    assert "not an audio file" in reasons[str(cat / "notes.txt")]
    assert "no fingerprintable audio" in reasons[str(cat / "silent.wav")]
    assert [s[0] for s in seen] == [1, 2, 3] and seen[-1][1] == 3

    again = await import_paths([cat], store, index, run_cpu=run_cpu)
    assert again.added == [] and sum("already imported" in r for _, r in again.skipped) == 2

    upload = M.excerpt(M.read_wav(ref_path), 5, 15)
    files = {COPY: M.write_wav(tmp_path / "up.wav", upload)}
    ctx = ScanContext(media=LocalMedia(files), run_cpu=run_cpu)
    scanner = CopyrightScanner(store, index)
    (finding,) = await scanner.scan(track(COPY), ctx)
    assert finding.evidence["ref_kind"] == "reference" and finding.evidence["title"] == "hit"
    assert finding.evidence["chromaprint_duplicate"] is False  # an excerpt, not the same file
    assert 12 <= finding.evidence["seconds_matched"] <= 16

    ref = finding.evidence["ref"]
    assert await remove_reference(ref, store, index)
    assert await scanner.scan(track(COPY), ctx) == []
    assert [r.ref for r in await store.list(include_removed=True) if r.removed] == [ref]


async def test_import_without_a_pool_uses_its_own(tmp_path, store):
    M.write_wav(tmp_path / "one.wav", M.song(41, 20))
    report = await import_paths([tmp_path / "one.wav", tmp_path / "missing.wav"], store, FingerprintIndex(),
                                concurrency=1)
    assert len(report.added) == 1
    assert dict(report.skipped)[str(tmp_path / "missing.wav")] == "no such file or directory"
