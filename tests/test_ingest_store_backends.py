"""The ingest store's rules on both backends: SQLite (store/ingest.py) and PostgreSQL
(store/pg/ingest.py). Each test runs once per backend; `open_ingest` (tests/conftest.py) opens
another store instance, with connections of its own, over the same database."""

from __future__ import annotations

import anyio
import asyncpg
import pytest

from firehose_mod.store.open import open_ingest_store, source_lock
from firehose_mod.events import DeadLetter, RepoEvent, TrackEvent
from firehose_mod.scan.base import MEDIA_UNAVAILABLE, Finding
from firehose_mod.store.decisions import DecisionRow, DecisionStore
from firehose_mod.store.ingest import IngestStore
from firehose_mod.store.pg.decisions import PgDecisionWriter
from firehose_mod.store.pg.ingest import PgIngestStore
from firehose_mod.store.source_lock import PgSourceLock, SourceLock

pytestmark = pytest.mark.anyio

LABEL_LOG_BACKENDS = ("sqlite", "postgres")

DID = "did:plc:artist"


def track(n: int, *, op: str = "create", cid: str | None = None, rev: str | None = None, cursor: int = 1) -> TrackEvent:
    record = None if op == "delete" else {"$type": "fm.plyr.track", "title": f"Track {n}"}
    cid = cid if cid is not None or op == "delete" else f"bafy{n}"
    return TrackEvent(DID, "fm.plyr.track", f"3ktrack{n:05d}", op, cid, record, cursor,
                      rev if rev is not None else f"3k{n:04d}", "jetstream")


async def enqueue(store, *ns: int) -> None:
    await store.commit("jetstream", max(ns), [track(n, cursor=n) for n in ns])


async def test_the_settings_choose_the_store_and_the_source_lock(settings, backend):
    async with open_ingest_store(settings) as store:
        assert isinstance(store, PgIngestStore if backend == "postgres" else IngestStore)
        await enqueue(store, 1)
        assert await store.cursor("jetstream") == 1
    lock, standby = source_lock(settings, "ingest"), source_lock(settings, "standby")
    assert isinstance(lock, PgSourceLock if backend == "postgres" else SourceLock)
    try:
        assert await lock.acquire(wait=False) and lock.held
        assert not await standby.acquire(wait=False)
    finally:
        lock.release()
        standby.release()


# -- the commit ------------------------------------------------------------------------------------
async def test_a_failing_commit_leaves_the_cursor_and_writes_nothing(open_ingest):
    store = await open_ingest()
    await store.commit("jetstream", 10, [track(1)])
    bad = TrackEvent(DID, "fm.plyr.track", "3kbad", "create", "bafybad", {"x": object()}, 20, "3k9999", "jetstream")
    with pytest.raises(TypeError):  # its record cannot be written: the batch fails after track 2 was
        await store.commit("jetstream", 20, [track(2, cursor=20), bad])
    assert await store.cursor("jetstream") == 10
    assert await store.counts() == {"pending": 1, "running": 0, "done": 0, "failed": 0, "dead_letters": 0,
                                    "tracks": 1}


async def test_a_repeated_commit_changes_nothing_and_the_cursor_never_goes_back(open_ingest):
    store = await open_ingest()
    dead = [DeadLetter("bad-record", "title missing", 5, DID, None, b"{}", "jetstream")]
    first = await store.commit("jetstream", 5, [track(1), track(2)], dead)
    assert (first.enqueued, first.duplicates, first.dead) == (2, 0, 1)
    again = await store.commit("jetstream", 3, [track(1), track(2)], dead)  # a replay from further back
    assert (again.enqueued, again.duplicates, again.dead) == (0, 2, 0)
    assert await store.cursor("jetstream") == 5 and await store.cursor("elsewhere") is None
    assert len(await store.dead_letters()) == 1 and await store.dead_letter_count() == 1


async def test_a_replay_window_is_set_backwards_and_cleared_in_one_go(open_ingest):
    store = await open_ingest()
    await store.commit("jetstream", 50, [track(1)])
    await store.set_cursors({"jetstream-replay.from": 40, "jetstream-replay.until": 50, "jetstream-replay": 45})
    await store.set_cursors({"jetstream-replay": 41, "jetstream-replay.until": None})  # back, and gone
    assert [await store.cursor(k) for k in ("jetstream-replay.from", "jetstream-replay.until", "jetstream-replay")] \
        == [40, None, 41]
    assert await store.cursor("jetstream") == 50  # the live cursor is not the replay's


