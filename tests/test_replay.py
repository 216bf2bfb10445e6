"""Replay from a past cursor: known tracks are queued for a rescan; the live cursor never moves."""

from __future__ import annotations

from dataclasses import replace

import anyio
import pytest

from firehose_mod.ingest.filters import Collections
from firehose_mod.ingest.jetstream import JetstreamSource
from firehose_mod.ingest.pipeline import IngestPipeline
from firehose_mod.ingest.reconnect import Backoff
from firehose_mod.ingest.replay import run_replay
from firehose_mod.store.ingest import IngestStore

from tests.fakes.ingest import run_until
from tests.fakes.jetstream import FakeJetstream, network

pytestmark = pytest.mark.anyio


async def jobs(store: IngestStore) -> list[tuple[str, str, str]]:
    async with store._db.execute("SELECT uri, operation, state FROM scan_jobs ORDER BY id") as cur:
        return await cur.fetchall()


async def test_replay_queues_every_known_track_for_a_rescan_and_stops_at_the_live_cursor(settings):
    events = network(12, noise_per_track=2)
    fake = FakeJetstream(events)
    store = await IngestStore.open(settings.db_path)
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(fake.serve)
            live = JetstreamSource([fake.url], Collections.parse(["fm.plyr.track"]), backoff=Backoff(base=0.01, cap=0.05))
            pipeline = IngestPipeline(store, live.name, max_delay=0.05)

            async def all_in():
                return len(await jobs(store)) == 12

            await run_until(live, pipeline, None, all_in)
            await store._db.execute("UPDATE scan_jobs SET state = 'done'")  # as if the workers had run
            live_cursor = await store.cursor("jetstream")
            settings = replace(settings, jetstream_endpoints=(fake.url,), jetstream_compress=False)
            middle = events[len(events) // 2]["time_us"]
            with anyio.fail_after(10):
                report = await run_replay(settings, middle)
            tg.cancel_scope.cancel()
        rows = await jobs(store)
        rescans = [uri for uri, op, state in rows if op == "rescan" and state == "pending"]
        later = [e for e in events if e["time_us"] >= middle and e["commit"]["collection"] == "fm.plyr.track"]
        assert rescans == [f"at://{e['did']}/fm.plyr.track/{e['commit']['rkey']}" for e in later]
        assert report.enqueued == len(later) and report.until_cursor == live_cursor
        assert await store.cursor("jetstream") == live_cursor  # the live cursor is untouched
        assert await store.cursor("jetstream-replay") >= live_cursor
        assert f"cursor={middle}" in fake.connections[-1]  # the exact cursor, no safety margin
    finally:
        await store.close()


async def test_replay_without_a_saved_cursor_says_what_to_do(settings):
    with pytest.raises(ValueError, match="no saved cursor"):
        await run_replay(replace(settings, jetstream_endpoints=("ws://127.0.0.1:9",)), 5)
