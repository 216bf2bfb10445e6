"""One source contract: Jetstream and the relay firehose share the loop, the names and the nets."""

from __future__ import annotations

import socket
import tempfile
from dataclasses import fields, replace
from pathlib import Path

import anyio
import pytest
from structlog.testing import capture_logs

from firehose_mod.daemon import _ingest_status
from firehose_mod.events import DeadLetter
from firehose_mod.ingest import firehose, jetstream
from firehose_mod.ingest.filters import Collections
from firehose_mod.ingest.firehose import FirehoseSource
from firehose_mod.ingest.jetstream import JetstreamSource
from firehose_mod.ingest.metrics import IngestCollector
from firehose_mod.ingest.pipeline import IngestPipeline
from firehose_mod.ingest.reconnect import Backoff
from firehose_mod.ingest.source import SourceStats, WebSocketSource
from firehose_mod.roles import parse_role
from firehose_mod.store.source_lock import SourceLock
from firehose_mod.store import db
from firehose_mod.store.ingest import IngestStore

from tests.fakes.ingest import collect, run_until
from tests.fakes.jetstream import T0, FakeJetstream, Faults, commit, track_record
from tests.fakes.relay import FakeRelay, commit_frame

pytestmark = pytest.mark.anyio
TRACKS = Collections.parse(["fm.plyr.track"])
DID = "did:plc:uploader"


def refused_url() -> str:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        return f"ws://127.0.0.1:{s.getsockname()[1]}"


def make(kind: str, *endpoints: str, **kw) -> WebSocketSource:
    options = {"backoff": Backoff(base=0.01, cap=0.02), "open_timeout": 2.0, **kw}
    if kind == "jetstream":
        return JetstreamSource(list(endpoints), TRACKS, **options)
    return FirehoseSource(list(endpoints), TRACKS, **options)


def relay_commits(seqs, rkey=lambda s: f"3k{s:04d}") -> list[bytes]:
    return [commit_frame(s, DID, f"rev{s}", [("create", "fm.plyr.track", rkey(s), track_record(f"t{s}"))])
            for s in seqs]


def jetstream_commits(seqs, rkey=lambda s: f"3k{s:04d}") -> list[dict]:
    return [commit(T0 + s, DID, "fm.plyr.track", rkey(s), "create", track_record(f"t{s}")) for s in seqs]


class Upstream:
    """A local Jetstream or relay serving three track commits (cursors 1, 2, 3 past T0 for Jetstream)."""

    def __init__(self, kind: str, rkey=lambda s: f"3k{s:04d}"):
        self.kind = kind
        self.rkey = rkey

    async def __aenter__(self) -> Upstream:
        if self.kind == "firehose":
            self._relay = FakeRelay(relay_commits([1, 2, 3], self.rkey))
            await self._relay.__aenter__()
            self.url = self._relay.url
            return self
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        fake = FakeJetstream(jetstream_commits([1, 2, 3], self.rkey))
        await self._tg.start(fake.serve)
        self.url = fake.url
        return self

    async def __aexit__(self, *exc) -> None:
        if self.kind == "firehose":
            await self._relay.__aexit__(*exc)
        else:
            self._tg.cancel_scope.cancel()
            await self._tg.__aexit__(None, None, None)

    @property
    def start(self) -> int | None:
        """The cursor that replays everything (a relay without a cursor sends live frames only)."""
        return 0 if self.kind == "firehose" else None


KINDS = ["jetstream", "firehose"]


@pytest.mark.parametrize("kind", KINDS)
async def test_every_source_fails_over_with_the_same_log_events_and_typed_stats(kind):
    async with Upstream(kind) as up:
        source = make(kind, refused_url(), up.url)
        with capture_logs() as logs:
            got = await collect(source, up.start, lambda r: sum(len(d.events) for d in r) == 3)
    assert isinstance(source.stats, SourceStats)
    assert source.stats.reconnects == 1 and source.stats.events == 3 and source.endpoint == source.endpoints[1]
    (reconnecting,) = [e for e in logs if e["event"] == "ingest.reconnecting"]
    assert reconnecting["source"] == kind and reconnecting["reason"].startswith("connect failed")
    assert reconnecting["next_endpoint"] == source.endpoints[1]
    (connected,) = [e for e in logs if e["event"] == "ingest.connected"]
    assert (connected["source"], connected["endpoint"]) == (kind, source.endpoints[1])
    assert len(got) == 3


@pytest.mark.parametrize("kind", KINDS)
async def test_an_exception_while_decoding_is_that_frames_dead_letter_in_every_source(kind, monkeypatch):
    module, name = (jetstream, "decode_jetstream") if kind == "jetstream" else (firehose, "decode_firehose_frame")
    real = getattr(module, name)
    calls = 0

    def second_frame_explodes(*args, **kw):
        nonlocal calls
        calls += 1
        if calls == 2:
            raise RecursionError("maximum recursion depth exceeded")
        return real(*args, **kw)

    monkeypatch.setattr(module, name, second_frame_explodes)
    async with Upstream(kind) as up:
        source = make(kind, up.url)
        got = await collect(source, up.start, lambda r: len(r) == 3)
    assert [len(d.events) for d in got] == [1, 0, 1]
    (dead,) = got[1].dead
    assert (dead.reason, dead.source) == ("undecodable", kind) and "RecursionError" in dead.detail
    assert source.stats.dead == 1 and source.stats.reconnects == 0


