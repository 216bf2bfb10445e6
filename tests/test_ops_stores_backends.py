"""The operations' stores on both backends: backfill progress, plyr.fm compatibility, transparency
batches and label imports, on SQLite (store/backfill.py, plyr_compat.py, transparency.py,
label_import.py) and PostgreSQL (store/pg/ of the same names). Each test runs once per backend;
stores come from store/open.py's factories, and a second `open_*` is another store instance with
connections of its own over the same database, as another process would have."""

from __future__ import annotations

import argparse
import json
import sqlite3
from contextlib import asynccontextmanager

import aiosqlite
import anyio
import asyncpg
import pytest

from firehose_mod.cli.transparency import transparency
from firehose_mod.ingest.backfill import BackfillProgress
from firehose_mod.labels.model import Label
from firehose_mod.store.backfill import BackfillStore
from firehose_mod.store.db import open_db, transaction
from firehose_mod.store.label_import import ImportRowWriter, ImportStore
from firehose_mod.store.label_log import EmitRequest
from firehose_mod.store.open import open_backfill_store, open_import_store, open_plyr_store, open_transparency_store
from firehose_mod.store.pg.backfill import PgBackfillStore
from firehose_mod.store.pg.decisions import PgDecisionWriter
from firehose_mod.store.pg.label_import import PgImportRowWriter, PgImportStore
from firehose_mod.store.pg.plyr_compat import PgPlyrStore
from firehose_mod.store.pg.review_writer import PgReviewWriter
from firehose_mod.store.pg.schema import migrate
from firehose_mod.store.pg.transparency import PgTransparencyStore
from firehose_mod.store.plyr_compat import PlyrStore
from firehose_mod.store.review import POLICY_ACTOR, BuiltinActor, ReviewWriter
from firehose_mod.store.transparency import BatchRaced, TransparencyStore
from tests.conftest import uri
from tests.test_backfill import BIG, DOWN, SMALL, backfill, client, net  # noqa: F401 (fixtures)

pytestmark = pytest.mark.anyio

LABEL_LOG_BACKENDS = ("sqlite", "postgres")
REFUSED = (sqlite3.DatabaseError, asyncpg.PostgresError)
A, B, C, D = (f"did:plc:{c * 24}" for c in "abcd")
MODERATOR = BuiltinActor("operator", "ann", "token")


@asynccontextmanager
async def writing(settings):
    """A connection of its own (to a migrated database) in one transaction, committed at the end."""
    if settings.database_url:
        conn = await asyncpg.connect(settings.database_url)
        try:
            await migrate(conn)  # as open_db does on SQLite
            async with conn.transaction():
                yield conn
        finally:
            await conn.close()
    else:
        db = await open_db(settings.db_path)
        try:
            async with transaction(db):
                yield db
        finally:
            await db.close()


async def raw(settings, sql: str) -> None:
    """One statement both dialects read, on a connection of its own (no transaction)."""
    if settings.database_url:
        conn = await asyncpg.connect(settings.database_url)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()
    else:
        async with aiosqlite.connect(settings.db_path, isolation_level=None) as conn:
            await conn.execute(sql)


def review_writer(settings, conn):
    return PgReviewWriter(conn) if settings.database_url else ReviewWriter(conn)


async def test_the_settings_choose_each_store(settings, backend):
    pg = backend == "postgres"
    async with open_backfill_store(settings) as repos, open_plyr_store(settings) as plyr, \
            open_transparency_store(settings) as posts, open_import_store(settings) as imports:
        assert isinstance(repos, PgBackfillStore if pg else BackfillStore)
        assert isinstance(plyr, PgPlyrStore if pg else PlyrStore)
        assert isinstance(posts, PgTransparencyStore if pg else TransparencyStore)
        assert isinstance(imports, PgImportStore if pg else ImportStore)
        assert (await repos.counts(), await plyr.head(), await posts.covered()) == (
            {"pending": 0, "done": 0, "failed": 0, "total": 0}, 0, 0)


