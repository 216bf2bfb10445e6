"""SafeFetcher against a real local media server and PDS: SSRF refusals, bounds, types, cache."""

from __future__ import annotations

import os
import time

import anyio
import pytest

from firehose_mod.scan.base import MediaError, MediaUnavailable, Track
from firehose_mod.scan.media import SafeFetcher, UnsafeAddress, address_problem, blob_ref
from tests.fakes.media_server import COVER, SONG, MediaServer, raw_cid

pytestmark = pytest.mark.anyio

DID = "did:plc:ewvi7nxzyoun6zhxrhs64oiz"
LOOPBACK_ONLY = ["127.0.0.1/32"]  # the test server, and nothing else private


class FakeResolver:
    def __init__(self, pds: str | None):
        self.pds = pds
        self.calls = 0

    async def resolve_pds(self, did: str) -> str:
        self.calls += 1
        if self.pds is None:
            raise LookupError(f"{did}: DID document has no #atproto_pds service")
        return self.pds


@pytest.fixture
def server():
    with MediaServer() as srv:
        yield srv


@pytest.fixture
async def fetcher(server, tmp_path):
    """Allowed to reach 127.0.0.1 over http (the test server); every other private range refused."""
    async with SafeFetcher(FakeResolver(server.base), cache_dir=tmp_path / "cache", allow_networks=LOOPBACK_ONLY,
                           allow_http=True, timeout=5, max_audio_bytes=100_000) as f:
        yield f


def track(**record) -> Track:
    return Track(uri=f"at://{DID}/fm.plyr.track/3kabc", did=DID, rkey="3kabc", cid="bafyreia", record=record)


def leftovers(path) -> list[str]:
    return sorted(p.name for p in path.iterdir()) if path.exists() else []


# -- addresses -----------------------------------------------------------------------------------

@pytest.mark.parametrize("ip", ["127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254",
                                "100.64.0.1", "0.0.0.0", "224.0.0.1", "239.1.1.1", "255.255.255.255", "::1", "::",
                                "fe80::1", "fc00::1", "fd12::1", "::ffff:10.0.0.1", "::ffff:127.0.0.1",
                                "2002:a00:1::1", "64:ff9b::a9fe:a9fe", "ff02::1"])
async def test_private_and_special_addresses_are_refused(ip):
    import ipaddress
    assert address_problem(ipaddress.ip_address(ip)) is not None


async def test_public_addresses_and_allowlisted_networks_pass():
    import ipaddress
    assert address_problem(ipaddress.ip_address("93.184.216.34")) is None
    assert address_problem(ipaddress.ip_address("2606:4700::1111")) is None
    assert address_problem(ipaddress.ip_address("::ffff:93.184.216.34")) is None
    allow = [ipaddress.ip_network("127.0.0.1/32")]
    assert address_problem(ipaddress.ip_address("127.0.0.1"), allow) is None
    assert address_problem(ipaddress.ip_address("127.0.0.2"), allow) is not None


@pytest.mark.parametrize("url", ["http://127.0.0.1:{port}/song.mp3", "http://localhost:{port}/song.mp3",
                                 "http://[::1]:{port}/song.mp3", "http://169.254.169.254/latest/meta-data/",
                                 "http://10.1.2.3/song.mp3", "http://0.0.0.0:{port}/song.mp3",
                                 "http://[::ffff:127.0.0.1]:{port}/song.mp3"])
async def test_loopback_and_private_urls_are_refused_without_allowlist(server, tmp_path, url):
    port = server.base.rsplit(":", 1)[1]
    async with SafeFetcher(FakeResolver(None), cache_dir=tmp_path, allow_http=True, timeout=5) as strict:
        with anyio.fail_after(3), pytest.raises(UnsafeAddress, match="refusing to connect"):
            await strict.fetch_url(url.format(port=port), "audio")
        assert strict.stats["refused"] == 1
    assert server.count("/song.mp3") == 0


async def test_a_host_with_any_private_address_is_refused(tmp_path):
    async def resolve(host, port):
        return ["93.184.216.34", "10.0.0.1"]  # one public answer does not launder a private one

    async with SafeFetcher(FakeResolver(None), cache_dir=tmp_path, resolve=resolve) as f:
        with pytest.raises(UnsafeAddress, match="10.0.0.1 is a private address"):
            await f.fetch_url("https://cdn.example/song.mp3", "audio")


