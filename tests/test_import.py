"""`firehose-mod import`: another labeler's labels become ours, over real HTTP and WebSockets.

Two sources: `tests/fakes/plyr_labeler.py`, which answers as plyr.fm's labeler does (every historical
row from queryLabels, LIKE semantics for `*`, JSON text frames on the stream, 1000 rows per
connection, `sig` as an array of bytes), and a second instance of our own server (spec-correct:
queryLabels answers the current state, subscribeLabels binary DAG-CBOR frames). Labels are signed by
the sources' own keys, whose DID documents a fake PLC directory serves.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

import anyio
import libipld
import pytest
from atproto import (
    AsyncFirehoseSubscribeLabelsClient,
    models,
    parse_subscribe_labels_message,
)
from atproto_crypto.verify import verify_signature

from firehose_mod.config import load_settings
from firehose_mod.daemon import open_label_log, run_server
from firehose_mod.labels.model import Label, parse_datetime
from firehose_mod.labels.signing import SigningKey, verify_label
from firehose_mod.ops.import_labels import (
    SourceError,
    parse_label,
    run_import,
    seq_floor_advice,
)
from firehose_mod.store.label_import import ImportStore
from tests.conftest import uri
from tests.fakes.plyr_labeler import FakePlyrLabeler, pg_timestamp
from tests.procs import env_for

pytestmark = pytest.mark.anyio

PLYR = "did:plc:" + "p" * 24  # plyr.fm's labeler
OTHER = "did:plc:" + "o" * 24  # another src the same service once signed as
OURS = "did:plc:" + "m" * 24
SPEC = "did:plc:" + "s" * 24  # the spec-correct source (our own server)
CV = "copyright-violation"


def our_settings(tmp_path, fake: FakePlyrLabeler, name: str = "ours"):
    return load_settings(env={}, data_dir=tmp_path / name, port=0, stream_poll_interval=0.05, did=OURS,
                         plc_url=fake.plc_url, media_allow_networks=("127.0.0.1/32",))


@pytest.fixture
async def fake() -> AsyncIterator[FakePlyrLabeler]:
    async with FakePlyrLabeler(PLYR, SigningKey.generate()) as f:
        other = SigningKey.generate()
        f.keys[OTHER], f.docs[OTHER] = other, other.did_key
        yield f


def plyr_history(f: FakePlyrLabeler) -> None:
    """What plyr.fm's table holds: repeats, negations of nothing, re-labels after a negation, a
    negation created before the label it follows in seq, URIs with LIKE wildcards, an invalid value."""
    u = uri
    f.emit(u(1), CV)
    f.emit(u(2), CV, neg=True)  # a negation of nothing: plyr.fm stores it anyway
    f.emit(u(1), CV)  # a repeat of a label in force
    f.emit(u(3), "sexual")
    f.emit(u(1), CV, neg=True)  # the later negation wins
    f.emit(u(4), CV, cid="bafyreie5737gdxlw5i64vzichcalba3z2v5n6icifvx5xytvske7mr3hpm")
    f.emit(u(3), "sexual", neg=True)
    f.emit(u(2), CV)
    f.emit(u(3), "sexual")  # re-applied after its negation (their state is event-sourced)
    f.emit("at://did:plc:uploader/fm.plyr.track/3k_under_score", CV)
    f.emit("at://did:plc:uploader/fm.plyr.track/3k%25pct", CV)
    f.emit("at://did:plc:uploader/fm.plyr.track/3k_under_score", CV, neg=True)
    f.emit(u(5), "BadValue")  # not a value apps show: refused here, and said so
    f.emit(u(6), CV, src=OTHER)  # another src: not imported with --did
    # u7: the negation was created after the label but stored before it (two requests racing):
    # by seq the label is last, by cts the negation is.
    t = f.clock + timedelta(seconds=5)
    f.emit(u(7), CV, neg=True, cts=t + timedelta(milliseconds=10))
    f.emit(u(7), CV, cts=t)
    f.clock = t + timedelta(seconds=1)
    for n in range(100, 121):  # enough for several pages
        f.emit(u(n), CV)
    f.emit(u(100), CV, neg=True, seq_gap=40)  # BIGSERIAL gaps: the head is not the row count


def by_cts(rows) -> list:
    return sorted(rows, key=lambda r: (r.cts, r.seq))


def expected_state(f: FakePlyrLabeler, src: str = PLYR) -> dict[tuple[str, str], bool]:
    last: dict[tuple[str, str], bool] = {}
    for r in by_cts(r for r in f.rows if r.src == src and r.val != "BadValue"):
        last[(r.uri, r.val)] = not r.neg
    return last


def expected_written(f: FakePlyrLabeler, src: str = PLYR) -> int:
    """How many labels a faithful replay writes: a negation only for a label in force, no repeats."""
    state: dict[tuple[str, str], bool] = {}
    n = 0
    for r in by_cts(r for r in f.rows if r.src == src and r.val != "BadValue"):
        in_force = state.get((r.uri, r.val), False)
        if r.neg == in_force:  # a negation of a label in force, or a label not in force
            n += 1
            state[(r.uri, r.val)] = not r.neg
    return n


def our_labels(settings) -> list[dict]:
    with sqlite3.connect(settings.db_path) as db:
        db.row_factory = sqlite3.Row
        return [dict(r) for r in db.execute("SELECT * FROM labels ORDER BY seq")]


def our_state(settings) -> dict[tuple[str, str], bool]:
    with sqlite3.connect(settings.db_path) as db:
        return {(u, v): not neg for u, v, neg in db.execute(
            "SELECT s.uri, s.val, l.neg FROM label_state s JOIN labels l ON l.seq = s.seq WHERE s.src = ?", (OURS,))}


def decisions(settings) -> list[dict]:
    with sqlite3.connect(settings.db_path) as db:
        db.row_factory = sqlite3.Row
        return [dict(r) for r in db.execute("SELECT * FROM decisions ORDER BY id")]


@asynccontextmanager
async def ours(settings):
    async with open_label_log(settings) as label_log:
        store = await ImportStore.open(settings.db_path)
        try:
            yield label_log, store
        finally:
            await store.close()


async def do_import(settings, source: str, **kw):
    for k, v in {"retries": 1, "retry_base": 0.01, "idle": 0.3, "limit": 7}.items():
        kw.setdefault(k, v)
    async with ours(settings) as (label_log, store):
        return await run_import(settings, label_log, store, source, **kw)


def assert_no_duplicates(labels: list[dict]) -> None:
    keys = [(r["uri"], r["val"], r["neg"], r["cts"]) for r in labels]
    assert len(keys) == len(set(keys))


# ----------------------------------------------------------------------------- plyr.fm, queryLabels

async def test_plyr_history_imports_as_their_final_state_with_their_cts_re_signed_by_us(tmp_path, fake):
    plyr_history(fake)
    settings = our_settings(tmp_path, fake)
    report = await do_import(settings, fake.url + "/", did=PLYR)

    # Every request asked for everything of their src, the way both readings of `*` agree on.
    assert all(p["uriPatterns"] == "*" and p["sources"] == PLYR and p["limit"] == "7" for p in fake.query_params)
    assert report.pages == len(fake.query_params) > 3
    plyr_rows = [r for r in fake.rows if r.src == PLYR]
    assert report.read == report.stored == len(plyr_rows) and report.malformed == 0

    # The state here is their last word on each (uri, val), by cts: the later negation wins.
    state = our_state(settings)
    assert {k: v for k, v in state.items()} == expected_state(fake)
    assert state[(uri(1), CV)] is False and state[(uri(2), CV)] is True and state[(uri(3), "sexual")] is True
    assert state[("at://did:plc:uploader/fm.plyr.track/3k_under_score", CV)] is False
    assert state[("at://did:plc:uploader/fm.plyr.track/3k%25pct", CV)] is True
    assert state[(uri(7), CV)] is False  # by cts; by their seq it would be in force
    assert report.order_disagreements == 1 and report.disagreement_examples[0]["uri"] == uri(7)
    assert (uri(6), CV) not in state and (uri(5), "BadValue") not in state
    assert report.invalid == 1 and "BadValue" in report.invalid_examples[0]["val"]
    assert report.state_differs == 1 and report.state_examples[0]["val"] == "BadValue"

    # Each label: ours (src, key, signature), their cts kept exactly as they serve it.
    labels = our_labels(settings)
    assert len(labels) == report.written == expected_written(fake)
    assert_no_duplicates(labels)
    async with open_label_log(settings) as label_log:
        our_key = label_log.key.did_key
    their_cts = {(r.uri, r.val, r.neg): set() for r in plyr_rows}
    for r in plyr_rows:
        their_cts[(r.uri, r.val, r.neg)].add(pg_timestamp(r.cts))
    for row in labels:
        assert row["src"] == OURS and row["key_id"] == our_key
        assert row["cts"] in their_cts[(row["uri"], row["val"], bool(row["neg"]))]
        label = Label.from_wire(libipld.decode_dag_cbor(row["cbor"]))
        assert verify_label(our_key, label)
    # Theirs were checked against the key in their DID document.
    assert report.keys[PLYR] == fake.key.did_key
    assert report.verified == len(plyr_rows) and report.failed == report.unchecked == 0

    # Every label has a decision saying where it came from.
    rows = {d["label_seq"]: d for d in decisions(settings)}
    assert set(rows) == {r["seq"] for r in labels}
    note = f"imported from {fake.url} (src {PLYR}, their cts kept, re-signed by {our_key})"
    assert all(d["origin"] == "import" and d["reason"].startswith(note) for d in rows.values())
    assert all("their signature verified with " + fake.key.did_key in d["reason"] for d in rows.values())

    # The seq floor: above the head they gave out (gaps included), with room to spare.
    assert report.source_head == fake.seq and report.source_head_exact
    assert report.seq_floor == 2000 and report.seq_floor > fake.seq
    assert "firehose-mod label seq-floor 2000" in report.seq_floor_advice
    async with open_label_log(settings) as label_log:
        await label_log.raise_seq_floor(report.seq_floor)
        stored = await label_log.emit(uri(900), "porn")
    assert stored.seq == report.seq_floor + 1

    # A second run reads from where the first stopped and writes nothing.
    before, n_decisions = our_labels(settings), len(decisions(settings))
    again = await do_import(settings, fake.url, did=PLYR)
    assert again.written == 0 and again.new == 0 and again.resumed_from is not None
    assert our_labels(settings) == before and len(decisions(settings)) == n_decisions


async def test_the_atproto_sdk_subscriber_verifies_every_imported_label_with_our_key(tmp_path, fake):
    plyr_history(fake)
    settings = our_settings(tmp_path, fake)
    report = await do_import(settings, fake.url, did=PLYR)
    source_cts = {pg_timestamp(r.cts) for r in fake.rows}
    async with open_label_log(settings) as label_log, anyio.create_task_group() as tg:
        server = await tg.start(run_server, settings, label_log)
        did_key = label_log.key.did_key
        client = AsyncFirehoseSubscribeLabelsClient(params={"cursor": 0},
                                                    base_uri=f"ws://127.0.0.1:{server.port}/xrpc")
        got: list[tuple[str, str, bool]] = []

        async def on_message(frame) -> None:
            msg = parse_subscribe_labels_message(frame)
            assert isinstance(msg, models.ComAtprotoLabelSubscribeLabels.Labels)
            for label in msg.labels:
                unsigned = label.model_dump(exclude_none=True, by_alias=True)
                unsigned.pop("sig"), unsigned.pop("$type", None)
                got.append((label.src, label.cts, verify_signature(did_key, libipld.encode_dag_cbor(unsigned), label.sig)))
            if len(got) == report.written:
                asyncio.get_running_loop().create_task(client.stop())

        with anyio.fail_after(20):
            await client.start(on_message)
        tg.cancel_scope.cancel()
    assert len(got) == report.written
    assert all(src == OURS and ok and cts in source_cts for src, cts, ok in got)


async def test_without_did_every_src_is_imported_and_the_keys_of_each_are_checked(tmp_path, fake):
    plyr_history(fake)
    settings = our_settings(tmp_path, fake)
    report = await do_import(settings, fake.url)
    assert report.srcs == {PLYR: len(fake.rows) - 1, OTHER: 1}
    assert report.keys == {PLYR: fake.key.did_key, OTHER: fake.docs[OTHER]}
    assert report.verified == len(fake.rows)
    assert our_state(settings)[(uri(6), CV)] is True


async def test_a_source_failing_midway_resumes_where_it_stopped_without_duplicates(tmp_path, fake):
    plyr_history(fake)
    settings = our_settings(tmp_path, fake)
    fake.fail_after_pages = 2
    with pytest.raises(SourceError, match="HTTP 500"):
        await do_import(settings, fake.url, did=PLYR)
    assert our_labels(settings) == []  # nothing is applied before the source is read to its end
    async with ours(settings) as (_log, store):
        run = await store.get(1)
    assert run.pages == 2 and run.rows == 14 and run.state == "fetching"
    assert run.cursor == str([r for r in fake.rows if r.src == PLYR][13].seq)  # after the second page of 7

    fake.fail_after_pages = None
    asked = len(fake.query_params)
    report = await do_import(settings, fake.url, did=PLYR)
    assert fake.query_params[asked]["cursor"] == run.cursor  # resumed, not restarted
    assert report.resumed_from == run.cursor
    labels = our_labels(settings)
    assert_no_duplicates(labels)
    assert len(labels) == expected_written(fake)
    assert our_state(settings) == expected_state(fake)
    async with ours(settings) as (_log, store):
        assert (await store.get(1)).rows == len([r for r in fake.rows if r.src == PLYR])

    # --restart reads everything again and still writes nothing twice.
    again = await do_import(settings, fake.url, did=PLYR, restart=True)
    assert again.resumed_from is None and again.read == len(fake.rows) - 1 and again.new == 0
    assert again.written == 0 and our_labels(settings) == labels


async def test_an_imported_label_older_than_our_own_decision_does_not_override_it(tmp_path, fake):
    plyr_history(fake)  # u1 ends negated there, long ago
    settings = our_settings(tmp_path, fake)
    async with open_label_log(settings) as label_log:
        await label_log.emit(uri(1), CV)  # our scanner labelled it since
    report = await do_import(settings, fake.url, did=PLYR)
    assert our_state(settings)[(uri(1), CV)] is True
    assert {"uri": uri(1), "val": CV, "source": False, "ours": True} in report.state_examples


# ----------------------------------------------------------------------------- plyr.fm, subscribeLabels

async def test_plyr_stream_of_json_text_frames_is_read_to_the_end_across_its_backlog_limit(tmp_path, fake):
    plyr_history(fake)
    fake.backlog = 5  # plyr.fm: 1000 stored rows per connection, then live only
    settings = our_settings(tmp_path, fake)
    report = await do_import(settings, fake.url, stream=True)
    assert report.read == report.stored == len(fake.rows)
    assert len(fake.subscribe_cursors) >= len(fake.rows) // 5 + 1
    assert fake.subscribe_cursors[0] == "0" and fake.subscribe_cursors[1] == str(fake.rows[4].seq)
    assert report.source_head == fake.seq and report.source_head_exact
    assert report.verified == len(fake.rows)
    state = our_state(settings)
    assert {k: v for k, v in state.items() if k != (uri(6), CV)} == expected_state(fake)
    assert report.order_disagreements == 1

    again = await do_import(settings, fake.url, stream=True)
    assert again.resumed_from == str(fake.seq) and again.read == 0 and again.written == 0


# ----------------------------------------------------------------------------- a spec-correct source

@asynccontextmanager
async def spec_source(tmp_path, fake: FakePlyrLabeler):
    """A second instance of our own server as the source, its DID document in the fake PLC."""
    src_settings = load_settings(env={}, data_dir=tmp_path / "source", port=0, stream_poll_interval=0.05, did=SPEC)
    async with open_label_log(src_settings) as log, anyio.create_task_group() as tg:
        fake.docs[SPEC] = log.key.did_key
        for i in range(12):
            await log.emit(uri(i), "porn")
        await log.emit(uri(1), "porn", neg=True)
        await log.emit(uri(2), "sexual")
        await log.emit(uri(3), "porn", neg=True)
        await log.emit(uri(3), "porn")  # back in force
        await log.emit(uri(4), "porn", neg=True)
        server = await tg.start(run_server, src_settings, log)
        yield log, f"http://127.0.0.1:{server.port}"
        tg.cancel_scope.cancel()


async def test_a_spec_correct_source_by_query_gives_its_current_state(tmp_path, fake):
    settings = our_settings(tmp_path, fake)
    async with spec_source(tmp_path, fake) as (src_log, base):
        report = await do_import(settings, base, did=SPEC)
        history = {u: await src_log.history(u) for u in {uri(i) for i in range(12)}}
        head = await src_log.head()
    # queryLabels answers the current label of each (uri, val): one per pair, negations included
    assert report.read == report.stored == 13
    assert report.verified == 13 and report.keys == {SPEC: fake.docs[SPEC]}
    expected = {}
    for u, rows in history.items():
        for s in rows:
            expected[(u, s.label.val)] = not s.label.neg
    # a current negation is a negation of nothing here: nothing to write, and nothing in force
    assert our_state(settings) == {k: True for k, v in expected.items() if v}
    assert report.state_differs == 0
    assert report.source_head == head and report.source_head_exact  # read from its stream after the last cursor


async def test_a_spec_correct_source_by_stream_gives_its_whole_history_in_cbor_frames(tmp_path, fake):
    settings = our_settings(tmp_path, fake)
    async with spec_source(tmp_path, fake) as (src_log, base):
        report = await do_import(settings, base, stream=True)
        theirs = await src_log.read_after(0, 1000)
    assert report.read == len(theirs) == 17 and report.verified == 17
    labels = our_labels(settings)
    # their log only holds changes, so each of their labels is one of ours, in order, cts kept
    assert [(r["uri"], r["val"], bool(r["neg"]), r["cts"]) for r in labels] == [
        (s.label.uri, s.label.val, s.label.neg, s.label.cts) for s in theirs]
    assert report.source_head == theirs[-1].seq
    assert report.seq_floor == 2000


# ----------------------------------------------------------------------------- the command

async def test_the_command_killed_mid_way_resumes_and_prints_json_and_the_seq_floor(tmp_path, fake):
    plyr_history(fake)
    fake.page_delay = 0.15
    data = tmp_path / "cli"
    env = env_for(data, FIREHOSE_MOD_DID=OURS, FIREHOSE_MOD_PLC_URL=fake.plc_url,
                  FIREHOSE_MOD_MEDIA_ALLOW_NETWORKS="127.0.0.1/32")
    cmd = [sys.executable, "-m", "firehose_mod", "import", "--from", fake.url, "--did", PLYR, "--limit", "3"]
    log = (tmp_path / "stderr").open("wb")
    proc = await anyio.open_process(cmd, env=env, stdout=log, stderr=log)
    with anyio.fail_after(20):
        while fake.pages_served < 5:  # the page after the one being stored is read meanwhile
            assert proc.returncode is None, (tmp_path / "stderr").read_text()
            await anyio.sleep(0.02)
    proc.kill()
    await proc.wait()
    plyr_rows = [r for r in fake.rows if r.src == PLYR]
    settings = load_settings(env={}, data_dir=data, did=OURS)
    with sqlite3.connect(settings.db_path) as db:
        saved, pages = db.execute("SELECT cursor, pages FROM label_imports").fetchone()
    assert pages >= 3 and saved == str(plyr_rows[3 * pages - 1].seq) and our_labels(settings) == []

    asked = len(fake.query_params)
    fake.page_delay = 0
    with anyio.fail_after(30):
        done = await anyio.run_process([*cmd, "--json"], env=env, check=False)
    assert done.returncode == 0, done.stderr.decode()
    assert fake.query_params[asked]["cursor"] == saved
    summary = json.loads(done.stdout)
    assert summary["written"] == expected_written(fake) and summary["resumed_from"] == saved
    assert summary["seq_floor"] == 2000 and summary["source_head"] == fake.seq
    err = done.stderr.decode()
    assert "firehose-mod label seq-floor 2000" in err and "labels (" in err  # the advice, and progress with a rate
    labels = our_labels(settings)
    assert_no_duplicates(labels)
    assert our_state(settings) == expected_state(fake)

    again = await anyio.run_process([*cmd, "--json"], env=env, check=False)
    assert json.loads(again.stdout)["written"] == 0 and our_labels(settings) == labels


# ----------------------------------------------------------------------------- pieces

@pytest.mark.parametrize("sig", [
    lambda b: list(b),  # plyr.fm: serde_bytes through serde_json
    lambda b: {"$bytes": __import__("base64").b64encode(b).decode().rstrip("=")},  # the lexicon's JSON
    lambda b: b,  # CBOR
])
async def test_signatures_are_read_in_every_shape_sources_send(sig):
    key = SigningKey.generate()
    label = key.sign(Label(src=PLYR, uri=uri(1), val=CV, cts="2026-03-01T12:00:00.123Z"))
    d = {"ver": 1, "src": PLYR, "uri": uri(1), "val": CV, "cts": "2026-03-01T12:00:00.123Z", "sig": sig(label.sig)}
    assert verify_label(key.did_key, parse_label(d))


def test_the_seq_floor_clears_the_head_with_a_margin_rounded_to_a_thousand():
    from firehose_mod.ops.import_labels import ImportReport

    def advise(head, ours=0, exact=True):
        r = ImportReport("https://x", "query", None, source_head=head, source_head_exact=exact, our_head=ours)
        return seq_floor_advice(r)

    assert advise(62)[0] == 2000
    assert advise(1000)[0] == 2000
    assert advise(48_000)[0] == 53_000  # 10 % margin past 10,000
    assert advise(62, ours=5000)[0] is None and "no seq floor needed" in advise(62, ours=5000)[1]
    assert "at least" in advise(62, exact=False)[1]
    assert advise(None)[0] is None


def test_cts_is_compared_as_time_not_text():
    from firehose_mod.ops.import_labels import cts_key

    assert cts_key("2026-03-01T13:00:00+01:00") < cts_key("2026-03-01T12:00:00.001Z")
    assert parse_datetime("2026-03-01T12:00:00.001Z") == datetime(2026, 3, 1, 12, 0, 0, 1000, tzinfo=UTC)


async def test_the_fake_answers_patterns_as_plyr_fm_does_which_is_why_only_star_is_sent(fake):
    import httpx

    base = "at://did:plc:uploader/fm.plyr.track/"
    for rkey in ("3k_under", "3kXunder", "3k%pct", "3kApct"):
        fake.emit(base + rkey, CV)
    fake.emit(base + "3k_under", CV, neg=True)  # history, not state: both rows come back

    async def uris(pattern: str) -> list[str]:
        async with httpx.AsyncClient() as client:
            r = await client.get(fake.url + "/xrpc/com.atproto.label.queryLabels", params={"uriPatterns": pattern})
        assert r.status_code == 200 and r.json()["cursor"] is None
        assert all(isinstance(x["sig"], list) for x in r.json()["labels"])  # bytes as a JSON array
        return [x["uri"] for x in r.json()["labels"]]

    # A prefix glob per the spec would match only 3k_under; LIKE's `_` and `%` match 3kX... and 3kA... too.
    assert await uris(base + "3k_under*") == [base + "3k_under", base + "3kXunder", base + "3k_under"]
    assert await uris(base + "3k%pct*") == [base + "3k%pct", base + "3kApct"]
    assert len(await uris("*")) == 5  # `*` alone is "everything" under both readings
    async with httpx.AsyncClient() as client:
        assert (await client.get(fake.url + "/xrpc/com.atproto.label.queryLabels")).status_code == 400
