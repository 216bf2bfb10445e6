"""Jetstream source -> pipeline -> durable queue, over a real local Jetstream, with network faults."""

from __future__ import annotations

import socket
from dataclasses import replace

import anyio
import pytest

from firehose_mod.ingest.events import TrackEvent
from firehose_mod.ingest.filters import Collections
from firehose_mod.ingest.jetstream import JetstreamSource
from firehose_mod.ingest.pipeline import IngestPipeline
from firehose_mod.scan.registry import open_engine
from firehose_mod.scan.worker import ScanWorkers
from firehose_mod.store.ingest import IngestStore

from tests.fakes.ingest import fast_backoff, queued_uris, run_until
from tests.fakes.jetstream import FakeJetstream, Faults, commit, network, track_record

pytestmark = pytest.mark.anyio
TRACKS = Collections.parse(["fm.plyr.track"])


@pytest.fixture
async def store(settings):
    s = await IngestStore.open(settings.db_path)
    yield s
    await s.close()


@pytest.mark.parametrize("compress", [False, True])
async def test_tracks_reach_the_queue_with_the_cursor_in_the_same_commit(store, compress):
    events = network(30)
    fake = FakeJetstream(events)
    async with anyio.create_task_group() as tg:
        await tg.start(fake.serve)
        source = JetstreamSource([fake.url], TRACKS, compress=compress, backoff=fast_backoff())
        pipeline = IngestPipeline(store, source.name, max_delay=0.05)

        async def done():
            return len(await queued_uris(store)) == 30

        await run_until(source, pipeline, None, done)
        tg.cancel_scope.cancel()
    assert await queued_uris(store) == [f"at://did:plc:artist{i % 7}/fm.plyr.track/3ktrack{i:05d}" for i in range(30)]
    assert "wantedCollections=fm.plyr.track" in fake.connections[0]
    assert ("compress=true" in fake.connections[0]) is compress
    last_track = max(e["time_us"] for e in events if e["commit"]["collection"] == "fm.plyr.track")
    assert await store.cursor("jetstream") >= last_track


@pytest.mark.parametrize(
    "faults",
    [
        pytest.param(Faults(drop_after=7), id="tcp-reset"),
        pytest.param(Faults(garbage_at=5), id="garbage-frame"),
        pytest.param(Faults(silent_after=9), id="silence-past-read-timeout"),
    ],
)
async def test_network_faults_lose_and_repeat_nothing(store, faults):
    garbage = faults.garbage_at is not None  # the fake clears a fault once it fired
    fake = FakeJetstream(network(20, noise_per_track=0), faults=faults)  # server-side filter: tracks only
    async with anyio.create_task_group() as tg:
        await tg.start(fake.serve)
        silence = faults.silent_after is not None
        source = JetstreamSource([fake.url], TRACKS, read_timeout=0.5 if silence else 10, backoff=fast_backoff())
        pipeline = IngestPipeline(store, source.name, max_delay=0.05)

        async def done():
            return len(await queued_uris(store)) >= 20 and pipeline.stats["frames"] >= 20

        await run_until(source, pipeline, None, done)
        tg.cancel_scope.cancel()
    uris = await queued_uris(store)
    assert len(uris) == len(set(uris)) == 20  # every track once, none twice
    counts = await store.counts()
    if not garbage:
        # reconnected (a loaded machine may add a spurious silence reconnect), always with a cursor
        assert len(fake.connections) >= 2 and all("cursor=" in c for c in fake.connections[1:])
        assert counts["dead_letters"] == 0
    else:
        assert counts["dead_letters"] == 1  # the garbage, kept for the operator; the stream went on
        assert (await store.dead_letters())[0]["reason"] == "malformed_json"