async def test_only_a_newer_version_of_a_track_is_applied(open_ingest):
    store = await open_ingest()
    await store.commit("jetstream", 1, [track(1, cid="bafyv2", rev="3k0002")])
    older = await store.commit("jetstream", 2, [track(1, op="update", cid="bafyv1", rev="3k0001")])
    backfill = await store.commit("backfill", None, [track(1, op="update", cid="bafyv3", rev="")])
    assert older.enqueued == backfill.enqueued == 0
    newer = await store.commit("jetstream", 3, [track(1, op="update", cid="bafyv3", rev="3k0003")])
    assert newer.enqueued == 1
    assert [(j["cid"], j["operation"]) for j in await store.jobs(track(1).uri)] == [
        ("bafyv2", "create"), ("bafyv3", "update")]
    assert await store.tracks_page("", 10) == [(track(1).uri, "bafyv3", track(1).record)]
    await store.commit("jetstream", 4, [track(1, op="delete", rev="3k0004")])
    assert await store.tracks_page("", 10) == [] and await store.track_count() == 0
    assert await store.known_dids() == {DID}


async def test_commits_from_two_stores_at_once_keep_the_newest_version(open_ingest):
    one, two = await open_ingest(), await open_ingest()
    versions = [track(1, op="update", cid=f"bafyv{v}", rev=f"3k{v:04d}", cursor=v) for v in range(1, 41)]

    async def commit_every_other(store, start: int) -> None:  # a live source and a backfill, interleaved
        for ev in versions[start::2]:
            await store.commit("jetstream" if start else "relay", ev.cursor, [ev])

    async with anyio.create_task_group() as tg:
        tg.start_soon(commit_every_other, one, 0)
        tg.start_soon(commit_every_other, two, 1)
    assert await one.tracks_page("", 10) == [(track(1).uri, "bafyv40", track(1).record)]
    jobs = await one.jobs(track(1).uri)
    assert len({j["cid"] for j in jobs}) == len(jobs) and jobs[-1]["cid"] == "bafyv40"


async def test_a_job_is_unique_by_uri_cid_and_operation(open_ingest):
    one, two = await open_ingest(), await open_ingest()
    await one.commit("jetstream", 1, [track(1)])
    # the same version from a backfill (no rev) and a second source: no second job
    await two.commit("backfill", None, [track(1, rev="")])
    await two.commit("relay", 1, [track(1)])
    assert [j["operation"] for j in await one.jobs(track(1).uri)] == ["create"]
    # a replay scans the known version again: once, while that rescan is not finished
    assert (await one.commit("replay", 1, [track(1)], rescan=True)).enqueued == 1
    assert (await one.commit("replay", 1, [track(1)], rescan=True)).enqueued == 0
    assert [j["operation"] for j in await one.jobs(track(1).uri)] == ["create", "rescan"]


# -- leases (as tests/test_roles.py's first two tests, on both backends) ---------------------------
async def test_a_live_workers_job_is_never_taken_and_a_dead_ones_is_after_its_lease(open_ingest):
    one, two = await open_ingest(), await open_ingest()
    await enqueue(one, 1, 2, 3)
    held = await one.claim(2, worker="scan-1", lease=0.5)
    assert [j.attempts for j in held] == [1, 1]
    assert held[0].record == track(1).record and held[0].current_cid == "bafy1" and not held[0].deleted
    rest = await two.claim(5, worker="scan-2", lease=60)
    assert [j.uri for j in rest] == [track(3).uri]  # scan-1's two jobs are not offered while its lease runs
    assert await one.renew([j.id for j in held], worker="scan-1", lease=0.5) == 0
    await anyio.sleep(0.6)  # scan-1 stopped renewing: it died or hung
    taken = await two.claim(5, worker="scan-2", lease=60)
    assert [j.id for j in taken] == [j.id for j in held] and [j.attempts for j in taken] == [2, 2]
    # scan-1 wakes up: its renewal reports the jobs another worker holds now
    assert await one.renew([j.id for j in held], worker="scan-1", lease=0.5) == 2


async def test_a_restarted_worker_takes_back_its_own_jobs_at_once_and_leaves_the_others(open_ingest):
    store = await open_ingest()
    await enqueue(store, 1, 2)
    mine, theirs = await store.claim(1, worker="scan-1", lease=300), await store.claim(1, worker="scan-2", lease=300)
    assert await store.requeue_running("scan-1") == 1  # scan-1 restarted: its job is pending again
    assert [j.id for j in await store.claim(5, worker="scan-1", lease=300)] == [mine[0].id]
    assert theirs[0].id not in [j["id"] for j in await store.jobs(theirs[0].uri) if j["state"] == "pending"]
    assert await store.requeue_running() == 2  # `--role all`, the only scan process: every running job


