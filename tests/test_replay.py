"""Replay from a past cursor: known tracks are queued for a rescan; the live cursor never moves."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
from dataclasses import replace

import anyio
import pytest

from firehose_mod.daemon import run_daemon
from firehose_mod.ingest.filters import Collections
from firehose_mod.ingest.jetstream import JetstreamSource, decode_jetstream
from firehose_mod.ingest.pipeline import IngestPipeline
from firehose_mod.ingest.reconnect import Backoff
from firehose_mod.ingest.replay import run_replay
from firehose_mod.store.ingest import IngestStore

from tests.fakes.ingest import run_until
from tests.fakes.jetstream import T0, FakeJetstream, Faults, commit, network, track_record
from tests.procs import env_for, run_cli

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
        assert await store.cursor("jetstream-replay") == live_cursor  # it ends at the window's end
        assert f"cursor={middle}" in fake.connections[-1]  # the exact cursor, no safety margin
    finally:
        await store.close()


async def test_replay_without_a_saved_cursor_says_what_to_do(settings):
    with pytest.raises(ValueError, match="no saved cursor"):
        await run_replay(replace(settings, jetstream_endpoints=("ws://127.0.0.1:9",)), 5)


# --- issue 20: a replay an operator can trust -------------------------------------------------


def track_at(time_us: int, n: int, **record) -> dict:
    rec = track_record(f"Track {n}") if not record else {"$type": "fm.plyr.track", **record}
    return commit(time_us, f"did:plc:artist{n % 5}", "fm.plyr.track", f"3ktrack{n:05d}", "create", rec)


def uri_of(ev: dict) -> str:
    return f"at://{ev['did']}/fm.plyr.track/{ev['commit']['rkey']}"


def replay_source(fake: FakeJetstream) -> JetstreamSource:
    return JetstreamSource([fake.url], Collections.parse(["fm.plyr.track"]), backoff=Backoff(base=0.01, cap=0.05))


async def test_the_window_is_exact_and_inclusive_at_both_ends_even_across_a_reconnect(settings):
    """Events at T and at T2 are replayed; one a microsecond before T (served again by the rewind
    of a reconnect) or after T2 never is, and the replay's cursor ends at T2, not past it."""
    start, end = T0 + 1_000_000, T0 + 2_000_000
    times = [start - 1, start, start + 1, start + 500_000, end - 1, end, end + 1, end + 2]
    events = [track_at(t, i) for i, t in enumerate(times)]
    fake = FakeJetstream(events, faults=Faults(drop_after=2))  # a reconnect rewinds 5 s: T - 1 comes again
    async with anyio.create_task_group() as tg:
        await tg.start(fake.serve)
        with anyio.fail_after(10):
            report = await run_replay(settings, start, until=end, source=replay_source(fake))
        tg.cancel_scope.cancel()
    assert len(fake.connections) == 2 and f"cursor={start}" in fake.connections[0]
    assert start - 1 in fake.sent  # served by the rewound reconnect ...
    store = await IngestStore.open(settings.db_path)
    try:
        rows = await jobs(store)
        assert [uri for uri, _, _ in rows] == [uri_of(e) for e in events if start <= e["time_us"] <= end]
        assert report.enqueued == 5 and report.until_cursor == end
        assert await store.cursor("jetstream-replay") == end
        assert await store.cursor("jetstream") is None  # the live cursor never moves
    finally:
        await store.close()


async def test_a_replay_that_ends_on_an_event_exactly_at_until_stops_there(settings):
    """An event exactly on T2 ends the replay at once: it does not wait for a later one."""
    start, end = T0 + 10, T0 + 20
    events = [track_at(start, 0), track_at(end, 1)]
    fake = FakeJetstream(events)  # nothing after T2: the source would wait forever
    async with anyio.create_task_group() as tg:
        await tg.start(fake.serve)
        with anyio.fail_after(10):
            report = await run_replay(settings, start, until=end, source=replay_source(fake))
        tg.cancel_scope.cancel()
    assert report.enqueued == 2 and report.frames == 2