async def test_connection_goes_to_the_vetted_address_under_the_original_name(server, tmp_path):
    port = server.base.rsplit(":", 1)[1]
    answers = iter([["127.0.0.1"], ["10.0.0.1"]])  # a rebinding resolver: safe first, private next

    async def resolve(host, port):
        assert host == "media.test"
        return next(answers)

    async with SafeFetcher(FakeResolver(None), cache_dir=tmp_path, allow_networks=LOOPBACK_ONLY,
                           allow_http=True, resolve=resolve) as f:
        path = await f.fetch_url(f"http://media.test:{port}/song.mp3", "audio")
        assert path.read_bytes() == SONG
        assert server.hosts[-1] == f"media.test:{port}"  # the name is kept (Host, and SNI over TLS)

    # A new connection resolves again and vets the new answer.

    async with SafeFetcher(FakeResolver(None), cache_dir=tmp_path / "2", allow_networks=LOOPBACK_ONLY,
                           allow_http=True, resolve=resolve) as f:
        with pytest.raises(UnsafeAddress, match="10.0.0.1"):
            await f.fetch_url(f"http://media.test:{port}/cover.png", "image")


async def test_unresolvable_host_is_a_media_error(tmp_path):
    async def resolve(host, port):
        raise OSError(-2, "Name or service not known")

    async with SafeFetcher(FakeResolver(None), cache_dir=tmp_path, resolve=resolve) as f:
        with pytest.raises(MediaError, match="cannot resolve nowhere.example"):
            await f.fetch_url("https://nowhere.example/song.mp3", "audio")
        assert f.stats["failed"] == 1


async def test_only_https_unless_http_is_allowed(tmp_path):
    looked_up = []

    async def resolve(host, port):
        looked_up.append(host)
        return ["93.184.216.34"]

    async with SafeFetcher(FakeResolver(None), cache_dir=tmp_path, resolve=resolve) as f:
        for url in ("http://cdn.example/song.mp3", "ftp://cdn.example/song.mp3", "file:///etc/passwd",
                    "https://user:pw@cdn.example/song.mp3"):
            with pytest.raises(UnsafeAddress):
                await f.fetch_url(url, "audio")
        for url in ("https://[::1/song.mp3", "https://cdn.example:99999/song.mp3", "https:///song.mp3"):
            with pytest.raises(MediaError):
                await f.fetch_url(url, "audio")
    assert looked_up == []


@pytest.mark.parametrize("target", ["http://10.0.0.1/song.mp3", "http://169.254.169.254/latest/meta-data/",
                                    "http://[fd00::1]/song.mp3", "http://127.0.0.2:9/song.mp3"])
async def test_redirect_to_a_private_address_is_refused_before_connecting(fetcher, server, target):
    # The first hop (127.0.0.1) is allowlisted; the redirect target is not, and is never contacted
    # (10.0.0.1 would hang until the deadline if it were).
    with anyio.fail_after(2), pytest.raises(UnsafeAddress, match="refusing to connect"):
        await fetcher.fetch_url(f"{server.base}/redirect-to?url={target}", "audio")
    assert server.count("/redirect-to") == 1


async def test_redirects_are_followed_up_to_the_limit(fetcher, server):
    path = await fetcher.fetch_url(f"{server.base}/redirect/3", "audio")
    assert path.read_bytes() == SONG
    with pytest.raises(MediaError, match="more than 3 redirects"):
        await fetcher.fetch_url(f"{server.base}/redirect/4", "audio")


# -- bounds and types ----------------------------------------------------------------------------

@pytest.mark.parametrize("path,kind", [("/page.html", "audio"), ("/song.mp3", "image"), ("/cover.svg", "image"),
                                       ("/cover.png", "audio")])
async def test_wrong_content_type_is_refused(fetcher, server, path, kind):
    with pytest.raises(MediaError, match="content type"):
        await fetcher.fetch_url(server.base + path, kind)
    assert leftovers(fetcher.cache_dir) == []


@pytest.mark.parametrize("query", ["size=1000000", "size=1000000&length=0"])
async def test_oversized_body_is_refused_and_leaves_no_file(fetcher, server, query):
    with anyio.fail_after(5), pytest.raises(MediaError, match="100000-byte audio limit"):
        await fetcher.fetch_url(f"{server.base}/huge?{query}", "audio")
    assert leftovers(fetcher.cache_dir) == []


async def test_slow_body_hits_the_deadline_and_leaves_no_file(server, tmp_path):
    async with SafeFetcher(FakeResolver(None), cache_dir=tmp_path, allow_networks=LOOPBACK_ONLY,
                           allow_http=True, timeout=0.6) as f:
        started = time.monotonic()
        with pytest.raises(MediaError, match="not fetched within 0.6 s|ReadTimeout"):
            await f.fetch_url(f"{server.base}/slow", "audio")
        assert time.monotonic() - started < 3
    assert leftovers(tmp_path) == []