async def test_requeue_takes_back_expired_leases_of_other_workers(open_ingest):
    store = await open_ingest()
    await enqueue(store, 1, 2)
    await store.claim(1, worker="scan-2", lease=0.1)  # scan-2 died
    await store.claim(1, worker="scan-3", lease=300)  # scan-3 is alive
    await anyio.sleep(0.2)
    assert await store.requeue_running("scan-1") == 1
    assert (await store.job_counts())["running"] == 1


async def test_concurrent_claims_from_two_stores_never_share_a_job(open_ingest):
    one, two = await open_ingest(), await open_ingest()
    await enqueue(one, *range(1, 41))
    got: dict[str, list[int]] = {"scan-1": [], "scan-2": []}

    async def drain(store, worker: str) -> None:
        while jobs := await store.claim(3, worker=worker, lease=60):
            got[worker] += [j.id for j in jobs]

    async with anyio.create_task_group() as tg:
        tg.start_soon(drain, one, "scan-1")
        tg.start_soon(drain, two, "scan-2")
    ids = got["scan-1"] + got["scan-2"]
    assert len(ids) == len(set(ids)) == 40


async def test_counts_follow_each_jobs_state(open_ingest):
    store = await open_ingest()
    await enqueue(store, 1, 2, 3, 4)
    a, b, c = await store.claim(3, worker="scan-1", lease=60)
    await store.finish(a.id)
    await store.retry_later(b.id, "boom " * 1000, 0, give_up=True)
    await store.retry_later(c.id, "later", 3600)
    assert await store.counts() == {"pending": 2, "running": 0, "done": 1, "failed": 1, "dead_letters": 0,
                                    "tracks": 4}
    assert [j.uri for j in await store.claim(5, worker="scan-1", lease=60)] == [track(4).uri]  # c is not due
    failed = (await store.jobs(b.uri))[0]
    assert failed["state"] == "failed" and len(failed["error"]) == 2000


async def test_rescan_progress_is_saved_and_read_back(open_ingest):
    store = await open_ingest()
    assert await store.rescan_state("k") is None
    await store.save_rescan("k", "at://x", 3, 1, finished=False)
    await store.save_rescan("k", "at://y", 5, 2, finished=True)
    assert await store.rescan_state("k") == {"last_uri": "at://y", "checked": 5, "changed": 2, "finished": 1}


# -- reactivation ----------------------------------------------------------------------------------
@pytest.fixture
async def record_decisions(backend, tmp_path, request):
    """Writes decision rows where the backend keeps them (the ingest store opened first migrates)."""
    closing = []

    async def record(rows: list[DecisionRow]) -> None:
        if backend == "postgres":
            conn = await asyncpg.connect(request.getfixturevalue("pg_url"))
            try:
                async with conn.transaction():
                    await PgDecisionWriter(conn).write(rows)
            finally:
                await conn.close()
        else:
            store = await DecisionStore.open(tmp_path / "db.sqlite3")
            closing.append(store)
            await store.record(rows)

    yield record
    for store in closing:
        await store.close()


def unavailable() -> Finding:
    return Finding("copyright", MEDIA_UNAVAILABLE, 1.0, {"media": "audio", "status": 400, "error": "RepoDeactivated"})


async def test_a_reactivated_account_rescans_the_tracks_whose_media_was_unavailable(open_ingest, record_decisions):
    store = await open_ingest()
    await store.commit("jetstream", 1, [track(1), track(2), track(3)])
    for job in await store.claim(10):
        await store.finish(job.id)
    await record_decisions([
        DecisionRow(track(1).uri, "bafy1", "none", None, "policy", evidence=[unavailable()]),
        DecisionRow(track(2).uri, "bafy2", "none", None, "policy",
                    evidence=[Finding("text", "text", 0.5, {"matched": "media-unavailable"})]),
        DecisionRow(track(3).uri, "bafy3", "none", None, "policy", evidence=[]),
    ])
    deactivated = RepoEvent(DID, "account", 2, False, "deactivated", None, "jetstream")
    active = RepoEvent(DID, "account", 3, True, None, None, "jetstream")
    assert (await store.commit("jetstream", 2, [deactivated])).enqueued == 0
    assert (await store.commit("jetstream", 3, [active])).enqueued == 1
    assert [j["operation"] for j in await store.jobs(track(1).uri)] == ["create", "rescan"]
    assert [j["operation"] for j in await store.jobs(track(2).uri)] == ["create"]
    # the same event again (a replay) is known: nothing more
    assert (await store.commit("jetstream", 3, [active])).duplicates == 1