# -- backfill progress -----------------------------------------------------------------------------
async def test_backfill_progress_resumes_from_the_last_committed_page(settings):
    async with open_backfill_store(settings) as repos, open_backfill_store(settings) as other:
        assert await repos.add_dids([C, A, B, A]) == 3
        assert await other.add_dids([A, D]) == 1  # a DID known already keeps its state
        await repos.start(A, "https://pds.example")
        await repos.progress(A, "page-1", 10)
        await repos.progress(A, "page-2", 5)
        got = await other.get(A)  # another process sees where reading stands
        assert (got.state, got.cursor, got.records, got.attempts, got.pds) == ("pending", "page-2", 15, 1,
                                                                               "https://pds.example")
        assert [r.did for r in await other.next_pending()] == [A, B, C, D]
        assert [r.did for r in await other.next_pending(after=B, limit=1)] == [C]
        await repos.done(A, 3)
        got = await other.get(A)
        assert (got.state, got.cursor, got.records) == ("done", None, 18)
        assert await other.counts() == {"pending": 3, "done": 1, "failed": 0, "total": 4}
        assert await other.counts([A, B, "did:plc:unknown"]) == {"pending": 1, "done": 1, "failed": 0, "total": 2}
        assert await other.get("did:plc:unknown") is None


async def test_a_failed_repo_keeps_its_cursor_and_is_retried_on_request(settings):
    async with open_backfill_store(settings) as repos:
        await repos.add_dids([A, B])
        await repos.progress(B, "page-3", 4)
        await repos.failed(B, "x" * 3000)
        got = await repos.get(B)
        assert (got.state, got.cursor, len(got.error)) == ("failed", "page-3", 2000)
        assert [r.did for r in await repos.failures()] == [B]
        assert [r.did for r in await repos.next_pending()] == [A]
        assert await repos.retry_failed([A, "did:plc:unknown"]) == 0  # only failed repos go back
        assert await repos.retry_failed([B]) == 1
        got = await repos.get(B)
        assert (got.state, got.cursor, got.records, got.error) == ("pending", "page-3", 4, None)
        await repos.failed(B, "again")
        await repos.add_failed(C, "not a DID this labeler can read")
        await repos.add_failed(A, "ignored: A is known")
        assert (await repos.get(A)).state == "pending"
        assert await repos.counts() == {"pending": 1, "done": 0, "failed": 2, "total": 3}
        assert await repos.retry_failed() == 2
        assert await repos.restart([B]) == 1
        got = await repos.get(B)
        assert (got.state, got.cursor, got.records) == ("pending", None, 0)
        assert await repos.restart() == 3


async def test_an_interrupted_backfill_resumes_from_its_cursor_and_retries_failures_on_request(settings, net,
                                                                                               backfill):
    """run_backfill end to end (a real local PLC directory and PDSes) over this backend's stores."""
    with anyio.CancelScope() as scope:
        def stop_in_big(p: BackfillProgress) -> None:
            if p.did == BIG:
                scope.cancel()  # after BIG's first page is committed and its cursor saved
        await backfill(dids=[SMALL, BIG, DOWN], progress=stop_in_big, concurrency=1)
    assert scope.cancelled_caught
    async with open_backfill_store(settings) as repos:
        big = await repos.get(BIG)
        assert (big.state, big.records, await repos.counts()) == (
            "pending", 3, {"pending": 2, "done": 1, "failed": 0, "total": 3})
    report = await backfill(dids=[SMALL, BIG, DOWN], concurrency=1)
    assert net.count("/pds/one/", repo=SMALL) == 2 and net.count("/pds/one/", repo=BIG, cursor=big.cursor) == 1
    assert (report.repos_done, report.repos_failed, report.enqueued, report.duplicates) == (2, 1, 4, 0)
    net.pdses["down"].down = False  # its PDS is back
    assert (await backfill(dids=[DOWN])).repos_failed == 1  # a failed repo waits for --retry-failed
    report = await backfill(dids=[DOWN], retry_failed=True)
    assert (report.repos_done, report.enqueued) == (1, 2)
    async with open_backfill_store(settings) as repos:
        assert ((down := await repos.get(DOWN)).state, down.attempts, down.error) == ("done", 2, None)
        assert (await repos.get(BIG)).records == 7 and await repos.failures() == []

