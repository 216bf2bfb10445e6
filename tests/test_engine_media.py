"""The engine over the real fetcher and a real media server: media that is gone for good is a
finding the policy routes, once; a fetch that may work later is a failure, retried."""

from __future__ import annotations

import io

import pytest

from firehose_mod.scan.base import ScanContext, Track
from firehose_mod.scan.cover import CoverArtScanner
from firehose_mod.scan.engine import ScanEngine, ScannersFailed
from firehose_mod.scan.media import SafeFetcher
from firehose_mod.scan.policy import load_policy
from firehose_mod.store.decisions import DecisionStore
from tests.fakes.media_server import MediaServer
from tests.test_cover import artwork
from tests.test_engine import V1, V2, FakeScanner, copyright

pytestmark = pytest.mark.anyio

DID = "did:plc:artist"
URI = f"at://{DID}/fm.plyr.track/3kone"


class NoPds:
    async def resolve_pds(self, did: str) -> str:
        raise LookupError("no PDS in this test")


@pytest.fixture
def server():
    with MediaServer() as srv:
        buffer = io.BytesIO()
        artwork(3).save(buffer, "JPEG", quality=90)
        srv.files["/cover.jpg"] = (buffer.getvalue(), "image/jpeg")
        yield srv


@pytest.fixture
async def engine(server, settings, label_log, tmp_path):
    decisions = await DecisionStore.open(settings.db_path)
    async with SafeFetcher(NoPds(), cache_dir=tmp_path / "media", allow_networks=["127.0.0.1/32"],
                           allow_http=True, timeout=5) as fetcher:
        scanners = [CoverArtScanner(scorer=lambda img: 0.99), FakeScanner("copyright")]
        yield ScanEngine(scanners, load_policy(None), label_log, decisions,
                         ScanContext(media=fetcher, run_cpu=None), timeout=10.0)
    await decisions.close()


def track(cid: str, image_url: str) -> Track:
    return Track(URI, DID, "3kone", cid, {"title": "Song", "artist": "A", "imageUrl": image_url})


async def in_force(engine: ScanEngine) -> set[str]:
    return {label.val for label in await engine.label_log.in_force(URI)}


async def test_a_cover_that_is_gone_is_a_finding_not_a_retry_and_keeps_the_covers_labels(engine, server):
    await engine.process(track(V1, f"{server.base}/cover.jpg"))
    assert await in_force(engine) == {"porn"}
    engine.scanners[1].findings = [copyright(95)]
    outcome = await engine.process(track(V2, f"{server.base}/gone.jpg"))  # 404: no ScannersFailed
    assert outcome.result.failures == {} and set(outcome.result.unavailable) == {"cover-art"}
    (gone,) = [f for f in outcome.result.findings if f.kind == "media-unavailable"]
    assert gone.scanner == "cover-art" and gone.value is None
    assert (gone.evidence["status"], gone.evidence["media"]) == (404, "image")
    assert gone.evidence["url"] == f"{server.base}/gone.jpg"
    assert ("media-unavailable", gone) in outcome.plan.ignored  # the default policy: nothing to see
    # Not looked at is not "nothing there": the cover's label stays until the cover is seen again.
    assert await in_force(engine) == {"porn", "copyright-violation"} and outcome.reviews_opened == 0
    assert engine.stats["cover-art"]["unavailable"] == 1 and engine.stats["cover-art"]["failures"] == 0
    assert server.count("/gone.jpg") == 1


async def test_a_cover_that_is_gone_does_not_protect_other_scanners_labels(engine, server):
    engine.scanners[1].findings = [copyright(95)]
    await engine.process(track(V1, f"{server.base}/cover.jpg"))
    assert await in_force(engine) == {"porn", "copyright-violation"}
    engine.scanners[1].findings = []
    outcome = await engine.process(track(V2, f"{server.base}/gone.jpg"))
    assert outcome.negated == ["copyright-violation"] and await in_force(engine) == {"porn"}


async def test_a_fetch_that_may_work_later_is_a_failure_and_retried(engine, server):
    server.files["/cover.jpg"] = (b"", "text/html")  # a captive page instead of the image
    with pytest.raises(ScannersFailed, match="cover-art"):
        await engine.process(track(V1, f"{server.base}/cover.jpg"))
