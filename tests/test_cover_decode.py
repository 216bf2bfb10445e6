"""Covers as a browser shows them: truncated files load, large JPEGs decode at reduced scale, and
a cover that truly cannot be decoded waits for a human instead of passing as clean."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from firehose_mod.scan.base import Track
from firehose_mod.scan.cover import CoverArtScanner, CoverLimits, analyse_cover, decode_cover
from firehose_mod.scan.engine import ScanEngine
from firehose_mod.scan.policy import load_policy
from firehose_mod.store.decisions import DecisionStore
from tests.test_cover import artwork, ctx_for, png_chunk

URI = "at://did:plc:artist/fm.plyr.track/3kone"
TRACK = Track(URI, "did:plc:artist", "3kone", "bafyreia", {"title": "Song", "artist": "A"})


def jpeg(img: Image.Image, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


def distance(a: str, b: str) -> int:
    return bin(int(a, 16) ^ int(b, 16)).count("1")


def test_a_jpeg_missing_its_last_two_bytes_is_scored_like_the_whole_file(tmp_path):
    whole = jpeg(artwork(5))
    assert whole.endswith(b"\xff\xd9")
    full = analyse_cover(write(tmp_path / "whole.jpg", whole), CoverLimits(), lambda img: 0.3)
    cut = analyse_cover(write(tmp_path / "cut.jpg", whole[:-2]), CoverLimits(), lambda img: 0.3)
    assert cut.error is None, cut.error
    assert cut.nsfw == 0.3 and distance(cut.pdq[0], full.pdq[0]) <= 4  # the same picture
    assert "partial" not in full.facts and "truncated" in cut.facts["partial"]
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False  # the lenient decode left Pillow as it found it


def test_half_a_file_shows_the_half_that_arrived(tmp_path):
    img = artwork(6)
    png = io.BytesIO()
    img.save(png, "PNG")
    for name, data in {"half.jpg": jpeg(img), "half.png": png.getvalue()}.items():
        decoded, facts = decode_cover(write(tmp_path / name, data[: len(data) // 2]))
        top = np.asarray(decoded)[: decoded.height // 4].astype(int)
        original = np.asarray(img.resize(decoded.size))[: decoded.height // 4].astype(int)
        assert np.abs(top - original).mean() < 12, name  # the top is the picture, not filler
        assert facts["partial"] and facts["width"] == 640, name


def test_a_5200px_jpeg_is_decoded_at_reduced_scale_within_our_pixel_limit(tmp_path):
    big = artwork(7).resize((5200, 5200), Image.Resampling.BILINEAR)
    path = write(tmp_path / "big.jpg", jpeg(big, quality=80))
    small = analyse_cover(write(tmp_path / "small.jpg", jpeg(artwork(7))), CoverLimits(), None)
    assert analyse_cover(path, CoverLimits(), None).error is None  # the default limits
    # The JPEG is decoded at 1/4 scale (1300x1300): it fits a 2 MP budget that 5200x5200 would not.
    limits = CoverLimits(max_pixels=2_000_000)
    result = analyse_cover(path, limits, lambda img: 0.2)
    assert result.error is None, result.error
    assert (result.facts["width"], result.facts["height"]) == (5200, 5200) and result.nsfw == 0.2
    assert result.facts["decoded"] == [1300, 1300]
    assert distance(result.pdq[0], small.pdq[0]) <= 16  # scored on the same picture, downscaled
    img, _ = decode_cover(path, limits)
    assert max(img.size) <= limits.work_side
    # Formats without reduced-scale decoding are bounded by the same limit, before decoding.
    png = b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", 5200, 5200, 8, 2, 0, 0, 0)) \
        + png_chunk(b"IDAT", zlib.compress(b"\0" * 15601 * 8)) + png_chunk(b"IEND", b"")
    assert analyse_cover(write(tmp_path / "big.png", png), limits, None).reason == "too-many-pixels"
    # A JPEG too large even at reduced scale is refused before decoding, by our limit, not Pillow's.
    header = jpeg(Image.new("RGB", (64, 64)))
    sof = header.index(b"\xff\xc0")
    huge = header[: sof + 5] + struct.pack(">HH", 8000, 8000) + header[sof + 9:]
    refused = analyse_cover(write(tmp_path / "huge.jpg", huge), limits, None)
    assert refused.reason == "too-many-pixels" and "2000000" in refused.error


@pytest.fixture
async def decisions(settings, label_log):
    store = await DecisionStore.open(settings.db_path)
    yield store
    await store.close()


@pytest.mark.anyio
async def test_a_cover_that_cannot_be_decoded_goes_to_review_a_tiny_one_does_not(tmp_path, label_log, decisions):
    async def scan(path: Path) -> tuple:
        engine = ScanEngine([CoverArtScanner(scorer=lambda img: 0.0)], load_policy(None), label_log, decisions,
                            ctx_for(path))
        return await engine.process(TRACK)

    garbage = tmp_path / "cover.jpg"
    garbage.write_bytes(b"\xff\xd8\xff\xe0" + np.random.default_rng(1).bytes(4000))  # JPEG magic, then noise
    outcome = await scan(garbage)
    (review,) = outcome.plan.review
    assert outcome.reviews_opened == 1 and review.rule == "cover-undecodable" and review.value == "sexual"
    assert review.findings[0].evidence["reason"] == "decode-error"
    assert await label_log.in_force(URI) == []
    tiny = tmp_path / "tiny.png"
    Image.new("RGB", (8, 8)).save(tiny)
    outcome = await scan(tiny)
    assert outcome.plan.review == [] and outcome.plan.ignored[0][0] == "cover-too-small"


@pytest.mark.anyio
async def test_scanner_evidence_says_when_a_cover_was_decoded_from_a_partial_file(tmp_path):
    data = jpeg(artwork(8))
    (tmp_path / "c.jpg").write_bytes(data[:-2])
    (nsfw,) = await CoverArtScanner(scorer=lambda img: 0.1).scan(TRACK, ctx_for(tmp_path / "c.jpg"))
    assert nsfw.kind == "nsfw" and "truncated" in nsfw.evidence["partial"]