# -- plyr.fm compatibility ---------------------------------------------------------------------------
async def test_plyr_mirrors_our_labels_since_the_floor_once(settings, label_log):
    src = settings.did
    await label_log.emit(uri(1), "copyright")  # before compatibility: never announced
    async with open_plyr_store(settings) as plyr, open_plyr_store(settings) as other:
        assert await plyr.init_mirror() == 1
        await label_log.emit(uri(2), "copyright")
        assert await other.init_mirror() == 1  # the floor is kept
        await label_log.emit(uri(2), "copyright", neg=True)
        assert await plyr.catch_up(src) == 2
        assert await other.catch_up(src) == 0  # never twice, whoever catches up
        event_id = await other.record(subject_uri=uri(3), subject_track_id=7, action="flagged_by_scan",
                                      actor="plyr.fm", reason="match", notes=None, src=src)
        await label_log.emit_many([EmitRequest(uri(3), "copyright")])
        await label_log.emit(uri(4), "copyright")
        assert await plyr.catch_up("did:web:someone-else") == 0  # not ours to announce
        await label_log.emit(uri(3), "copyright", neg=True)
        event_id2 = await plyr.record(subject_uri=uri(4), subject_track_id=None, action="reported", actor="x",
                                      reason=None, notes=None, src=src)  # mirrors the label before it first
        events = await other.events_since(0, 100)
        assert [(e.subject_uri, e.action, e.reason) for e in events] == [
            (uri(2), "label_applied", "copyright"), (uri(2), "label_negated", "copyright"),
            (uri(3), "flagged_by_scan", "match"), (uri(3), "label_negated", "copyright"),
            (uri(4), "reported", None)]
        assert [e.id for e in events] == sorted(e.id for e in events) and events[2].id == event_id
        assert events[-1].id == event_id2 == await other.head()
        assert events[3].subject_track_id == 7 and events[3].actor == "labeler"  # the subject's track id carries over
        assert [e.id for e in await other.events_since(events[1].id, 2)] == [e.id for e in events[2:4]]
        with pytest.raises(REFUSED):
            await raw(settings, "DELETE FROM plyr_events")


async def test_two_processes_catching_up_at_once_mirror_each_label_once(settings, label_log):
    async with open_plyr_store(settings) as one, open_plyr_store(settings) as two:
        await one.init_mirror()
        await label_log.emit_many([EmitRequest(uri(n), "copyright") for n in range(40)])
        counts: list[int] = []

        async def catch_up(store) -> None:
            counts.append(await store.catch_up(settings.did))

        async with anyio.create_task_group() as tg:
            for i in range(6):
                tg.start_soon(catch_up, (one, two)[i % 2])
        events = await two.events_since(0, 100)
        assert sum(counts) == 40 and [e.subject_uri for e in events] == [uri(n) for n in range(40)]

async def test_plyr_overrides_and_what_is_in_force(settings, label_log):
    src = settings.did
    await label_log.emit(uri(1), "copyright")
    await label_log.emit(uri(1), "sexual")
    await label_log.emit(uri(2), "copyright")
    await label_log.emit(uri(2), "copyright", neg=True)
    await label_log.emit(uri(3), "copyright", exp="2999-01-01T00:00:00.000Z")
    async with open_plyr_store(settings) as plyr:
        for u, action in ((uri(1), "override_allow"), (uri(2), "override_exclude"), (uri(1), "override_clear"),
                          (uri(3), "override_allow"), (uri(3), "override_exclude")):
            await plyr.record(subject_uri=u, subject_track_id=None, action=action, actor="a", reason=None,
                              notes=None, src=src)
        assert await plyr.overrides() == {uri(2): "exclude", uri(3): "exclude"}
        assert await plyr.in_force_by_uri([uri(1), uri(2), uri(3), uri(1)], src) == {
            uri(1): ["copyright", "sexual"], uri(3): ["copyright"]}
        assert await plyr.in_force_by_value(["copyright"], src) == {uri(1): ["copyright"], uri(3): ["copyright"]}
        assert await plyr.in_force_by_uri([uri(1)], "did:web:someone-else") == {}
        async with writing(settings) as conn:  # a person dismissed uri(5)'s flag; uri(6)'s still waits
            w = review_writer(settings, conn)
            item = await w.open_item(uri(5), None, "copyright", "match", [], actor=POLICY_ACTOR)
            await w.append(await w.item(item), "reject", MODERATOR)
            await w.open_item(uri(6), None, "copyright", "match", [], actor=POLICY_ACTOR)
        assert await plyr.dismissed([uri(n) for n in range(1, 7)], "copyright", src, ("rejected", "allowed")) == [
            uri(2), uri(5)]


