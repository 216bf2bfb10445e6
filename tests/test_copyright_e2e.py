"""Copyright end to end: `catalogue add` from the CLI, the daemon fetches uploads over HTTP,
fingerprints them in its process pool and labels the copy of a catalogued recording."""

from __future__ import annotations

import json
from dataclasses import replace

import anyio
import httpx
import pytest

from firehose_mod.daemon import run_daemon

from tests import media as M
from tests.fakes.jetstream import T0, FakeJetstream, commit, track_record
from tests.fakes.media_server import MediaServer
from tests.procs import env_for, run_cli

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

LABEL_LOG_BACKENDS = ("sqlite", "postgres")  # on PostgreSQL the catalogue's rows are shared, its index local

UPLOADER = "did:plc:uploader"
COPY = f"at://{UPLOADER}/fm.plyr.track/3kcopy"
ORIGINAL_WORK = f"at://{UPLOADER}/fm.plyr.track/3kown"


async def test_a_low_bitrate_copy_of_a_catalogued_recording_is_labeled_with_its_evidence(settings, tmp_path, backend):
    catalogue_dir = tmp_path / "label-catalogue"
    catalogue_dir.mkdir()
    reference = M.write_wav(catalogue_dir / "hit-single.wav", M.song(101, 45))
    copy = M.mp3(reference, tmp_path / "copy.mp3", kbps=32)
    own = M.mp3(M.write_wav(tmp_path / "own.wav", M.song(202, 45)), tmp_path / "own.mp3", kbps=128)
    env = env_for(settings.data_dir, **({"FIREHOSE_MOD_DATABASE_URL": settings.database_url}
                                       if settings.database_url else {}))
    added = json.loads(run_cli("catalogue", "add", str(catalogue_dir), "--json", env=env, timeout=120).stdout)
    assert len(added["added"]) == 1 and added["failed"] == []
    (listed,) = [json.loads(line) for line in run_cli("catalogue", "list", "--json", env=env).stdout.splitlines()]
    assert listed["ref"] == added["added"][0]

    media = MediaServer()
    media.files["/copy.mp3"] = (copy.read_bytes(), "audio/mpeg")
    media.files["/own.mp3"] = (own.read_bytes(), "audio/mpeg")
    with media:
        fake = FakeJetstream([
            commit(T0, UPLOADER, "fm.plyr.track", "3kcopy", "create", track_record("Totally Mine", audioUrl=f"{media.base}/copy.mp3")),
            commit(T0 + 1, UPLOADER, "fm.plyr.track", "3kown", "create", track_record("Really Mine", audioUrl=f"{media.base}/own.mp3")),
        ])
        async with anyio.create_task_group() as tg:
            await tg.start(fake.serve)
            settings = replace(settings, jetstream_endpoints=(fake.url,), jetstream_compress=False,
                               scanners=("copyright",), media_allow_networks=("127.0.0.1/32",), media_allow_http=True)
            parts = await tg.start(run_daemon, settings)
            store, engine = parts["store"], parts["engine"]
            with anyio.fail_after(90):
                while (await store.counts())["done"] < 2:
                    await anyio.sleep(0.1)
            labels = await engine.label_log.in_force(COPY)
            async with httpx.AsyncClient() as http:
                metrics = (await http.get(f"http://127.0.0.1:{parts['server'].port}/metrics")).text
            own_labels = await engine.label_log.in_force(ORIGINAL_WORK)
            history = await engine.decisions.history(COPY)
            own_history = await engine.decisions.history(ORIGINAL_WORK)
            tg.cancel_scope.cancel()
    assert [label.val for label in labels] == ["copyright-violation"] and own_labels == []
    assert "firehose_mod_fingerprint_index_refs 3.0" in metrics  # the reference and both uploads
    assert "firehose_mod_fingerprint_index_segments 0.0" in metrics  # so few: still in memory, no segment yet
    (decision,) = [r for r in history if r["action"] == "label"]
    evidence = decision["evidence"][0]["evidence"]
    assert decision["rule"] == "catalogue-match"
    assert evidence["ref"] == listed["ref"] and evidence["ref_kind"] == "reference"
    assert 30 <= evidence["seconds_matched"] <= 46
    assert [r["action"] for r in own_history] == ["none"]  # scanned, nothing found: on record
    removed = run_cli("catalogue", "remove", listed["ref"], "--json", env=env)
    assert json.loads(removed.stdout) == {"ref": listed["ref"], "removed": True}
    stats = json.loads(run_cli("catalogue", "stats", "--json", env=env).stdout)
    assert stats["reference"] == 0 and stats["upload"] == 2  # both uploads were indexed too
    if settings.database_url:  # rows on PostgreSQL; only this machine's index segments are local
        assert not settings.db_path.exists()