async def test_a_permanent_4xx_is_media_unavailable_and_a_5xx_is_not(fetcher, server):
    with pytest.raises(MediaUnavailable, match="HTTP 404") as gone:
        await fetcher.fetch_url(f"{server.base}/missing.png", "image")
    assert (gone.value.status, gone.value.kind) == (404, "image")
    assert gone.value.url == f"{server.base}/missing.png"
    cid = server.add_blob(DID, b"a song")
    blob = {"ref": {"$link": cid}, "mimeType": "audio/mpeg", "size": 6}
    server.blob_fail = True  # the PDS answers 500: worth another try later
    with pytest.raises(MediaError, match="HTTP 500") as failed:
        await fetcher.audio(track(audioBlob=blob))
    assert not isinstance(failed.value, MediaUnavailable)
    # ... also when the record's audioUrl is gone: the blob may still come back
    with pytest.raises(MediaError, match="HTTP 500.*HTTP 404") as both:
        await fetcher.audio(track(audioBlob=blob, audioUrl=f"{server.base}/missing.mp3"))
    assert not isinstance(both.value, MediaUnavailable)
    server.blob_fail = False  # the PDS says BlobNotFound (HTTP 400) and there is no audioUrl
    with pytest.raises(MediaUnavailable, match="HTTP 400") as missing:
        await fetcher.audio(track(audioBlob={"ref": {"$link": raw_cid(b"never uploaded")}}))
    assert missing.value.status == 400 and missing.value.kind == "audio"


# -- the Media protocol --------------------------------------------------------------------------

async def test_audio_url_and_cover_art_are_fetched_and_cached(fetcher, server):
    t = track(audioUrl=f"{server.base}/song.mp3", imageUrl=f"{server.base}/cover.png")
    audio, image = await fetcher.audio(t), await fetcher.image(t)
    assert audio.read_bytes() == SONG and image.read_bytes() == COVER
    assert await fetcher.audio(t) == audio
    assert server.count("/song.mp3") == 1
    assert fetcher.stats["cache_hits"] == 1 and fetcher.stats["fetched"] == 2


async def test_no_media_in_record_is_none(fetcher):
    assert await fetcher.audio(track(title="x")) is None
    assert await fetcher.image(track(title="x")) is None


async def test_get_blob_is_preferred_over_audio_url(fetcher, server):
    data = b"blob bytes " * 500
    cid = server.add_blob(DID, data)
    server.blob_type = "application/octet-stream"  # the record's mimeType is trusted for blobs
    t = track(audioBlob={"$type": "blob", "ref": {"$link": cid}, "mimeType": "audio/mpeg", "size": len(data)},
              audioUrl=f"{server.base}/song.mp3")
    path = await fetcher.audio(t)
    assert path.read_bytes() == data and path.name == f"audio-blob-{cid}"
    assert server.requests[-1] == ("/xrpc/com.atproto.sync.getBlob", {"did": DID, "cid": cid})
    assert server.count("/song.mp3") == 0
    await fetcher.audio(t)
    assert server.count("/xrpc/com.atproto.sync.getBlob") == 1  # cached by CID


async def test_octet_stream_needs_an_audio_mime_type_in_the_record(fetcher, server):
    cid = server.add_blob(DID, b"bytes of unknown kind")
    server.blob_type = "application/octet-stream"
    with pytest.raises(MediaError, match="content type 'application/octet-stream' is not audio"):
        await fetcher.audio(track(audioBlob={"ref": {"$link": cid}, "mimeType": "video/mp4", "size": 21}))
    with pytest.raises(MediaError, match="content type"):
        await fetcher.fetch_url(f"{server.base}/xrpc/com.atproto.sync.getBlob?did={DID}&cid={cid}", "audio")


async def test_a_blob_declared_octet_stream_is_fetched_for_the_decoder(fetcher, server):
    """Audio the PDS could not sniff is `application/octet-stream` in the record and in getBlob."""
    cid = server.add_blob(DID, b"raw adts frames")
    server.blob_type = "application/octet-stream"
    t = track(audioBlob={"$type": "blob", "ref": {"$link": cid}, "mimeType": "application/octet-stream", "size": 15})
    assert (await fetcher.audio(t)).read_bytes() == b"raw adts frames"