async def test_plyr_tracks_images_and_reports(settings):
    async with open_plyr_store(settings):  # made (and migrated) first
        pass
    await raw(settings, "INSERT INTO tracks (uri, did, rkey, cid, record, deleted, first_seen, updated) VALUES"
                        f" ('{uri(1)}', 'did:plc:uploader', 'r1', 'c1', '{{\"audioUrl\": \"https://a/1.mp3\"}}',"
                        " false, 't', '2026-01-02'),"
                        f" ('{uri(2)}', 'did:plc:uploader', 'r2', 'c2', '{{\"audioUrl\": \"https://a/1.mp3\"}}',"
                        " true, 't', '2026-01-03'),"
                        f" ('{uri(3)}', 'did:plc:uploader', 'r3', 'c3', '{{\"audioUrl\": 5}}', false, 't', 't')")
    async with open_plyr_store(settings) as plyr:
        assert await plyr.track_by_audio_url("https://a/1.mp3") == (uri(1), "did:plc:uploader", "c1", "r1")
        assert await plyr.track_by_audio_url("https://a/2.mp3") is None
        assert (await plyr.audio_url(uri(1)), await plyr.audio_url(uri(2)), await plyr.audio_url(uri(3))) == (
            "https://a/1.mp3", None, None)
        first = await plyr.add_sensitive_image("img-1", None, "nsfw", "mod")
        await plyr.add_sensitive_image(None, "https://cdn/avatar.png", None, None)
        await plyr.add_sensitive_image("img-3", None, None, None)
        assert await plyr.remove_sensitive_image(first, "mod")
        assert not await plyr.remove_sensitive_image(first, "mod")
        assert await plyr.sensitive_images() == (["img-3"], ["https://cdn/avatar.png"])
        body = {"reporter_did": A, "target_type": "track", "target_id": "12", "reason": "copyright", "ignored": 1}
        one = await plyr.add_report(body, report_id=None, item_id=None, routed="no subject")
        assert await plyr.add_report(body, report_id=None, item_id=None, routed=None) == one + 1
        with pytest.raises(REFUSED):
            await raw(settings, "UPDATE plyr_reports SET reason = 'edited'")


# -- transparency batches --------------------------------------------------------------------------
async def decided_events(settings) -> None:
    """Events 1-3: two items opened (kinds copyright, other), the first confirmed."""
    async with writing(settings) as conn:
        w = review_writer(settings, conn)
        item = await w.open_item(uri(1), None, "copyright", "match", [{"kind": "copyright-match"}],
                                 actor=POLICY_ACTOR)
        await w.open_item(uri(2), None, "spam", "looks like spam", [], actor=POLICY_ACTOR)
        await w.append(await w.item(item), "confirm", MODERATOR)