@pytest.mark.parametrize("kind", KINDS)
async def test_every_decoder_checks_record_keys_with_the_atproto_rules(kind):
    async with Upstream(kind, rkey=lambda s: ".." if s == 2 else f"3k{s:04d}") as up:  # ".." is never a key
        got = await collect(make(kind, up.url), up.start, lambda r: len(r) == 3)
    assert [len(d.events) for d in got] == [1, 0, 1]
    assert [d.reason for d in got[1].dead] == ["malformed_event"] and "invalid rkey" in got[1].dead[0].detail


class _Pipeline:
    stats = {"commits": 0, "enqueued": 0, "duplicates": 0}
    committed_cursor = 7


class _Workers:
    stats = {"done": 0, "retried": 0, "failed": 0}


class _Store:
    async def cursor(self, name):
        return 7

    async def counts(self):
        return {}


@pytest.mark.parametrize("kind", KINDS)
async def test_metrics_and_status_read_every_source_the_same_way(kind):
    source = make(kind, "ws://127.0.0.1:1", "ws://127.0.0.1:2")
    source.stats.frames = 5
    names = [m.name for m in IngestCollector(source, _Pipeline(), _Workers()).collect()]
    assert [n for n in names if n.removeprefix("firehose_mod_ingest_") in {f.name for f in fields(SourceStats)}] == [
        f"firehose_mod_ingest_{f.name}" for f in fields(SourceStats)]
    lock = SourceLock(Path(tempfile.mkdtemp()) / "db.sqlite3", holder="ingest")
    status = (await _ingest_status(_Store(), source, _Workers(), parse_role("ingest"), lock))["ingest"]
    assert status["leader"] is False  # not holding the source lock
    assert status["endpoint"] == source.endpoints[0] and status["stats"]["frames"] == 5
    assert set(status["stats"]) == {f.name for f in fields(SourceStats)}


async def test_an_exact_start_is_not_rewound_but_a_reconnect_is():
    fake = FakeJetstream(jetstream_commits(range(1, 7)), faults=Faults(drop_after=3))
    async with anyio.create_task_group() as tg:
        await tg.start(fake.serve)
        source = JetstreamSource([fake.url], TRACKS, rewind=2, backoff=Backoff(base=0.01, cap=0.02))
        await collect(source, T0 + 2, lambda r: T0 + 6 in [d.cursor for d in r], exact_start=True)
        tg.cancel_scope.cancel()
    assert f"cursor={T0 + 2}" in fake.connections[0]  # where the operator aimed
    assert f"cursor={T0 + 4 - 2}" in fake.connections[1]  # the last cursor seen, rewound


async def test_the_resume_rewind_keeps_a_rejected_event_once(settings):
    events = jetstream_commits(range(1, 7))
    events[1] = commit(T0 + 2, DID, "fm.plyr.track", "3kbad", "create", track_record("x" * 300))  # breaks the lexicon
    fake = FakeJetstream(events, faults=Faults(drop_after=4))
    store = await IngestStore.open(settings.db_path)
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(fake.serve)
            source = JetstreamSource([fake.url], TRACKS, backoff=Backoff(base=0.01, cap=0.02))  # rewinds 5 s
            pipeline = IngestPipeline(store, source.name, max_delay=0.05)

            async def all_read_twice():
                return len(fake.connections) == 2 and source.cursor == T0 + 6 and pipeline.committed_cursor == T0 + 6

            await run_until(source, pipeline, None, all_read_twice)
            tg.cancel_scope.cancel()
        letters = await store.dead_letters()
    finally:
        await store.close()
    assert "cursor=" in fake.connections[1] and source.stats.dead == 2  # read twice, as the rewind wants
    assert [(d["reason"], d["uri"]) for d in letters] == [("lexicon", f"at://{DID}/fm.plyr.track/3kbad")]
    assert pipeline.stats["dead_letters"] == 1


async def test_a_dead_letter_is_kept_once_whoever_reads_it_again(settings):
    letter = DeadLetter("lexicon", "title: required", cursor=T0, did=DID, uri=f"at://{DID}/fm.plyr.track/3k",
                        raw=b"{...}", source="jetstream")
    store = await IngestStore.open(settings.db_path)
    try:
        assert (await store.commit("jetstream", T0, [], [letter, letter])).dead == 1
        assert (await store.commit("jetstream-replay", T0, [], [letter])).dead == 0  # a replay reads it again
        assert (await store.commit("jetstream", T0 + 1, [], [replace(letter, cursor=T0 + 1)])).dead == 1
        assert [d["cursor"] for d in await store.dead_letters()] == [T0 + 1, T0]
    finally:
        await store.close()


async def test_letters_kept_before_the_fingerprint_stay_as_they_were(settings, monkeypatch):
    monkeypatch.setattr(db, "MIGRATIONS", db.MIGRATIONS[:7])
    conn = await db.open_db(settings.db_path)
    for _ in range(2):
        await conn.execute("INSERT INTO dead_letters (source, reason, detail, created)"
                           " VALUES ('jetstream', 'x', 'y', 'z')")
    await conn.close()
    monkeypatch.undo()
    store = await IngestStore.open(settings.db_path)  # migrates
    try:
        assert len(await store.dead_letters()) == 2
        letter = DeadLetter("x", "y", source="jetstream")
        assert [(await store.commit("jetstream", None, [], [letter])).dead for _ in range(2)] == [1, 0]
    finally:
        await store.close()
