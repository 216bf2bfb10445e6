"""A track whose audioBlob declares a type other than audio/* is still scanned.

plyr.fm's indexer publishes such records (it does not check blob types, and a PDS names a
blob by sniffing its bytes: `application/octet-stream`, `video/mp4`); dead-lettering them left
their titles and covers unscanned. Now the text is screened like any other record's and only
the audio is judged by the fetcher (tests/test_media.py).
"""

from __future__ import annotations

from dataclasses import replace

import anyio
import pytest

from firehose_mod.daemon import run_daemon

from tests.fakes.jetstream import T0, FakeJetstream, commit, track_record

pytestmark = pytest.mark.anyio

ARTIST = "did:plc:artist"


@pytest.mark.parametrize("declared", ["application/octet-stream", "image/png"])
async def test_an_odd_audio_blob_type_does_not_hide_the_title_from_the_text_scanner(settings, tmp_path, declared):
    (tmp_path / "terms.txt").write_text("term bananaphone\n")
    blob = {"$type": "blob", "ref": {"$link": "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"},
            "mimeType": declared, "size": 2048}
    fake = FakeJetstream([
        commit(T0, ARTIST, "fm.plyr.track", "3kodd", "create", track_record("Bananaphone Forever", audioBlob=blob)),
    ])
    settings = replace(settings, scanners=("self-labels", "text"), text_blocklist=tmp_path / "terms.txt")
    async with anyio.create_task_group() as tg:
        await tg.start(fake.serve)
        settings = replace(settings, jetstream_endpoints=(fake.url,), jetstream_compress=False)
        parts = await tg.start(run_daemon, settings)
        store, engine = parts["store"], parts["engine"]
        with anyio.fail_after(30):
            while (await store.counts())["done"] < 1:
                await anyio.sleep(0.05)
        reviews = await engine.decisions.open_reviews()
        dead = await store.dead_letters(10)
        tg.cancel_scope.cancel()
    assert dead == []
    assert [(r.uri, r.value) for r in reviews] == [(f"at://{ARTIST}/fm.plyr.track/3kodd", "offensive-text")]
