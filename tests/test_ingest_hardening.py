"""One bad frame never stops ingest; a failing source is restarted from durable state."""

from __future__ import annotations

import json
import struct
from dataclasses import replace

import anyio
import pytest
import zstandard
from structlog.testing import capture_logs

from firehose_mod.daemon import _ingest_task, run_daemon
from firehose_mod.ingest.filters import Collections
from firehose_mod.ingest.jetstream import MAX_FRAME_BYTES, Decompressor, JetstreamSource, decode_jetstream, zstd_dictionary
from firehose_mod.ingest.pipeline import IngestPipeline
from firehose_mod.ingest.reconnect import Backoff
from firehose_mod.store.ingest import IngestStore
from firehose_mod.supervise import TASK_STATS, supervised

from tests.fakes.jetstream import T0, FakeJetstream, commit, track_record

pytestmark = pytest.mark.anyio

TRACKS = Collections.parse(["fm.plyr.track"])


def declaring(frame: bytes, size: int) -> bytes:
    """`frame` (one zstd frame) with its header rewritten to declare `size` bytes of content."""
    assert frame[:4] == b"\x28\xb5\x2f\xfd"
    fhd = frame[4]
    fcs_flag, single, dict_flag = fhd >> 6, (fhd >> 5) & 1, fhd & 3
    start = 5 + (0 if single else 1) + [0, 1, 2, 4][dict_flag]
    fcs_len = [1 if single else 0, 2, 4, 8][fcs_flag]
    return frame[:4] + bytes([(3 << 6) | (fhd & 0x3F)]) + frame[5:start] + struct.pack("<Q", size) + frame[start + fcs_len:]


def deeply_nested(time_us: int, depth: int = 5000) -> str:
    """A Jetstream commit whose record nests `depth` levels: json.loads raises RecursionError."""
    event = commit(time_us, "did:plc:troll", "fm.plyr.track", "3kdeep", "create", {"x": "PLACEHOLDER"})
    return json.dumps(event).replace('"PLACEHOLDER"', "[" * depth + "]" * depth)


@pytest.mark.parametrize("declared", [4 * 1024**3, 10**12])
def test_a_zstd_frame_declaring_gigabytes_is_a_dead_letter_not_an_allocation(declared):
    real = zstandard.ZstdCompressor(dict_data=zstd_dictionary()).compress(
        json.dumps(commit(T0, "did:plc:a", "fm.plyr.track", "3k1", "create", track_record("x"))).encode())
    decoded = decode_jetstream(declaring(real, declared), TRACKS, decompress=Decompressor())
    assert [d.reason for d in decoded.dead] == ["oversized"]
    assert str(declared) in decoded.dead[0].detail


def test_a_zstd_frame_declaring_nothing_is_cut_at_our_limit():
    big = json.dumps(commit(T0, "did:plc:a", "fm.plyr.track", "3k1", "create",
                            track_record("x", description="y" * (3 * MAX_FRAME_BYTES)))).encode()
    frame = zstandard.ZstdCompressor(dict_data=zstd_dictionary(), write_content_size=False).compress(big)
    assert zstandard.frame_content_size(frame) == -1
    assert len(Decompressor()(frame)) == MAX_FRAME_BYTES + 1
    assert [d.reason for d in decode_jetstream(frame, TRACKS, decompress=Decompressor()).dead] == ["oversized"]


async def test_a_deeply_nested_record_is_a_dead_letter_and_the_daemon_goes_on(settings):
    fake = FakeJetstream([
        commit(T0, "did:plc:a", "fm.plyr.track", "3kfirst", "create", track_record("first")),
        deeply_nested(T0 + 1).encode(),  # sent verbatim
        commit(T0 + 2, "did:plc:a", "fm.plyr.track", "3kafter", "create", track_record("after")),
    ])
    async with anyio.create_task_group() as tg:
        await tg.start(fake.serve)
        settings = replace(settings, jetstream_endpoints=(fake.url,), jetstream_compress=False, scanners=("self-labels",))
        parts = await tg.start(run_daemon, settings)
        store = parts["store"]
        with anyio.fail_after(20):
            while (await store.counts())["tracks"] < 2:
                await anyio.sleep(0.05)
        letters = await store.dead_letters()
        tg.cancel_scope.cancel()
    assert [d["reason"] for d in letters] == ["undecodable"]
    assert "RecursionError" in letters[0]["detail"]


async def test_a_failed_source_restarts_from_the_committed_cursor(settings, tmp_path):
    """A source that fails after its sink took events restarts from disk, not from memory."""
    events = [commit(T0 + i, "did:plc:a", "fm.plyr.track", f"3k{i}", "create", track_record(f"t{i}")) for i in range(6)]
    fake = FakeJetstream(events)
    store = await IngestStore.open(settings.db_path)
    try:
        pipeline = IngestPipeline(store, "jetstream", max_batch=1000, max_delay=60)
        source = JetstreamSource(["ws://placeholder"], TRACKS, backoff=Backoff(base=0.01, cap=0.02))
        failures = 0
        real_sink = pipeline.sink

        async def flaky_sink(decoded):
            nonlocal failures
            await real_sink(decoded)
            if decoded.cursor == T0 + 3 and failures == 0:
                failures += 1
                raise RuntimeError("a bug in a sink")  # three events are buffered, none committed

        run, before_restart = _ingest_task(store, source, pipeline, set())
        pipeline.sink = flaky_sink
        TASK_STATS.pop("ingest-test", None)
        async with anyio.create_task_group() as tg:
            await tg.start(fake.serve)
            source.endpoints = [fake.url]
            with capture_logs() as logs:
                tg.start_soon(lambda: supervised("ingest-test", run, backoff=Backoff(base=0.01, cap=0.02),
                                                 before_restart=before_restart))
                with anyio.fail_after(10):
                    while source.cursor != T0 + 5:
                        await anyio.sleep(0.02)
                await pipeline.flush()
            tg.cancel_scope.cancel()
        counts = await store.counts()
    finally:
        await store.close()
    assert counts["tracks"] == 6 and counts["pending"] == 6
    assert TASK_STATS["ingest-test"].failures == 1 and TASK_STATS["ingest-test"].restarts == 1
    failed = [e for e in logs if e["event"] == "task.failed"]
    assert failed and failed[0]["task"] == "ingest-test" and "a bug in a sink" in failed[0]["error"]
    assert failed[0]["log_level"] == "error" and failed[0]["exc_info"] is not None
    assert len(fake.connections) == 2 and "cursor=" not in fake.connections[1]  # nothing was committed yet