async def test_server_restart_and_failover_to_a_second_endpoint(store):
    dead_port = socket.socket()
    dead_port.bind(("127.0.0.1", 0))
    down = f"ws://127.0.0.1:{dead_port.getsockname()[1]}"  # bound but not listening: refused
    fake = FakeJetstream(network(10, noise_per_track=2))
    async with anyio.create_task_group() as tg:
        await tg.start(fake.serve)
        source = JetstreamSource([down, fake.url], TRACKS, backoff=fast_backoff())
        pipeline = IngestPipeline(store, source.name, max_delay=0.05)

        async def done():
            return len(await queued_uris(store)) == 10

        await run_until(source, pipeline, None, done)
        tg.cancel_scope.cancel()
    dead_port.close()
    assert source.stats.reconnects >= 1 and len(await queued_uris(store)) == 10


async def test_restart_resumes_from_the_saved_cursor_minus_the_margin(store):
    events = network(10, noise_per_track=3)
    fake = FakeJetstream(events)
    async with anyio.create_task_group() as tg:
        await tg.start(fake.serve)
        first = JetstreamSource([fake.url], TRACKS, backoff=fast_backoff())
        p1 = IngestPipeline(store, first.name, max_delay=0.05)

        async def ten():
            return len(await queued_uris(store)) == 10

        await run_until(first, p1, None, ten)
        saved = await store.cursor("jetstream")
        fake.append(commit(events[-1]["time_us"] + 10, "did:plc:late", "fm.plyr.track", "3klate", "create", track_record("Late")))
        second = JetstreamSource([fake.url], TRACKS, backoff=fast_backoff(), rewind=1_000)
        p2 = IngestPipeline(store, second.name, max_delay=0.05)

        async def eleven():
            return len(await queued_uris(store)) == 11

        await run_until(second, p2, saved, eleven)
        tg.cancel_scope.cancel()
    assert f"cursor={saved - 1_000}" in fake.connections[-1]
    assert p2.stats["duplicates"] >= 1  # the overlap was replayed and recognised
    assert (await queued_uris(store))[-1] == "at://did:plc:late/fm.plyr.track/3klate"


def ev(op, cid, rev, record=None, rkey="3kone"):
    return TrackEvent("did:plc:a", "fm.plyr.track", rkey, op, cid, record, 1, rev, "jetstream")


async def test_update_only_when_the_cid_changes_and_old_events_never_win(store):
    r = track_record("v1")
    await store.commit("jetstream", 1, [ev("create", "bafy1", "3k0001", r)])
    res = await store.commit("jetstream", 2, [ev("update", "bafy1", "3k0002", r)])  # same cid: nothing to scan
    assert res.enqueued == 0
    res = await store.commit("jetstream", 3, [ev("update", "bafy2", "3k0003", track_record("v2"))])
    assert res.enqueued == 1
    res = await store.commit("jetstream", 4, [ev("update", "bafy1", "3k0001", r)])  # replayed old version
    assert res.enqueued == 0
    async with store._db.execute("SELECT cid, record FROM tracks") as cur:
        cid, record = await cur.fetchone()
    assert cid == "bafy2" and '"v2"' in record
    assert await store.cursor("jetstream") == 4
    await store.commit("jetstream", 3, [])  # the cursor never moves back
    assert await store.cursor("jetstream") == 4


async def test_delete_negates_labels_in_force_through_the_worker(settings, store, label_log):
    uri = "at://did:plc:a/fm.plyr.track/3kone"
    await store.commit("jetstream", 1, [ev("create", "bafy1", "3k0001", track_record("x"))])
    await label_log.emit(uri, "copyright-violation")
    await label_log.emit(uri, "sexual")
    await store.commit("jetstream", 2, [ev("delete", None, "3k0002")])
    async with open_engine(replace(settings, scanners=("self-labels",)), label_log) as scanning, \
            anyio.create_task_group() as tg:
        workers = ScanWorkers(store, scanning.engine, idle_poll=0.02)
        tg.start_soon(workers.run)
        with anyio.fail_after(5):
            while (await store.counts())["done"] < 2:
                await anyio.sleep(0.02)
        tg.cancel_scope.cancel()
    assert await label_log.in_force(uri) == []
    assert [(s.label.val, s.label.neg) for s in await label_log.history(uri)][-2:] == [
        ("copyright-violation", True), ("sexual", True)]
    replay = await store.commit("jetstream", 2, [ev("delete", None, "3k0002")])
    assert replay.enqueued == 0