async def test_until_before_cursor_is_refused_naming_until(settings):
    with pytest.raises(ValueError, match="--until 5 is before --cursor 10"):
        await run_replay(replace(settings, jetstream_endpoints=("ws://127.0.0.1:9",)), 10, until=5)


def test_cli_until_before_cursor_names_until(tmp_path):
    proc = run_cli("replay", "--cursor", "10", "--until", "5", env=env_for(tmp_path / "var"), check=False)
    assert proc.returncode != 0 and "--until" in proc.stderr


async def known_tracks_all_scanned(store: IngestStore, events: list[dict]) -> None:
    """Ingest `events` as the live daemon would, and mark their jobs done (as if workers had run)."""
    pipeline = IngestPipeline(store, "jetstream")
    for ev in events:
        await pipeline.sink(decode_jetstream(json.dumps(ev), Collections.parse(["fm.plyr.track"])))
    await pipeline.flush()
    await store._db.execute("UPDATE scan_jobs SET state = 'done'")
    await store._db.commit()


class Interrupted(Exception):
    pass


def interrupt_after(n: int):
    """A progress callback that stops the replay abruptly once `n` events were handed to it."""
    seen = 0

    def progress(cursor: int, target: int) -> None:
        nonlocal seen
        seen += 1
        if seen == n:
            raise Interrupted

    return progress


async def test_an_interrupted_replay_resumes_from_its_cursor_and_restart_starts_over(settings):
    events = [track_at(T0 + 1000 * (i + 1), i) for i in range(20)]
    start, end = events[2]["time_us"], events[17]["time_us"]
    window = [e for e in events if start <= e["time_us"] <= end]
    store = await IngestStore.open(settings.db_path)
    try:
        await known_tracks_all_scanned(store, events)
    finally:
        await store.close()
    fake = FakeJetstream(events)
    notices: list[str] = []
    async with anyio.create_task_group() as tg:
        await tg.start(fake.serve)
        # The first run is stopped (as an operator's Ctrl-C would) after 6 events.
        with pytest.raises(BaseExceptionGroup) as stopped:
            await run_replay(settings, start, until=end, source=replay_source(fake), progress=interrupt_after(6))
        assert stopped.group_contains(Interrupted, depth=None) if hasattr(stopped, "group_contains") else True
        stopped_at = window[5]["time_us"]
        store = await IngestStore.open(settings.db_path)
        try:
            assert await store.cursor("jetstream-replay") == stopped_at
            await store._db.execute("UPDATE scan_jobs SET state = 'done'")  # the workers ran meanwhile
            await store._db.commit()
        finally:
            await store.close()
        served_before = len(fake.sent)
        with anyio.fail_after(10):  # the same command again: it resumes
            report = await run_replay(settings, start, until=end, source=replay_source(fake), notice=notices.append)
        resumed_sent = fake.sent[served_before:]
        assert notices == [f"resuming the replay of [{start}, {end}] from {stopped_at}; --restart to start over"]
        assert report.resumed_from == stopped_at and f"cursor={stopped_at}" in fake.connections[-1]
        assert resumed_sent[0] == stopped_at and start not in resumed_sent  # the first part is not read again
        store = await IngestStore.open(settings.db_path)
        try:
            rows = await jobs(store)
            pending = [uri for uri, op, state in rows if op == "rescan" and state == "pending"]
            # The second part, and the one event exactly at the saved cursor (read again: its µs is not unique).
            assert pending == [uri_of(e) for e in window[5:]]
            assert sorted(uri for uri, op, _ in rows if op == "rescan") == sorted(uri_of(e) for e in window)
            assert await store.cursor("jetstream-replay") == end
            await store._db.execute("UPDATE scan_jobs SET state = 'done'")
            await store._db.commit()
        finally:
            await store.close()

        # A finished replay is not resumed: the same command replays the whole window again.
        notices.clear()
        with anyio.fail_after(10):
            again = await run_replay(settings, start, until=end, source=replay_source(fake), notice=notices.append)
        assert notices == [] and again.resumed_from is None and again.enqueued == len(window)

        # --restart after an interruption starts from T.
        with pytest.raises(BaseExceptionGroup) as stopped:
            await run_replay(settings, start, until=end, source=replay_source(fake), progress=interrupt_after(3))
        assert stopped.group_contains(Interrupted, depth=None) if hasattr(stopped, "group_contains") else True
        with anyio.fail_after(10):
            fresh = await run_replay(settings, start, until=end, source=replay_source(fake), restart=True,
                                     notice=notices.append)
        assert notices == [] and fresh.resumed_from is None and f"cursor={start}" in fake.connections[-1]
        tg.cancel_scope.cancel()


