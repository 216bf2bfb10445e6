"""The whole daemon on real media: Jetstream in, covers fetched over HTTP, scanned, labels out.

A cover on the operator's PDQ blocklist is labeled (and the label is withdrawn when an
update replaces the cover); a title with an operator-blocklisted term waits for a human.
"""

from __future__ import annotations

import io
from dataclasses import replace

import anyio
import pytest

from firehose_mod.daemon import run_daemon
from firehose_mod.scan.cover import CoverLimits, analyse_cover

from tests.fakes.jetstream import T0, FakeJetstream, commit, track_record
from tests.fakes.media_server import MediaServer
from tests.stream_client import Received, collect, subscribe
from tests.test_cover import artwork

pytestmark = pytest.mark.anyio

ARTIST = "did:plc:artist"
BAD = f"at://{ARTIST}/fm.plyr.track/3kbad"
RUDE = f"at://{ARTIST}/fm.plyr.track/3krude"


def png(seed: int) -> bytes:
    buf = io.BytesIO()
    artwork(seed).save(buf, format="PNG")
    return buf.getvalue()


async def test_blocklisted_cover_is_labeled_then_withdrawn_and_rude_title_waits_for_review(settings, tmp_path):
    media = MediaServer()
    media.files["/bad.png"] = (png(7), "image/png")
    media.files["/clean.png"] = (png(8), "image/png")
    bad_path = tmp_path / "bad.png"
    bad_path.write_bytes(media.files["/bad.png"][0])
    known_bad = analyse_cover(str(bad_path), CoverLimits(), None, True).pdq[0]
    (tmp_path / "pdq.txt").write_text(f"{known_bad} porn  # reported image\n")
    (tmp_path / "terms.txt").write_text("term bananaphone\n")
    with media:
        fake = FakeJetstream([
            commit(T0, ARTIST, "fm.plyr.track", "3kbad", "create",
                   track_record("Fine Title", imageUrl=f"{media.base}/bad.png")),
            commit(T0 + 1, ARTIST, "fm.plyr.track", "3krude", "create",
                   track_record("Bananaphone Forever", imageUrl=f"{media.base}/clean.png")),
        ])
        settings = replace(
            settings, scanners=("self-labels", "text", "cover-art"), cover_nsfw=False,
            pdq_blocklist=tmp_path / "pdq.txt", text_blocklist=tmp_path / "terms.txt",
            media_allow_networks=("127.0.0.1/32",), media_allow_http=True,
        )
        async with anyio.create_task_group() as tg:
            await tg.start(fake.serve)
            settings = replace(settings, jetstream_endpoints=(fake.url,), jetstream_compress=False)
            parts = await tg.start(run_daemon, settings)
            server, store, engine = parts["server"], parts["store"], parts["engine"]
            async with subscribe(f"ws://127.0.0.1:{server.port}", 0) as ws:
                got = await collect(ws, Received(), count=1, timeout=30)
                with anyio.fail_after(30):
                    while (await store.counts())["done"] < 2:
                        await anyio.sleep(0.05)
                reviews = await engine.decisions.open_reviews()
                fake.append(commit(T0 + 2, ARTIST, "fm.plyr.track", "3kbad", "update",
                                   track_record("Fine Title", imageUrl=f"{media.base}/clean.png")))
                await collect(ws, got, count=2, timeout=30)
            with anyio.fail_after(10):  # decisions are recorded just after the labels they explain
                while len(history := await engine.decisions.history(BAD)) < 2:
                    await anyio.sleep(0.02)
            import httpx

            async with httpx.AsyncClient() as client:
                metrics = (await client.get(f"http://127.0.0.1:{server.port}/metrics")).text
            tg.cancel_scope.cancel()
    first, withdrawn = got.labels
    assert (first.uri, first.val, first.neg) == (BAD, "porn", False)
    assert first.cid is not None  # pinned to the record version that had the cover
    assert (withdrawn.uri, withdrawn.val, withdrawn.neg) == (BAD, "porn", True)
    assert [(r.uri, r.value) for r in reviews] == [(RUDE, "offensive-text")]
    assert reviews[0].evidence[0]["evidence"]["term"] == "bananaphone"
    label_rows = [r for r in history if r["action"] == "label"]
    assert label_rows[0]["rule"] == "pdq-blocklist"
    assert label_rows[0]["evidence"][0]["evidence"]["list_entry_note"] == "reported image"
    assert [r["action"] for r in history] == ["label", "negate"]
    assert 'firehose_mod_scanner_runs_total{scanner="cover-art"} 3.0' in metrics
    assert 'firehose_mod_scanner_failures_total{scanner="cover-art"} 0.0' in metrics