@pytest.mark.parametrize("declared", ["image/png", "text/html"])
async def test_a_blob_declared_as_another_type_is_evidence_not_a_fetch(fetcher, server, declared):
    cid = server.add_blob(DID, b"<html>not a song</html>")
    server.blob_type = declared
    t = track(audioBlob={"$type": "blob", "ref": {"$link": cid}, "mimeType": declared, "size": 23})
    with pytest.raises(MediaUnavailable, match=f"declares its audio as '{declared}'") as caught:
        await fetcher.audio(t)
    assert (caught.value.status, caught.value.kind) == (415, "audio")
    assert server.count("/xrpc/com.atproto.sync.getBlob") == 0
    # with an audioUrl beside it, the URL is used instead
    t.record["audioUrl"] = f"{server.base}/song.mp3"
    assert (await fetcher.audio(t)).read_bytes() == SONG


async def test_legacy_blob_form_is_read():
    assert blob_ref({"cid": "bafkreiabc", "mimeType": "audio/mpeg"}) == "bafkreiabc"
    assert blob_ref({"ref": {"$link": "bafkreixyz"}}) == "bafkreixyz"
    with pytest.raises(MediaError):
        blob_ref({"mimeType": "audio/mpeg"})


async def test_failed_blob_falls_back_to_audio_url(fetcher, server):
    cid = server.add_blob(DID, b"never served")
    server.blob_fail = True
    t = track(audioBlob={"ref": {"$link": cid}, "mimeType": "audio/mpeg", "size": 12},
              audioUrl=f"{server.base}/song.mp3")
    assert (await fetcher.audio(t)).read_bytes() == SONG
    assert fetcher.stats["blob_fallbacks"] == 1


async def test_blob_whose_bytes_do_not_match_the_cid_is_refused(fetcher, server):
    cid = server.add_blob(DID, b"the real song")
    server.blob_tamper = b"someone else's song"
    t = track(audioBlob={"ref": {"$link": cid}, "mimeType": "audio/mpeg", "size": 13})
    with pytest.raises(MediaError, match="do not match its CID"):
        await fetcher.audio(t)
    assert leftovers(fetcher.cache_dir) == []


async def test_blob_over_the_limit_is_refused_before_fetching(fetcher, server):
    cid = raw_cid(b"x")
    t = track(audioBlob={"ref": {"$link": cid}, "mimeType": "audio/mpeg", "size": 50 * 1024 * 1024})
    with pytest.raises(MediaError, match="over the 100000-byte limit"):
        await fetcher.audio(t)
    assert server.count("/xrpc/com.atproto.sync.getBlob") == 0


async def test_unresolvable_pds_falls_back_or_explains(server, tmp_path):
    async with SafeFetcher(FakeResolver(None), cache_dir=tmp_path, allow_networks=LOOPBACK_ONLY,
                           allow_http=True) as f:
        blob = {"ref": {"$link": raw_cid(b"x")}, "mimeType": "audio/mpeg", "size": 1}
        with pytest.raises(MediaError, match="cannot find the PDS"):
            await f.audio(track(audioBlob=blob))
        assert (await f.audio(track(audioBlob=blob, audioUrl=f"{server.base}/song.mp3"))).read_bytes() == SONG


# -- the cache -----------------------------------------------------------------------------------

async def test_concurrent_requests_for_one_url_download_once(fetcher, server):
    paths = []

    async def get():
        paths.append(await fetcher.fetch_url(f"{server.base}/song.mp3", "audio"))

    async with anyio.create_task_group() as tg:
        for _ in range(5):
            tg.start_soon(get)
    assert len(set(paths)) == 1 and server.count("/song.mp3") == 1


async def test_cache_evicts_least_recently_used_files(server, tmp_path):
    for name in "abc":
        server.files[f"/{name}.mp3"] = (name.encode() * 4000, "audio/mpeg")
    async with SafeFetcher(FakeResolver(None), cache_dir=tmp_path, allow_networks=LOOPBACK_ONLY,
                           allow_http=True, max_cache_bytes=9000) as f:
        a = await f.fetch_url(f"{server.base}/a.mp3", "audio")
        b = await f.fetch_url(f"{server.base}/b.mp3", "audio")
        os.utime(a, (time.time() - 100, time.time() - 100))
        os.utime(b, (time.time() - 50, time.time() - 50))
        await f.fetch_url(f"{server.base}/a.mp3", "audio")  # a is used again: b is now the oldest
        c = await f.fetch_url(f"{server.base}/c.mp3", "audio")
        assert a.exists() and c.exists() and not b.exists()
        assert f.stats["evicted"] == 1


async def test_partial_files_from_a_crash_are_removed_at_start(tmp_path):
    (tmp_path / ".audio-url-abc.x1.part").write_bytes(b"half")
    (tmp_path / "audio-url-done").write_bytes(b"whole")
    async with SafeFetcher(FakeResolver(None), cache_dir=tmp_path):
        pass
    assert leftovers(tmp_path) == ["audio-url-done"]
