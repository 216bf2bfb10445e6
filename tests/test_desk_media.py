"""The desk's media: real audio over a real local HTTP server, real ffmpeg, real Pillow decoding."""

from __future__ import annotations

import io
import json
import sqlite3
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path

import anyio
import numpy as np
import pytest
from PIL import Image

from firehose_mod.config import Settings, load_settings
from firehose_mod.server.desk_media import DeskMedia, MediaMissing
from firehose_mod.store.catalogue import CatalogueStore
from firehose_mod.store.review import ReviewItem, ReviewStore
from tests import media as M
from tests.fakes.media_server import MediaServer
from tests.test_cover import artwork

pytestmark = pytest.mark.anyio

DID = "did:plc:uploader"
UPLOAD = f"at://{DID}/fm.plyr.track/3kupload0001"
EARLIER = "at://did:plc:earlier/fm.plyr.track/3kearlier001"
CID = "bafyreidlq2zhh7zu7tqz224aj37vup2xi6w2j2vcf4outqa6klo3pb23jm"
SR = 8000


def match(ref: str, q: tuple[float, float] = (12.0, 20.0), r: tuple[float, float] = (5.0, 9.0)) -> dict:
    return {"scanner": "copyright", "kind": "copyright-match", "score": 0.8, "value": "copyright-violation",
            "evidence": {"ref": ref, "query_start": q[0], "query_end": q[1], "ref_start": r[0], "ref_end": r[1],
                         "seconds_matched": q[1] - q[0]}}


def review_item(*findings: dict, uri: str = UPLOAD, cid: str | None = CID) -> ReviewItem:
    return ReviewItem(id=7, uri=uri, cid=cid, value="copyright-violation", reason="policy", evidence=list(findings),
                      state="open", resolution=None, resolved_by=None, resolved_at=None, created="")


def decode(path: Path, start: float = 0.0, seconds: float | None = None) -> np.ndarray:
    """Mono float samples at 8 kHz, decoded by ffmpeg."""
    span = ["-ss", str(start), "-t", str(seconds)] if seconds is not None else []
    out = subprocess.run(["ffmpeg", "-nostdin", "-v", "error", *span, "-i", str(path), "-ac", "1", "-ar", str(SR),
                          "-f", "s16le", "pipe:1"], capture_output=True, check=True).stdout
    return np.frombuffer(out, "<i2").astype(np.float32) / 32767


def probe(path: Path) -> dict:
    out = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "format=format_name,duration:stream=codec_name",
                          "-of", "json", str(path)], capture_output=True, check=True).stdout
    return json.loads(out)


def envelope(x: np.ndarray) -> np.ndarray:
    """RMS per 50 ms: drums and notes make it a signature of which seconds these are."""
    n = SR // 20
    x = x[:x.size - x.size % n].reshape(-1, n)
    return np.sqrt((x ** 2).mean(axis=1))


def same_seconds(excerpt: np.ndarray, original: np.ndarray) -> float:
    a, b = envelope(excerpt), envelope(original)
    n = min(a.size, b.size)
    return float(np.corrcoef(a[:n], b[:n])[0, 1])


@dataclass
class Env:
    settings: Settings
    server: MediaServer
    store: ReviewStore
    desk: DeskMedia
    tmp: Path

    def track(self, uri: str, record: dict, cid: str = CID) -> None:
        db = sqlite3.connect(self.settings.db_path)
        db.execute("INSERT OR REPLACE INTO tracks (uri, did, rkey, cid, rev, record, first_seen, updated)"
                   " VALUES (?, ?, ?, ?, '', ?, '', '')",
                   (uri, uri.split("/")[2], uri.rsplit("/", 1)[1], cid, json.dumps(record)))
        db.commit()
        db.close()

    def serve(self, path: str, body: bytes, ctype: str) -> str:
        self.server.files[path] = (body, ctype)
        return self.server.base + path

    async def reference(self, ref: str, source: Path) -> None:
        catalogue = await CatalogueStore.open(self.settings.db_path)
        try:
            await catalogue.add_reference(ref, b"", fp_version="tri-1", entry_count=0, source=str(source))
        finally:
            await catalogue.close()


@pytest.fixture
async def env(tmp_path) -> AsyncIterator[Env]:
    # The lazily opened fetcher goes through the outbound guard: only 127.0.0.1 is let through.
    settings = load_settings(env={}, data_dir=tmp_path / "var", media_allow_networks=("127.0.0.1/32",),
                             media_allow_http=True)
    settings.data_dir.mkdir(parents=True)
    with MediaServer() as server:
        store = await ReviewStore.open(settings.db_path)
        try:
            async with DeskMedia(settings, store) as desk:
                yield Env(settings, server, store, desk, tmp_path)
        finally:
            await store.close()