async def test_transparency_batches_tile_the_log_and_none_is_made_twice(settings):
    await decided_events(settings)
    async with open_transparency_store(settings) as posts, open_transparency_store(settings) as other:
        events = await posts.events_after(0)
        assert [(e.id, e.action, kind) for e, kind in events] == [(1, "open", "copyright"), (2, "open", "other"),
                                                                   (3, "confirm", "copyright")]
        assert [e.id for e, _ in await posts.events_after(1, upto=2)] == [2]
        assert (await posts.first_decision_after(0))[0] == 3 and await posts.first_decision_after(3) is None
        assert await posts.covered() == 0 and await posts.pending() is None
        row = await posts.create(0, 3, "p0", "p1", {"decisions": 1}, "one decision", "3kaaa")
        assert (row.after_event, row.last_event, row.summary, row.posted) == (0, 3, {"decisions": 1}, None)
        assert await other.pending() == row
        for after in (0, 3):  # the stretch is made, and a batch still waits
            with pytest.raises(BatchRaced):
                await other.create(after, 4, "p1", "p2", {}, "t", "3kbbb")
        await other.attempt(row.id)
        await other.failed(row.id, "e" * 600)
        got = await posts.pending()
        assert (got.attempts, len(got.last_error)) == (1, 500)
        await posts.posted(row.id, "at://labeler/app.bsky.feed.post/3kaaa", "cid1")
        await other.posted(row.id, "at://elsewhere", "cid2")  # posted once: kept as it was
        last = await other.last()
        assert (last.uri, last.cid, last.last_error, last.posted is not None) == (
            "at://labeler/app.bsky.feed.post/3kaaa", "cid1", None, True)
        assert await other.pending() is None and await other.covered() == 3
        with pytest.raises(BatchRaced):
            await other.create(0, 3, "p0", "p1", {}, "again", "3kccc")
        nxt = await other.create(3, 9, "p1", "p2", {}, "next", "3kddd")
        assert [p.id for p in await posts.posts()] == [nxt.id, row.id] and await posts.covered() == 9


async def test_the_preview_command_drafts_the_next_summary_from_this_backends_log(settings, capsys):
    await decided_events(settings)
    assert await transparency(settings, argparse.Namespace(json=True)) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["pending"], out["last_posted"]) == (None, None)
    assert (out["next"]["after_event"], out["next"]["last_event"]) == (0, 3)
    assert out["next"]["summary"]["decisions"] == 1

async def test_two_posters_racing_for_one_stretch_make_one_batch(settings):
    async with open_transparency_store(settings) as one, open_transparency_store(settings) as two:
        outcomes: list = []

        async def make(store, rkey):
            try:
                outcomes.append(await store.create(0, 5, "p0", "p1", {}, "t", rkey))
            except BatchRaced as exc:
                outcomes.append(exc)

        async with anyio.create_task_group() as tg:
            for i in range(6):
                tg.start_soon(make, (one, two)[i % 2], f"3kr{i}")
        assert sum(not isinstance(o, BatchRaced) for o in outcomes) == 1
        assert len(await one.posts()) == 1


async def test_transparency_names_handles_from_identity_events(settings):
    async with open_transparency_store(settings):  # made (and migrated) first
        pass
    for n, (did, handle) in enumerate([(A, "'old.example'"), (A, "'new.example'"), (B, "NULL")]):
        await raw(settings, "INSERT INTO repo_events (did, kind, handle, source, cursor, created) VALUES"
                            f" ('{did}', 'identity', {handle}, 'jetstream', {n}, 't')")
    async with open_transparency_store(settings) as posts:
        assert await posts.handles([B, A, C, A]) == {A: "new.example"}


# -- label imports ----------------------------------------------------------------------------------
def label(n: int, val: str = "spam", **kw) -> Label:
    return Label(src=D, uri=uri(n), val=val, cts=f"2026-01-0{n}T00:00:00.000Z", sig=bytes([n]) * 64, **kw)


def page(*labels: Label, verified=True) -> list:
    return [(n, 0, lab, lab.cts.replace("Z", "000Z"), verified) for n, lab in enumerate(labels)]


async def test_import_pages_store_each_label_once_and_reading_resumes(settings):
    async with open_import_store(settings) as imports, open_import_store(settings) as other:
        run = await imports.begin("https://source.example", "", "query")
        assert (await other.begin("https://source.example", "", "query")).id == run.id
        assert await imports.save_page(run.id, page(label(1), label(2), label(3)), "cur-1", positions=3) == 3
        assert await other.save_page(run.id, page(label(2), label(4), label(4)), "cur-2", high_seq=10) == 1
        assert await imports.save_page(run.id, [], None) == 0
        await other.note_high_seq(run.id, 5)
        got = await imports.get(run.id)
        assert (got.cursor, got.pages, got.rows, got.positions, got.high_seq) == (None, 3, 4, 3, 10)
        await imports.save_page(run.id, [], "cur-3")
        await imports.note_high_seq(run.id, 20)
        await imports.fetched(run.id)
        assert ((got := await imports.get(run.id)).state, got.high_seq) == ("fetched", 20)
        assert ((got := await other.begin("https://source.example", "", "query")).state, got.cursor) == (
            "fetching", "cur-3")  # read on from where it stopped
        assert (await other.begin("https://source.example", "", "query", restart=True)).cursor is None
        assert (await other.begin("https://source.example", D, "stream")).id != run.id