async def test_replaying_a_window_twice_keeps_its_rejected_event_once(settings):
    events = [track_at(T0 + 10, 0), track_at(T0 + 20, 1, title=""), track_at(T0 + 30, 2), track_at(T0 + 40, 3)]
    # A raw frame that is not JSON at all, between them: an `undecodable` letter without a cursor.
    fake = FakeJetstream(events[:2] + [b"{not json at all"] + events[2:])
    reports = []
    async with anyio.create_task_group() as tg:
        await tg.start(fake.serve)
        for restart in (False, True):
            with anyio.fail_after(10):
                reports.append(await run_replay(settings, T0 + 10, until=T0 + 30, source=replay_source(fake),
                                                restart=restart))
        tg.cancel_scope.cancel()
    store = await IngestStore.open(settings.db_path)
    try:
        letters = await store.dead_letters()
        assert sorted(d["reason"] for d in letters) == sorted({d["reason"] for d in letters})
        assert len(letters) == 2 and reports[0].dead_letters == 2 and reports[1].dead_letters == 0
        in_window = [uri_of(events[0]), uri_of(events[2])]
        assert [(uri, op) for uri, op, _ in await jobs(store)] == [(u, "create") for u in in_window] + [
            (u, "rescan") for u in in_window]  # the second replay queues the valid ones again, as it should
    finally:
        await store.close()


async def test_a_replay_beside_a_busy_daemon_loses_and_duplicates_nothing(settings):
    """`firehose-mod replay` (a process of its own) while the daemon ingests and its workers scan:
    both write the one database; the busy retries keep every write, each exactly once."""
    total, window_n = 400, 200
    events = [track_at(T0 + 10 * (i + 1), i) for i in range(total)]
    for i, ev in enumerate(events):  # a distinct repo per track: a realistic spread of writes
        ev["did"] = f"did:plc:artist{i:04d}"
    start, end = events[0]["time_us"], events[window_n - 1]["time_us"]
    fake = FakeJetstream(events[:window_n])
    async with anyio.create_task_group() as tg:
        await tg.start(fake.serve)
        settings = replace(settings, jetstream_endpoints=(fake.url,), jetstream_compress=False,
                           scanners=("self-labels",), scan_workers=2)
        await tg.start(run_daemon, settings)
        reader = await IngestStore.open(settings.db_path)

        async def counts() -> dict:
            async with reader._reading("SELECT state, operation, count(*) FROM scan_jobs GROUP BY 1, 2") as cur:
                return {(s, op): n for s, op, n in await cur.fetchall()}

        with anyio.fail_after(60):
            while (await counts()).get(("done", "create"), 0) < window_n:
                await anyio.sleep(0.05)

        async def live_traffic() -> None:  # ingest keeps writing while the replay runs
            for ev in events[window_n:]:
                fake.append(ev)
                await anyio.sleep(0.002)

        tg.start_soon(live_traffic)
        env = env_for(settings.data_dir, FIREHOSE_MOD_JETSTREAM_ENDPOINTS=fake.url,
                      FIREHOSE_MOD_JETSTREAM_COMPRESS="false", FIREHOSE_MOD_INGEST_SOURCE="jetstream")
        proc = await anyio.to_thread.run_sync(
            lambda: run_cli("replay", "--cursor", str(start), "--until", str(end), env=env, timeout=60))
        report = json.loads(proc.stdout.strip().splitlines()[-1])

        with anyio.fail_after(60):
            while True:
                c = await counts()
                if (c.get(("done", "create"), 0) == total and c.get(("done", "rescan"), 0) == window_n
                        and sum(c.values()) == total + window_n):
                    break
                await anyio.sleep(0.05)
        live_cursor = await reader.cursor("jetstream")
        replay_cursor = await reader.cursor("jetstream-replay")
        async with reader._reading("SELECT uri, operation, count(*) FROM scan_jobs GROUP BY 1, 2") as cur:
            per_uri = await cur.fetchall()
        await reader.close()
        tg.cancel_scope.cancel()
    assert report["enqueued"] == window_n and report["until_cursor"] == end
    assert c == {("done", "create"): total, ("done", "rescan"): window_n}  # nothing failed, nothing left
    assert all(n == 1 for _, _, n in per_uri)
    assert {u for u, op, _ in per_uri if op == "rescan"} == {uri_of(e) for e in events[:window_n]}
    assert {u for u, op, _ in per_uri if op == "create"} == {uri_of(e) for e in events}
    assert live_cursor == events[-1]["time_us"] and replay_cursor == end


