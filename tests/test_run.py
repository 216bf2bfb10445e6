"""`firehose-mod run` in one process: Jetstream in, queue, workers, label stream out."""

from __future__ import annotations

from dataclasses import replace

import anyio
import httpx
import pytest

from firehose_mod.daemon import run_daemon
from firehose_mod.server.admin import auth_header

from tests.fakes.jetstream import T0, FakeJetstream, commit, track_record
from tests.stream_client import Received, collect, subscribe

pytestmark = pytest.mark.anyio

URI = "at://did:plc:artist/fm.plyr.track/3ktrack"


async def test_a_deleted_track_has_its_labels_negated_on_the_stream(settings):
    fake = FakeJetstream([commit(T0, "did:plc:artist", "fm.plyr.track", "3ktrack", "create", track_record("Song"))])
    async with anyio.create_task_group() as tg:
        await tg.start(fake.serve)
        settings = replace(settings, jetstream_endpoints=(fake.url,), jetstream_compress=True, scanners=("self-labels",))
        parts = await tg.start(run_daemon, settings)
        server, store = parts["server"], parts["store"]
        with anyio.fail_after(10):
            while (await store.counts())["done"] < 1:
                await anyio.sleep(0.02)
        await server.feed.log.emit(URI, "copyright-violation")  # as a scanner would have
        async with subscribe(f"ws://127.0.0.1:{server.port}", 0) as ws:
            got = await collect(ws, Received(), count=1)
            fake.append(commit(T0 + 10, "did:plc:artist", "fm.plyr.track", "3ktrack", "delete"))
            await collect(ws, got, count=2)
        with anyio.fail_after(10):  # the job is marked done just after its negation goes out
            while (await store.counts())["done"] < 2:
                await anyio.sleep(0.02)
        async with httpx.AsyncClient() as client:
            status = (await client.get(f"http://127.0.0.1:{server.port}/admin/status",
                                       headers=auth_header(settings.data_dir))).json()
            metrics = (await client.get(f"http://127.0.0.1:{server.port}/metrics")).text
        tg.cancel_scope.cancel()
    assert [(label.val, label.neg) for label in got.labels] == [("copyright-violation", False), ("copyright-violation", True)]
    assert status["ingest"]["source"] == "jetstream" and status["ingest"]["cursor"] == T0 + 10
    assert status["queue"]["done"] == 2 and status["queue"]["dead_letters"] == 0
    assert 'firehose_mod_ingest_events_total{source="jetstream"} 2.0' in metrics
    assert 'firehose_mod_scan_jobs_total{outcome="done"} 2.0' in metrics


async def test_jetstream_restart_on_the_same_port_is_survived(settings):
    first = FakeJetstream([commit(T0 + i, f"did:plc:a{i}", "fm.plyr.track", f"3k{i}", "create", track_record(f"t{i}"))
                           for i in range(3)])
    async with anyio.create_task_group() as tg:
        up = anyio.CancelScope()

        async def serve_first(*, task_status):
            with up:
                await first.serve(task_status=task_status)

        port = await tg.start(serve_first)
        settings = replace(settings, jetstream_endpoints=(first.url,), jetstream_compress=False, scanners=("self-labels",))
        parts = await tg.start(run_daemon, settings)
        store, source = parts["store"], parts["source"]
        source.backoff.base, source.backoff.cap = 0.05, 0.2
        with anyio.fail_after(10):
            while (await store.counts())["tracks"] < 3:
                await anyio.sleep(0.02)
        up.cancel()  # the server goes away, closing every connection
        await anyio.sleep(0.3)
        late = commit(T0 + 50, "did:plc:late", "fm.plyr.track", "3klate", "create", track_record("late"))
        second = FakeJetstream(first.events + [late], port=port)
        await tg.start(second.serve)
        with anyio.fail_after(15):
            while (await store.counts())["tracks"] < 4:
                await anyio.sleep(0.05)
        tg.cancel_scope.cancel()
    assert source.stats.reconnects >= 1
    assert "cursor=" in second.connections[0]  # resumed, not restarted from live