async def test_import_rows_are_marked_once_with_the_labels_they_wrote(settings):
    rows = [label(3, exp="2027-01-01T00:00:00.000Z"), label(1, neg=True), label(2, val="nudity"), label(1)]
    async with open_import_store(settings) as imports:
        run = await imports.begin("https://source.example", "", "stream")
        await imports.save_page(run.id, page(*rows[:3]) + [(9, 1, rows[3], "2026-01-01T00:00:00.000000Z", None)],
                                "9")
        pending = await imports.pending(run.id, 10)
        assert [r.label for r in pending] == [rows[1], rows[3], rows[2], rows[0]]  # by cts, then source order
        assert (pending[0].verified, pending[1].verified, pending[1].pos, pending[1].sub) == (True, None, 9, 1)
        assert [(r.label.uri, r.label.val, r.pos) for r in [x async for x in imports.by_subject(run.id)]] == sorted(
            (r.uri, r.val, n) for n, r in [(1, rows[1]), (9, rows[3]), (2, rows[2]), (0, rows[0])])

        def writer(conn):
            return PgImportRowWriter(conn) if settings.database_url else ImportRowWriter(conn)

        with pytest.raises(RuntimeError):  # the labels' transaction rolled back: no row marked
            async with writing(settings) as conn:
                await writer(conn).mark(run.id, [(pending[0].ident, "written", 1)])
                raise RuntimeError("the label log's transaction failed")
        assert await imports.pending_count(run.id) == 4
        async with writing(settings) as conn:
            await writer(conn).mark(run.id, [(pending[0].ident, "written", 7), (pending[1].ident, "unchanged", None),
                                             (pending[2].ident, "invalid: no such value", None)])
        assert [r.ident for r in await imports.pending(run.id, 10)] == [pending[3].ident]
        assert await imports.pending_count(run.id) == 1
        assert await imports.counts(run.id) == {
            "rows": 4, "outcomes": {"written": 1, "unchanged": 1, "invalid": 1, "pending": 1}, "srcs": {D: 4},
            "verified": 3, "failed": 0, "unchecked": 1}
        assert await imports.invalid_examples(run.id) == [{"uri": uri(2), "val": "nudity", "why": "no such value"}]


async def test_an_import_row_is_marked_in_the_label_logs_own_transaction(settings, label_log, backend):
    if backend == "postgres":
        try:
            PgDecisionWriter(None).imports
        except NotImplementedError:
            pytest.skip("PgDecisionWriter.imports is not wired to PgImportRowWriter yet (store/pg/decisions.py)")
    async with open_import_store(settings) as imports:
        run = await imports.begin("https://source.example", "", "stream")
        await imports.save_page(run.id, page(label(1), label(2)), "2")
        one, two = await imports.pending(run.id, 10)

        async def mark(dw, written) -> None:
            await dw.imports.mark(run.id, [(one.ident, "written", written[0].seq), (two.ident, "unchanged", None)])

        [written] = await label_log.emit_many([EmitRequest(uri(1), "spam")], also=mark)
        assert await imports.pending(run.id, 10) == []
        assert [(r.outcome, r.label_seq) for r in [x async for x in imports.by_subject(run.id)]] == [
            ("written", written.seq), ("unchanged", None)]
        await imports.save_page(run.id, page(label(3)), "3")
        [three] = await imports.pending(run.id, 10)

        async def failing(dw, written) -> None:
            await dw.imports.mark(run.id, [(three.ident, "written", written[0].seq)])
            raise RuntimeError("the apply failed before the commit")

        with pytest.raises(RuntimeError):
            await label_log.emit_many([EmitRequest(uri(3), "spam")], also=failing)
        assert await imports.pending(run.id, 10) == [three] and await label_log.head() == written.seq
