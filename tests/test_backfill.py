"""Backfill against a real local HTTP network: PLC directory, did:web, relay and PDSes (tests/fakes/pds.py)."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Iterator

import anyio
import httpx
import pytest
from structlog.testing import capture_logs

from firehose_mod.ingest.backfill import BackfillProgress, decode_records_page, run_backfill
from firehose_mod.ingest.resolve import DidResolver, ResolveError
from firehose_mod.store.backfill import BackfillStore
from tests.fakes.jetstream import track_record
from tests.fakes.pds import FakeNetwork, make_records, record_item

pytestmark = pytest.mark.anyio

SMALL = "did:plc:" + "a" * 24  # 2 tracks and one record whose URI names another repo
BIG = "did:plc:" + "b" * 24  # 7 records over 3 pages, one of them invalid
FLAKY = "did:plc:" + "c" * 24  # its PDS answers 500 twice, then recovers
NO_PDS = "did:plc:" + "d" * 24  # DID document without an #atproto_pds service
DOWN = "did:plc:" + "e" * 24  # its PDS refuses connections
GHOST = "did:plc:" + "f" * 24  # listed by the relay, unknown to the PLC directory
WEB = "did:web:frank.test"  # a did:web account on PDS "one"

BIG_RECORDS = make_records(BIG, 6) + [record_item(BIG, 99, {"artist": "No Title", "fileType": "mp3"})]
SMALL_RECORDS = make_records(SMALL, 2, start=10) + [record_item(SMALL, 12, repo_did=BIG)]


def valid_uris(*dids: str) -> set[str]:
    everything = {SMALL: SMALL_RECORDS[:2], BIG: BIG_RECORDS[:6], FLAKY: make_records(FLAKY, 4, 20),
                  WEB: make_records(WEB, 1, 30)}
    return {r["uri"] for did in dids for r in everything.get(did, [])}


@pytest.fixture
def net() -> Iterator[FakeNetwork]:
    net = FakeNetwork(page_size=3, relay_page_size=3)
    net.add_pds("one")
    net.add_pds("flaky", fail_times=2)
    net.add_pds("down", down=True)
    net.add_repo(SMALL, "one", SMALL_RECORDS)
    net.add_repo(BIG, "one", BIG_RECORDS)
    net.add_repo(FLAKY, "flaky", make_records(FLAKY, 4, 20))
    net.add_repo(NO_PDS, None)
    net.add_repo(DOWN, "down", make_records(DOWN, 2, 40))
    net.add_repo(WEB, "one", make_records(WEB, 1, 30))
    net.relay += [GHOST, "not-a-did"]
    with net:
        yield net


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=5) as client:
        yield client


@pytest.fixture
def backfill(settings, net, client):
    """run_backfill wired to the fake network, with fast retries."""

    async def run(**kw):
        resolver = DidResolver(client, net.plc_url, web_base=net.web_base)
        kw.setdefault("relay_url", None if "dids" in kw else net.relay_url)
        return await run_backfill(settings, client=client, resolver=resolver, retry_base=0.01, max_attempts=4, **kw)

    return run


def scan_jobs(settings) -> list[str]:
    with sqlite3.connect(settings.db_path) as db:
        return [r[0] for r in db.execute("SELECT uri FROM scan_jobs ORDER BY id")]


def dead_letters(settings) -> list[tuple[str, str]]:
    with sqlite3.connect(settings.db_path) as db:
        return db.execute("SELECT reason, uri FROM dead_letters WHERE source = 'backfill' ORDER BY id").fetchall()


async def repo_state(settings, did: str):
    store = await BackfillStore.open(settings.db_path)
    try:
        return await store.get(did)
    finally:
        await store.close()


async def test_backfill_queues_every_valid_track_once_and_records_failures(settings, net, backfill):
    seen: list[BackfillProgress] = []
    with capture_logs() as logs:
        report = await backfill(progress=seen.append, concurrency=3)

    jobs = scan_jobs(settings)
    assert sorted(jobs) == sorted(valid_uris(SMALL, BIG, FLAKY, WEB))  # each exactly once
    assert sorted(dead_letters(settings)) == [
        ("lexicon", BIG_RECORDS[6]["uri"]), ("repo_mismatch", SMALL_RECORDS[2]["uri"])]
    assert (report.repos_total, report.repos_done, report.repos_failed, report.repos_pending) == (8, 4, 4, 0)
    assert (report.records_seen, report.enqueued, report.duplicates, report.dead_letters) == (15, 13, 0, 2)
    assert report.invalid_dids == 1 and report.discovery_error is None
    errors = dict(report.failures)
    assert "no #atproto_pds service" in errors[NO_PDS]
    assert "cannot reach" in errors[DOWN] and "ConnectError" in errors[DOWN] and "gave up after 4" in errors[DOWN]
    assert "DID not found" in errors[GHOST]
    assert "bad DID 'not-a-did'" in (await repo_state(settings, "not-a-did")).error
    flaky = await repo_state(settings, FLAKY)
    assert flaky.state == "done" and flaky.records == 4 and net.pdses["flaky"].fail_times == 0
    assert net.count("/pds/flaky/") == 2 + 3  # two 500s, then pages of 3, 1 and an empty one
    down = await repo_state(settings, DOWN)
    assert down.state == "failed" and down.attempts == 1 and down.pds.startswith("http://127.0.0.1:")
    assert seen and seen[-1].repos_done + seen[-1].repos_failed == 8  # the invalid DID was failed on arrival
    assert seen[-1].enqueued == 13
    assert any(e["event"] == "backfill.retry" for e in logs)
    assert any(e["event"] == "backfill.repo_failed" and e["did"] == DOWN for e in logs)


async def test_a_server_without_list_by_collection_is_paged_with_list_repos(settings, net, backfill):
    """A bare PDS (the reference PDS answers 401 AuthMissing to listReposByCollection, which it would
    proxy to an appview; tests/test_reference_pds.py asks the real one) lists every repo it hosts:
    each active one is read, a deactivated one is not, and the tracks are the same as via a relay."""
    net.by_collection = False
    net.inactive.add(DOWN)
    with capture_logs() as logs:
        report = await backfill(concurrency=3)
    assert sorted(scan_jobs(settings)) == sorted(valid_uris(SMALL, BIG, FLAKY, WEB))
    assert report.discovery_error is None and report.invalid_dids == 1
    assert net.count("listReposByCollection") == 1  # a 4xx is not retried
    assert net.count("listRepos") - net.count("listReposByCollection") == 3  # 8 listed, 3 per page
    assert await repo_state(settings, DOWN) is None  # deactivated: not read
    assert any(e["event"] == "backfill.listing_all_repos" for e in logs)


async def test_interrupted_backfill_resumes_from_saved_cursor(settings, net, backfill):
    with anyio.CancelScope() as scope:
        def stop_in_big(p: BackfillProgress) -> None:
            if p.did == BIG:
                scope.cancel()  # after BIG's first page is committed and its cursor saved
        await backfill(progress=stop_in_big, concurrency=1)
    assert scope.cancelled_caught
    big = await repo_state(settings, BIG)
    assert big.state == "pending" and big.records == 3 and big.cursor == BIG_RECORDS[4]["uri"].rsplit("/", 1)[-1]
    assert (await repo_state(settings, SMALL)).state == "done"
    assert len(scan_jobs(settings)) == 2 + 2  # BIG's first page: 2 valid, 1 invalid
    small_reads, big_reads = net.count("/pds/one/", repo=SMALL), net.count("/pds/one/", repo=BIG)
    assert (small_reads, big_reads) == (2, 1)

    report = await backfill(concurrency=1)

    assert net.count("/pds/one/", repo=SMALL) == small_reads  # a finished repo is not read again
    assert net.count("/pds/one/", repo=BIG, cursor=big.cursor) == 1  # resumed where it stopped
    assert net.count("/pds/one/", repo=BIG) == big_reads + 3
    jobs = scan_jobs(settings)
    assert len(jobs) == len(set(jobs)) and set(jobs) == valid_uris(SMALL, BIG, FLAKY, WEB)
    assert (await repo_state(settings, BIG)).records == 7
    assert report.duplicates == 0 and report.repos_done == 4


async def test_did_list_reads_only_those_repos_without_a_relay(settings, net, backfill):
    report = await backfill(dids=[WEB, BIG])
    assert set(scan_jobs(settings)) == valid_uris(WEB, BIG)
    assert net.count("/relay/") == 0 and net.count("/plc/") == 1 and net.count("/web/frank.test/") == 1
    assert (report.repos_total, report.repos_done, report.enqueued, report.dead_letters) == (2, 2, 7, 1)


async def test_did_list_rejects_invalid_dids_before_starting(settings, backfill):
    with pytest.raises(ValueError, match="bad DID 'did:key:zQ3sh'"):
        await backfill(dids=[BIG, "did:key:zQ3sh"])


async def test_second_run_enqueues_nothing_new(settings, net, backfill):
    first = await backfill()
    reads = len(net.requests)
    second = await backfill()  # everything is done or failed: nothing is read again
    assert second.enqueued == 0 and second.records_seen == 0
    assert net.count("/pds/") == sum(1 for path, _ in net.requests[:reads] if "/pds/" in path)
    restarted = await backfill(restart=True)  # read everything again from the start
    assert restarted.enqueued == 0 and restarted.duplicates == first.enqueued == 13
    assert restarted.dead_letters == 0 and len(dead_letters(settings)) == 2  # known bad records: not kept twice
    assert sorted(scan_jobs(settings)) == sorted(valid_uris(SMALL, BIG, FLAKY, WEB))


async def test_retry_failed_reads_repos_that_failed_before(settings, net, backfill):
    await backfill(dids=[NO_PDS, DOWN])
    assert (await repo_state(settings, NO_PDS)).state == "failed"
    net.accounts[NO_PDS].pds = "one"  # the account got its PDS back
    net.pdses["one"].repos[NO_PDS] = make_records(NO_PDS, 2, 50)
    report = await backfill(dids=[NO_PDS, DOWN])  # without the flag, failed repos stay failed
    assert report.records_seen == 0 and report.repos_failed == 2
    report = await backfill(dids=[NO_PDS, DOWN], retry_failed=True)
    assert (report.repos_done, report.repos_failed, report.enqueued) == (1, 1, 2)
    assert (await repo_state(settings, DOWN)).error.startswith("listRecords: cannot reach")


async def test_unreachable_relay_is_reported_and_known_repos_still_read(settings, net, backfill):
    await backfill(dids=[WEB])
    await (store := await BackfillStore.open(settings.db_path)).add_dids([SMALL])
    await store.close()
    net.relay_fail_times = 10
    report = await backfill()
    assert "HTTP 502" in report.discovery_error and "gave up after 4 attempts" in report.discovery_error
    assert (report.repos_done, report.enqueued) == (2, 2)


async def test_resolver_plc_web_cache_and_errors(net, client):
    now = [0.0]
    resolver = DidResolver(client, net.plc_url, ttl=60, web_base=net.web_base, clock=lambda: now[0])
    assert await resolver.resolve_pds(BIG) == f"{net.base}/pds/one"
    assert await resolver.resolve_pds(BIG) == f"{net.base}/pds/one"
    assert await resolver.resolve_pds(WEB) == f"{net.base}/pds/one"
    assert net.count("/plc/") == 1
    now[0] = 61
    await resolver.resolve_pds(BIG)
    assert net.count("/plc/") == 2  # the cached answer expired
    with pytest.raises(ResolveError, match="no #atproto_pds service") as exc:
        await resolver.resolve_pds(NO_PDS)
    assert not exc.value.transient
    with pytest.raises(ResolveError, match="DID not found"):
        await resolver.resolve_pds(GHOST)
    for bad in ("did:plc:UPPER", "did:key:z6Mk", "did:web:host/path", "at://x"):
        with pytest.raises(ResolveError, match="bad DID"):
            await resolver.resolve_pds(bad)


def test_listrecords_page_turns_bad_items_into_dead_letters():
    body = {"cursor": "3k2", "records": [
        record_item(BIG, 1), 5, {"uri": "https://x", "cid": "b", "value": {}},
        {"uri": f"at://{BIG}/fm.plyr.track/3k9", "value": track_record("t")},
        {"uri": f"at://{BIG}/app.bsky.feed.post/3k9", "cid": "b", "value": {}},
    ]}
    page = decode_records_page(BIG, body)
    assert page.cursor == "3k2" and page.count == 5 and len(page.events) == 1
    assert page.events[0].rev == "" and page.events[0].source == "backfill" and page.events[0].operation == "create"
    assert [d.reason for d in page.dead] == ["malformed_record"] * 4
    assert "without a cid" in page.dead[2].detail


async def test_progress_callback_raising_stops_the_run_and_keeps_progress(settings, net, backfill):
    class Stop(Exception):
        pass

    def stop(p: BackfillProgress) -> None:
        if p.did == BIG:
            raise Stop

    with pytest.raises(Stop):
        await backfill(progress=stop, concurrency=2)
    assert (await repo_state(settings, BIG)).cursor is not None
    report = await backfill()
    jobs = scan_jobs(settings)
    assert len(jobs) == len(set(jobs)) and set(jobs) == valid_uris(SMALL, BIG, FLAKY, WEB)
    assert report.repos_pending == 0  # (a page cut mid-commit may be re-read: counted as duplicates)
