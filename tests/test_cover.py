"""Cover art scanner: safe decoding of hostile files, the bundled NSFW model, the PDQ blocklist."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from firehose_mod.scan.base import ScanContext, Track
from firehose_mod.scan.cover import (
    PDQ_VARIANTS,
    BlocklistError,
    CoverArtScanner,
    CoverLimits,
    PdqBlocklist,
    analyse_cover,
    decode_cover,
    nsfw_value,
    opennsfw_score,
    pdq_dihedral,
)

TRACK = Track(uri="at://did:plc:abc/fm.plyr.track/3k", did="did:plc:abc", rkey="3k", cid="bafy", record={})


class FakeMedia:
    def __init__(self, path: Path | None):
        self.path = path

    async def audio(self, track):
        return None

    async def image(self, track):
        return self.path


async def inline(fn, *args):
    return fn(*args)


def ctx_for(path: Path | None) -> ScanContext:
    return ScanContext(media=FakeMedia(path), run_cpu=inline)


def artwork(seed: int = 1, size: tuple[int, int] = (640, 640)) -> Image.Image:
    """A cover-like picture: gradient, shapes and text, so PDQ has structure to hash."""
    rng = np.random.default_rng(seed)
    w, h = size
    x = np.linspace(0, 255, w)[None, :, None]
    y = np.linspace(0, 255, h)[:, None, None]
    base = np.concatenate([x + 0 * y, y + 0 * x, (x + y) / 2], axis=2).astype(np.uint8)
    img = Image.fromarray(base)
    draw = ImageDraw.Draw(img)
    for _ in range(12):
        x0, y0 = rng.integers(0, w - 60), rng.integers(0, h - 60)
        colour = tuple(int(c) for c in rng.integers(0, 255, 3))
        draw.ellipse((x0, y0, x0 + rng.integers(30, 200), y0 + rng.integers(30, 200)), fill=colour)
    draw.text((w // 10, h // 2), f"ALBUM {seed}", fill=(255, 255, 255))
    return img


def save(img: Image.Image, path: Path, **kw) -> Path:
    img.save(path, **kw)
    return path


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def test_nsfw_value_maps_scores_by_threshold():
    thresholds = (("sexual", 0.8), ("porn", 0.95), ("nudity", 0.6))
    assert nsfw_value(0.1, thresholds) is None
    assert nsfw_value(0.6, thresholds) == "nudity"
    assert nsfw_value(0.85, thresholds) == "sexual"
    assert nsfw_value(0.99, thresholds) == "porn"


def test_bundled_model_scores_benign_covers_low(tmp_path):
    for seed in (1, 2):
        img, _ = decode_cover(save(artwork(seed), tmp_path / f"{seed}.jpg"))
        score = opennsfw_score(img)
        assert 0.0 <= score <= 1.0
        assert score < 0.2 and nsfw_value(score) is None


@pytest.mark.anyio
async def test_scanner_reports_nsfw_score_without_a_label_value(tmp_path):
    path = save(artwork(3), tmp_path / "cover.png")
    findings = await CoverArtScanner(scorer=lambda img: 0.97).scan(TRACK, ctx_for(path))
    (nsfw,) = findings
    assert nsfw.kind == "nsfw" and nsfw.score == 0.97 and nsfw.value is None
    assert nsfw.evidence["width"] == 640 and len(nsfw.evidence["sha256"]) == 64
    assert nsfw.evidence["model"].startswith("open_nsfw")


@pytest.mark.anyio
async def test_no_cover_gives_no_findings():
    assert await CoverArtScanner(scorer=None).scan(TRACK, ctx_for(None)) == []


def transforms(img: Image.Image, tmp_path: Path) -> dict[str, Path]:
    return {
        "rot90": save(img.transpose(Image.Transpose.ROTATE_90), tmp_path / "r90.png"),
        "rot180": save(img.transpose(Image.Transpose.ROTATE_180), tmp_path / "r180.png"),
        "rot270": save(img.transpose(Image.Transpose.ROTATE_270), tmp_path / "r270.png"),
        "mirror": save(img.transpose(Image.Transpose.FLIP_LEFT_RIGHT), tmp_path / "m.png"),
        "flip": save(img.transpose(Image.Transpose.FLIP_TOP_BOTTOM), tmp_path / "f.png"),
        "transpose": save(img.transpose(Image.Transpose.TRANSPOSE), tmp_path / "t.png"),
        "small": save(img.resize((300, 300)), tmp_path / "small.png"),
        "jpeg40": save(img, tmp_path / "q40.jpg", quality=40),
        "blurred-webp": save(img.filter(ImageFilter.GaussianBlur(1.5)), tmp_path / "b.webp"),
        "rgba": save(img.convert("RGBA"), tmp_path / "a.png"),
    }


@pytest.mark.anyio
async def test_pdq_blocklist_matches_rotations_flips_resizes_and_recompression(tmp_path):
    original = artwork(7)
    hashes, quality = pdq_dihedral(decode_cover(save(original, tmp_path / "o.png"))[0])
    assert quality >= 50 and len(hashes) == len(PDQ_VARIANTS)
    blocklist = PdqBlocklist.parse(f"# known bad\n{hashes[0]} porn  # case 123\n")
    scanner = CoverArtScanner(blocklist=blocklist, scorer=None)
    variants_seen = set()
    for name, path in transforms(original, tmp_path).items():
        findings = await scanner.scan(TRACK, ctx_for(path))
        match = [f for f in findings if f.kind == "pdq-match"]
        assert match, name
        assert match[0].value == "porn" and match[0].evidence["distance"] <= 31, name
        assert match[0].evidence["list_entry_note"] == "case 123" and match[0].score > 0.5
        variants_seen.add(match[0].evidence["variant"])
    assert len(variants_seen) >= 4  # rotations and flips were found through different dihedral variants
    unrelated = save(artwork(99), tmp_path / "other.png")
    assert await scanner.scan(TRACK, ctx_for(unrelated)) == []


def test_blocklist_errors_name_the_line(tmp_path):
    good = "a" * 64
    with pytest.raises(BlocklistError, match=r"list.txt:3: .*not a 256-bit PDQ hash"):
        PdqBlocklist.parse(f"# header\n{good} porn\nxyz\n", source="list.txt")
    with pytest.raises(BlocklistError, match=r":2: label value 'Porn!'"):
        PdqBlocklist.parse(f"{good}\n{'b' * 64} Porn!\n")
    with pytest.raises(BlocklistError, match=r":2: hash already listed on line 1"):
        PdqBlocklist.parse(f"{good} porn\n{good.upper()} sexual\n")
    with pytest.raises(BlocklistError, match=r"cannot read PDQ blocklist"):
        PdqBlocklist.load(tmp_path / "missing.txt")
    path = tmp_path / "ok.txt"
    path.write_text(f"\n{good}   # no value: review only\n")
    (entry,) = PdqBlocklist.load(path).entries
    assert entry.value is None and entry.line == 2 and entry.note == "no value: review only"


@pytest.mark.anyio
async def test_featureless_image_match_is_review_only(tmp_path):
    flat = save(Image.new("RGB", (400, 400), (200, 30, 30)), tmp_path / "flat.png")
    hashes, quality = pdq_dihedral(decode_cover(flat)[0])
    assert quality < 50
    scanner = CoverArtScanner(blocklist=PdqBlocklist.parse(f"{hashes[0]} porn"), scorer=None)
    (match,) = await scanner.scan(TRACK, ctx_for(flat))
    assert match.value is None and match.evidence["low_quality"] is True


def hostile_files(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """Files nothing can show (truncated ones can: see test_cover_decode.py), with the reason."""
    huge = b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)) \
        + png_chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + png_chunk(b"IEND", b"")
    medium = b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", 8000, 8000, 8, 0, 0, 0, 0)) \
        + png_chunk(b"IDAT", zlib.compress(b"\0" * 8001 * 100)) + png_chunk(b"IEND", b"")
    files = {
        "jpeg-magic-then-noise": (b"\xff\xd8\xff\xe0" + np.random.default_rng(1).bytes(4000), "decode-error"),
        "random-bytes": (np.random.default_rng(0).bytes(4096), "unsupported-format"),
        "empty": (b"", "empty"),
        "bomb-header": (huge, "too-many-pixels"),
        "64mp-zeros": (medium, "too-many-pixels"),
        "svg": (b"<svg xmlns='http://www.w3.org/2000/svg'/>", "unsupported-format"),
    }
    out = {}
    for name, (data, reason) in files.items():
        (tmp_path / name).write_bytes(data)
        out[name] = (tmp_path / name, reason)
    out["tiny"] = (save(Image.new("RGB", (8, 8)), tmp_path / "tiny.png"), "too-small")
    out["zero-frame-gif"] = (tmp_path / "z.gif", "unsupported-format")  # header only: Pillow cannot identify it
    (tmp_path / "z.gif").write_bytes(b"GIF89a\x10\x00\x10\x00\x00\x00\x00;")
    return out


@pytest.mark.anyio
async def test_hostile_files_become_cover_unusable_findings(tmp_path):
    scanner = CoverArtScanner(scorer=lambda img: 0.0, blocklist=PdqBlocklist.parse("f" * 64))
    for name, (path, reason) in hostile_files(tmp_path).items():
        (finding,) = await scanner.scan(TRACK, ctx_for(path))
        assert finding.kind == "cover-unusable", name
        assert finding.evidence["reason"] == reason, (name, finding.evidence)
        assert finding.score == 0.0 and finding.value is None


def test_real_world_modes_and_animations_decode_to_rgb(tmp_path):
    img = artwork(9, (500, 300))
    frames = [img, img.transpose(Image.Transpose.ROTATE_180)]
    files = {
        "cmyk.jpg": lambda p: img.convert("CMYK").save(p),
        "alpha.png": lambda p: img.convert("RGBA").save(p),
        "palette.png": lambda p: img.convert("P").save(p, transparency=0),
        "grey16.png": lambda p: Image.fromarray(np.asarray(img.convert("L"), dtype=np.uint16) * 200).save(p),
        "anim.gif": lambda p: frames[0].save(p, save_all=True, append_images=frames[1:], duration=100),
        "anim.webp": lambda p: frames[0].save(p, save_all=True, append_images=frames[1:], duration=100),
        "big.jpg": lambda p: img.resize((3000, 1800)).save(p, quality=85),
    }
    for name, write in files.items():
        write(tmp_path / name)
        result = analyse_cover(str(tmp_path / name), CoverLimits(), lambda im: 0.5)
        assert result.error is None, (name, result.error)
        assert result.nsfw == 0.5 and len(result.pdq) == 8
    assert analyse_cover(str(tmp_path / "anim.gif"), CoverLimits(), None).facts["frames"] == 2
    assert analyse_cover(str(tmp_path / "big.jpg"), CoverLimits(), None).facts["width"] == 3000
    # the first frame is used: the GIF and its first frame hash alike
    first = analyse_cover(str(save(frames[0], tmp_path / "first.png")), CoverLimits(), None).pdq[0]
    anim = analyse_cover(str(tmp_path / "anim.gif"), CoverLimits(), None).pdq[0]
    assert bin(int(first, 16) ^ int(anim, 16)).count("1") <= 31


def test_file_over_byte_limit_is_refused_before_decoding(tmp_path):
    path = save(artwork(2), tmp_path / "c.png")
    result = analyse_cover(str(path), CoverLimits(max_bytes=1000), None)
    assert result.reason == "too-large"


@pytest.mark.anyio
async def test_scanner_runs_in_a_real_process_pool(tmp_path):
    from concurrent.futures import ProcessPoolExecutor

    import anyio

    path = save(artwork(4), tmp_path / "c.jpg")
    with ProcessPoolExecutor(1) as pool:
        async def run_cpu(fn, *args):
            return await anyio.to_thread.run_sync(lambda: pool.submit(fn, *args).result())

        scanner = CoverArtScanner(blocklist=PdqBlocklist.parse("0" * 64))
        findings = await scanner.scan(TRACK, ScanContext(media=FakeMedia(path), run_cpu=run_cpu))
    (nsfw,) = findings
    assert nsfw.kind == "nsfw" and 0.0 <= nsfw.score < 0.2 and len(nsfw.evidence["pdq"]) == 64