@pytest.fixture(scope="module")
def upload_mp3(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("audio")
    return M.mp3(M.write_wav(d / "upload.wav", M.song(11, 40.0)), d / "upload.mp3", kbps=96)


async def test_an_upload_excerpt_is_the_matched_seconds_in_ogg_opus_and_is_cached(env, upload_mp3):
    env.track(UPLOAD, {"title": "t", "audioUrl": env.serve("/u.mp3", upload_mp3.read_bytes(), "audio/mpeg")})
    item = review_item(match("file:/nowhere.wav"))
    path = await env.desk.excerpt(item, 0, "upload")
    info = probe(path)
    assert info["format"]["format_name"] == "ogg" and info["streams"][0]["codec_name"] == "opus"
    assert float(info["format"]["duration"]) == pytest.approx(10.0, abs=0.2)  # [12 - 1, 20 + 1]
    assert path.parent == env.settings.data_dir / "desk-media"
    assert same_seconds(decode(path), decode(upload_mp3, 11.0, 10.0)) > 0.9
    assert same_seconds(decode(path), decode(upload_mp3, 25.0, 10.0)) < 0.5  # other seconds do not look alike
    assert env.server.count("/u.mp3") == 1

    made = path.stat().st_ino
    assert await env.desk.excerpt(item, 0, "upload") == path  # served again from the desk cache: no fetch
    assert env.server.count("/u.mp3") == 1 and path.stat().st_ino == made  # and no new encode


async def test_a_long_match_is_cut_to_30_seconds_from_zero(env, upload_mp3):
    env.track(UPLOAD, {"audioUrl": env.serve("/u.mp3", upload_mp3.read_bytes(), "audio/mpeg")})
    path = await env.desk.excerpt(review_item(match("x", q=(0.4, 38.0))), 0, "upload")
    assert float(probe(path)["format"]["duration"]) == pytest.approx(30.0, abs=0.2)
    assert same_seconds(decode(path), decode(upload_mp3, 0.0, 30.0)) > 0.9


async def test_the_reference_excerpt_comes_from_the_catalogue_file(env):
    source = M.write_wav(env.tmp / "warriors.wav", M.song(5, 20.0))
    await env.reference("file:" + str(source), source)
    env.track(UPLOAD, {"audioUrl": env.server.base + "/never-fetched.mp3"})
    path = await env.desk.excerpt(review_item(match("file:" + str(source))), 0, "ref")
    assert float(probe(path)["format"]["duration"]) == pytest.approx(6.0, abs=0.2)  # [5 - 1, 9 + 1]
    assert same_seconds(decode(path), decode(source, 4.0, 6.0)) > 0.9
    assert env.server.requests == []  # the upload's audio is not needed for the reference's excerpt

    source.unlink()
    with pytest.raises(MediaMissing, match=f"reference file {source} was moved or deleted"):
        await env.desk.excerpt(review_item(match("file:" + str(source), r=(1.0, 3.0))), 0, "ref")


async def test_a_reference_that_is_an_earlier_upload_is_fetched_like_one(env, upload_mp3):
    env.track(EARLIER, {"audioUrl": env.serve("/earlier.mp3", upload_mp3.read_bytes(), "audio/mpeg")}, cid="bafyold")
    env.track(UPLOAD, {"audioUrl": env.server.base + "/never-fetched.mp3"})
    path = await env.desk.excerpt(review_item(match(EARLIER, r=(20.0, 24.0))), 0, "ref")
    assert float(probe(path)["format"]["duration"]) == pytest.approx(6.0, abs=0.2)
    assert same_seconds(decode(path), decode(upload_mp3, 19.0, 6.0)) > 0.9
    assert env.server.count("/earlier.mp3") == 1 and env.server.count("/never-fetched.mp3") == 0


async def test_missing_media_is_a_sentence_for_the_moderator(env):
    item = review_item(match("file:/catalogue/gone.wav"))
    env.track(UPLOAD, {"audioUrl": env.server.base + "/gone.mp3"})
    with pytest.raises(MediaMissing, match=r"the upload's audio is no longer in the cache and its URL answered HTTP 404"):
        await env.desk.excerpt(item, 0, "upload")
    with pytest.raises(MediaMissing, match="reference file:/catalogue/gone.wav is not in the catalogue"):
        await env.desk.excerpt(item, 0, "ref")

    env.track(UPLOAD, {"audioUrl": env.serve("/junk.mp3", b"ID3" + bytes(range(256)) * 40, "audio/mpeg")})
    with pytest.raises(MediaMissing, match="ffmpeg could not cut the upload's audio"):
        await env.desk.excerpt(item, 0, "upload")

    env.track(UPLOAD, {"title": "no audio"})
    with pytest.raises(MediaMissing, match="the track record has no audioUrl or audioBlob"):
        await env.desk.excerpt(item, 0, "upload")
    with pytest.raises(MediaMissing, match="the track was edited since this item was opened"):
        await env.desk.excerpt(replace(item, cid="bafyanother"), 0, "upload")
    with pytest.raises(MediaMissing, match="no longer stored"):
        await env.desk.cover_thumbnail(replace(item, uri=f"at://{DID}/fm.plyr.track/3kunknown"))


async def test_a_past_the_end_match_is_missing_not_an_empty_file(env, upload_mp3):
    env.track(UPLOAD, {"audioUrl": env.serve("/u.mp3", upload_mp3.read_bytes(), "audio/mpeg")})
    with pytest.raises(MediaMissing, match="has no audio between 99 s and 111 s"):
        await env.desk.excerpt(review_item(match("x", q=(100.0, 110.0))), 0, "upload")


@pytest.mark.parametrize(("findings", "index", "which", "message"), [
    ([match("x")], 1, "upload", "finding 1 is out of range: this item has 1 finding"),
    ([match("x")], -1, "upload", "out of range"),
    ([], 0, "ref", "this item has 0 finding"),
    ([{"scanner": "cover-art", "kind": "nsfw", "score": 0.9, "evidence": {"score": 0.9}}], 0, "upload",
     "finding 0 is not a copyright match"),
    (["not a dict"], 0, "upload", "not a copyright match"),
    ([match("x", q=(20.0, 12.0))], 0, "upload", "does not say which seconds of the upload matched"),
    ([match("x")], 0, "both", "which must be 'upload' or 'ref'"),
])
async def test_a_bad_finding_reference_is_media_missing(env, findings, index, which, message):
    with pytest.raises(MediaMissing, match=message):
        await env.desk.excerpt(review_item(*findings), index, which)


async def test_a_cover_thumbnail_is_our_own_jpeg_of_at_most_320_px(env):
    buf = io.BytesIO()
    artwork(3, (1000, 800)).save(buf, "PNG")
    env.track(UPLOAD, {"imageUrl": env.serve("/c.png", buf.getvalue(), "image/png")})
    jpeg = await env.desk.cover_thumbnail(review_item())
    img = Image.open(io.BytesIO(jpeg))
    assert img.format == "JPEG" and img.size == (320, 256) and jpeg != buf.getvalue()
    assert await env.desk.cover_thumbnail(review_item()) == jpeg and env.server.count("/c.png") == 1

    env.track(UPLOAD, {"imageUrl": env.serve("/bad.png", b"\x89PNG\r\n\x1a\n" + bytes(2000), "image/png")},
              cid="bafycorrupt")
    with pytest.raises(MediaMissing, match="the cover cannot be decoded"):
        await env.desk.cover_thumbnail(review_item(cid="bafycorrupt"))
    env.track(UPLOAD, {"imageUrl": env.server.base + "/gone.png"}, cid="bafygone")
    with pytest.raises(MediaMissing, match="the cover is no longer in the cache and its URL answered HTTP 404"):
        await env.desk.cover_thumbnail(review_item(cid="bafygone"))


async def test_the_desk_cache_is_bounded(env, upload_mp3, tmp_path):
    env.track(UPLOAD, {"audioUrl": env.serve("/u.mp3", upload_mp3.read_bytes(), "audio/mpeg")})
    async with DeskMedia(env.settings, env.store, cache_dir=tmp_path / "small", max_cache_bytes=150_000) as desk:
        first = await desk.excerpt(review_item(match("x", q=(1.0, 9.0))), 0, "upload")
        second = await desk.excerpt(review_item(match("x", q=(21.0, 29.0))), 0, "upload")
        assert second.exists() and not first.exists()  # ~80 KB each: the older one made room
        assert sorted(p.name for p in (tmp_path / "small").iterdir()) == [second.name]


async def test_concurrent_requests_for_one_excerpt_share_one_fetch_and_one_encode(env, upload_mp3):
    env.track(UPLOAD, {"audioUrl": env.serve("/u.mp3", upload_mp3.read_bytes(), "audio/mpeg")})
    paths: list[Path] = []

    async def one() -> None:
        paths.append(await env.desk.excerpt(review_item(match("x")), 0, "upload"))

    async with anyio.create_task_group() as tg:
        for _ in range(4):
            tg.start_soon(one)
    assert len(set(paths)) == 1 and env.server.count("/u.mp3") == 1
    assert [p.name for p in paths[0].parent.iterdir()] == [paths[0].name]  # no second file, no leftover .part


async def test_an_unreadable_catalogue_is_media_missing(env, tmp_path):
    async with DeskMedia(env.settings, env.store, catalogue_db_path=tmp_path / "absent.sqlite3") as desk:
        with pytest.raises(MediaMissing, match="the catalogue cannot be read"):
            await desk.excerpt(review_item(match("file:/x.wav")), 0, "ref")