async def test_a_sigkilled_replay_command_resumes_where_it_stopped(settings):
    """The real command, SIGKILLed mid-window, then run again: it says it resumes, reads only the
    rest of the window, and the rescans are exactly the window's tracks, each once."""
    events = [track_at(T0 + 1000 * (i + 1), i) for i in range(120)]
    start, end = events[0]["time_us"], events[99]["time_us"]
    store = await IngestStore.open(settings.db_path)
    try:
        await known_tracks_all_scanned(store, events)
    finally:
        await store.close()
    fake = FakeJetstream(events, pace=0.01)
    async with anyio.create_task_group() as tg:
        await tg.start(fake.serve)
        env = env_for(settings.data_dir, FIREHOSE_MOD_JETSTREAM_ENDPOINTS=fake.url,
                      FIREHOSE_MOD_JETSTREAM_COMPRESS="false", FIREHOSE_MOD_INGEST_SOURCE="jetstream")
        cmd = [sys.executable, "-m", "firehose_mod", "replay", "--cursor", str(start), "--until", str(end)]
        proc = subprocess.Popen(  # noqa: ASYNC220 (killed below, waited for in a thread)
            cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True)

        def saved() -> int | None:
            db = sqlite3.connect(f"file:{settings.db_path}?mode=ro", uri=True)
            try:
                row = db.execute("SELECT cursor FROM source_cursors WHERE source = 'jetstream-replay'").fetchone()
                return row[0] if row else None
            finally:
                db.close()

        with anyio.fail_after(30):
            while (saved() or 0) < events[20]["time_us"]:
                await anyio.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        await anyio.to_thread.run_sync(proc.wait)
        stopped_at = saved()
        assert start < stopped_at < end
        fake.pace = 0
        second = await anyio.to_thread.run_sync(
            lambda: subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=60))
        assert second.returncode == 0, second.stderr
        tg.cancel_scope.cancel()
    assert f"resuming the replay of [{start}, {end}] from {stopped_at}; --restart to start over" in second.stderr
    assert len(fake.sent_by) == 2
    resumed = fake.sent_by[1]
    assert resumed[0] == stopped_at and min(resumed) == stopped_at  # the first part is not served again
    assert json.loads(second.stdout.strip().splitlines()[-1])["resumed_from"] == stopped_at
    store = await IngestStore.open(settings.db_path)
    try:
        rescans = [uri for uri, op, _ in await jobs(store) if op == "rescan"]
        assert sorted(rescans) == sorted(uri_of(e) for e in events[:100])
        assert await store.cursor("jetstream-replay") == end
    finally:
        await store.close()
