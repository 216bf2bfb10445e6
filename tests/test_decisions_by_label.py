"""Issue 19, fourth pass: decisions have no index by uri (migration 18). A decision with a label is
found through its label (label_state, the label_prev chains, `decisions_by_label`), the others through
`decisions_unlabelled`; every reader answers what the old SQL over `decisions_uri` answered."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import aiosqlite
import pytest

from firehose_mod.events import RepoEvent, TrackEvent
from firehose_mod.labels.signing import SigningKey
from firehose_mod.scan.base import MEDIA_UNAVAILABLE, Finding
from firehose_mod.store.db import _statements, open_db
from firehose_mod.store.decisions import DecisionLabelMismatch, DecisionRow, DecisionStore
from firehose_mod.store.ingest import IngestStore
from firehose_mod.store.label_log import EmitRequest, LabelLog
from firehose_mod.store.migrations import MIGRATIONS
from firehose_mod.store.plyr_compat import PlyrStore
from tests.conftest import uri
from tests.fakes.jetstream import track_record

pytestmark = pytest.mark.anyio
SRC = "did:plc:fourthpass"
DID = "did:plc:uploader"
CID1 = "bafyreifxykqhed72s26cr4i64rxvrtofeqrly3j4vjzbkvo3ckkjbxjqtq"
CID2 = "bafyreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"
NEW_INDEXES = {"decisions_unlabelled", "decisions_by_label"}

# What the readers ran over decisions_uri before migration 18 (without the index: a scan, same rows).
OLD_HISTORY = "SELECT * FROM decisions WHERE uri = ? ORDER BY id"
OLD_AUTOMATIC = ("SELECT value, origin, action FROM decisions WHERE uri = ? AND action IN ('label', 'negate')"
                 " ORDER BY id")
OLD_OVERRULED = ("SELECT value, origin, action, cid FROM decisions WHERE uri = ? AND action IN ('label', 'negate')"
                 " ORDER BY id")
OLD_UNDER = "SELECT uri, count(*), max(created) FROM decisions WHERE uri >= ? AND uri < ? GROUP BY uri ORDER BY uri"
OLD_UNDER_OPEN = "SELECT uri, count(*), max(created) FROM decisions WHERE uri >= ? GROUP BY uri ORDER BY uri"
OLD_RESCANS = (
    "SELECT t.uri, t.cid FROM tracks t"
    " JOIN decisions d ON d.id = (SELECT max(id) FROM decisions WHERE uri = t.uri AND origin = 'policy')"
    " WHERE t.did = ? AND t.deleted = 0 AND t.record IS NOT NULL AND t.cid IS NOT NULL"
    " AND d.cid = t.cid AND d.evidence LIKE '%\"media-unavailable\"%'"
    " AND EXISTS (SELECT 1 FROM json_each(d.evidence) f WHERE json_extract(f.value, '$.kind') = 'media-unavailable')")
OLD_PLYR = ("SELECT l.seq,"
            " (SELECT coalesce(d.actor, d.origin) FROM decisions d WHERE d.uri = l.uri AND d.label_seq = l.seq"
            "  ORDER BY d.id LIMIT 1),"
            " (SELECT coalesce(d.reason, d.rule) FROM decisions d WHERE d.uri = l.uri AND d.label_seq = l.seq"
            "  ORDER BY d.id LIMIT 1)"
            " FROM labels l WHERE l.src = ? ORDER BY l.seq")


def _rows(path: Path, sql: str, params: tuple = ()) -> list[tuple]:
    with sqlite3.connect(path) as db:
        return db.execute(sql, params).fetchall()


def _indexes(path: Path) -> set[str]:
    return {n for (n,) in _rows(path, "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'decisions'"
                                      " AND sql IS NOT NULL")}


def unavailable() -> Finding:
    return Finding("copyright", MEDIA_UNAVAILABLE, 1.0, {"media": "audio", "status": 400, "error": "RepoDeactivated"})


def clean() -> Finding:
    return Finding("text", "text", 0.1, {"matched": "x"})


def _labelled(origin: str, **kw):
    """An `also=` writing one decision per label written, on the label's own uri."""
    async def also(dw, written) -> None:
        await dw.write([DecisionRow(s.label.uri, s.label.cid, "negate" if s.label.neg else "label", s.label.val,
                                    origin, label_seq=s.seq, **kw) for s in written])
    return also


async def _build(path: Path) -> dict[str, str]:
    """A log through the public paths: labels with their decisions, negations, relabels, a new cid,
    decisions with no label, a second labeler DID, uris sharing a prefix and a uri extending another.
    Returns the tracks' cids (for the rescan reader)."""
    key = SigningKey.generate()
    ingest = await IngestStore.open(path)
    cids = {uri(i): (CID1 if i % 2 else CID2) for i in range(1, 7)}
    await ingest.commit("jetstream", 1, [
        TrackEvent(DID, "fm.plyr.track", u.rsplit("/", 1)[1], "create", c, track_record("t"), 1, f"3k000{i}",
                   "jetstream") for i, (u, c) in enumerate(cids.items())])
    for job in await ingest.claim(50):
        await ingest.finish(job.id)
    await ingest.close()
    log = await LabelLog.open(path, key, SRC)
    decisions = await DecisionStore.open(path)
    scan = {"origin": "policy", "policy_version": "p1", "scanners": {"audio": "1"}}
    try:
        # Labels on many uris (the others' decisions must not show), with their policy decisions.
        await log.emit_many([EmitRequest(uri(i), ["porn", "spam"][i % 2], cid=cids.get(uri(i))) for i in range(1, 40)],
                            also=_labelled("policy", rule="r1", policy_version="p1", evidence=[clean()]))
        # Decisions without a label: clean scans, reviews, a label the policy wanted that changed nothing.
        await decisions.record([DecisionRow(uri(1), CID1, "none", None, evidence=[clean()], **scan),
                                DecisionRow(uri(2), CID2, "none", None, evidence=[unavailable()], **scan),
                                DecisionRow(uri(1), CID1, "review", "copyright", rule="r2", evidence=[clean()], **scan),
                                DecisionRow(uri(1), CID1, "label", "porn", rule="r1", **scan)],  # already in force
                               [(uri(1), CID1, "copyright", "policy rule r2", [])])
        # A negation by the policy, a person's relabel, a delete's negation, a person's negation.
        await log.emit_many([EmitRequest(uri(1), "porn", cid=CID1), EmitRequest(uri(3), "spam", neg=True, cid=CID1)],
                            also=_labelled("policy", rule="r3"))
        await log.emit_many([EmitRequest(uri(3), "spam", cid=CID1)], also=_labelled("human", actor="mo", reason="yes"))
        await log.emit_many([EmitRequest(uri(1), "porn", neg=True, cid=CID1)],
                            also=_labelled("delete", reason="content deleted"))
        await log.emit_many([EmitRequest(uri(1), "porn", cid=CID2)],  # a new version of the record
                            also=_labelled("policy", rule="r1", evidence=[unavailable()]))
        await log.emit_many([EmitRequest(uri(1), "spam", neg=True, cid=CID1)],
                            also=_labelled("human", actor="mo", reason="not spam"))
        # The latest policy decision of uri(4) is labelled and found the media unavailable; uri(5)'s
        # unlabelled unavailable scan is followed by a labelled one that is not; uri(6)'s by a human note.
        await log.emit_many([EmitRequest(uri(4), "copyright", cid=cids[uri(4)])],
                            also=_labelled("policy", rule="r4", evidence=[unavailable()]))
        await decisions.record([DecisionRow(uri(5), cids[uri(5)], "none", None, evidence=[unavailable()], **scan),
                                DecisionRow(uri(6), cids[uri(6)], "none", None, evidence=[unavailable()], **scan)])
        await log.emit_many([EmitRequest(uri(5), "copyright", cid=cids[uri(5)])],
                            also=_labelled("policy", rule="r4", evidence=[clean()]))
        await decisions.record([DecisionRow(uri(6), cids[uri(6)], "none", None, "human", actor="mo", reason="note")])

        async def two_rows(dw, written) -> None:  # two decisions naming one label
            s = written[0]
            await dw.write([DecisionRow(s.label.uri, None, "label", s.label.val, "human", actor="a", label_seq=s.seq),
                            DecisionRow(s.label.uri, None, "label", s.label.val, "policy", rule="r5",
                                        label_seq=s.seq)])

        await log.emit_many([EmitRequest(uri(7), "nudity")], also=two_rows)
        # Uris sharing a prefix: uri(1) + "x" extends uri(1); another account's uri; an import's label.
        await log.emit_many([EmitRequest(uri(1) + "x", "porn"), EmitRequest(uri(1, "did:plc:other"), "porn")],
                            also=_labelled("policy", rule="r1"))
        await decisions.record([DecisionRow(uri(1) + "xy", None, "none", None, "policy")])
        await log.emit_many([EmitRequest(uri(50), "spam", cts="2020-01-01T00:00:00.000Z"),
                             EmitRequest(uri(51), "porn", cts="2020-01-01T00:00:00.000Z")],
                            also=_labelled("import", actor="import"))
    finally:
        await decisions.close()
        await log.close()
    other = await LabelLog.open(path, key, "did:plc:renamed")  # the labeler's DID changed: a second src
    try:
        await other.emit_many([EmitRequest(uri(1), "porn"), EmitRequest(uri(9), "spam")],
                              also=_labelled("human", actor="mo"))
        await other.emit_many([EmitRequest(uri(1), "porn", neg=True)], also=_labelled("policy", rule="r6"))
    finally:
        await other.close()
    return cids


SUBJECTS = [uri(i) for i in (*range(0, 12), 50)] + [uri(1) + "x", uri(1) + "xy", uri(1, "did:plc:other"),
                                                   "did:plc:nobody"]
PREFIXES = ["", "at://", f"at://{DID}/", uri(1), uri(1) + "x", uri(1)[:-1], "at://did:plc:other", "zz",
            f"at://{DID}/fm.plyr.track/3k\U0010ffff"]


def _old_automatic(path: Path, u: str) -> dict[str, str]:
    latest: dict[str, str] = {}
    for value, origin, action in _rows(path, OLD_AUTOMATIC, (u,)):
        latest[value] = origin if action == "label" else f"negated-by-{origin}"
    return latest


def _old_overruled(path: Path, u: str, cid: str | None) -> set[str]:
    latest = {value: (origin, action, c) for value, origin, action, c in _rows(path, OLD_OVERRULED, (u,))}
    return {v for v, (origin, action, c) in latest.items()
            if action == "negate" and origin not in ("policy", "delete") and c == cid}


def _old_under(path: Path, prefix: str) -> dict:
    from firehose_mod.store.query import prefix_upper_bound

    upper = prefix_upper_bound(prefix)
    rows = _rows(path, OLD_UNDER, (prefix, upper)) if upper is not None else _rows(path, OLD_UNDER_OPEN, (prefix,))
    return {u: (n, latest) for u, n, latest in rows}


async def _assert_same_answers(path: Path) -> None:
    """Every rewritten DecisionStore reader against the old SQL (run without its index)."""
    decisions = await DecisionStore.open(path)
    try:
        for u in SUBJECTS:
            old = _rows(path, OLD_HISTORY, (u,))
            got = await decisions.history(u)
            assert [r["id"] for r in got] == [r[0] for r in old], u
            cols = [c for c in got[0]] if got else []
            assert [tuple(r[c] for c in cols if c not in ("scanners", "evidence")) for r in got] == \
                [tuple(v for c, v in zip(cols, r, strict=True) if c not in ("scanners", "evidence")) for r in old]
            assert await decisions.automatic_values(u) == _old_automatic(path, u), u
            for cid in (None, CID1, CID2):
                assert await decisions.overruled(u, cid) == _old_overruled(path, u, cid), (u, cid)
        for prefix in PREFIXES:
            assert await decisions.uris_under(prefix) == _old_under(path, prefix), prefix
    finally:
        await decisions.close()


# -- the same answers -----------------------------------------------------------------------------
async def test_every_reader_finds_the_rows_the_index_by_uri_found(tmp_path):
    path = tmp_path / "x.sqlite3"
    await _build(path)
    assert _indexes(path) == NEW_INDEXES
    await _assert_same_answers(path)
    # The log is what the test means it to be: labelled and unlabelled rows, long chains, 2 srcs.
    decisions = await DecisionStore.open(path)
    try:
        h1 = await decisions.history(uri(1))
        assert len(h1) == 10 and sum(r["label_seq"] is None for r in h1) == 3
        assert len({r["label_seq"] for r in h1 if r["label_seq"]}) == 7
        assert len(await decisions.history(uri(3))) == 3  # label, negation, a person's relabel
        assert await decisions.automatic_values(uri(1)) == {"porn": "negated-by-policy", "spam": "negated-by-human"}
        assert await decisions.overruled(uri(1), CID1) == {"spam"}
        h7 = await decisions.history(uri(7))
        assert len(h7) == 3 and h7[1]["label_seq"] == h7[2]["label_seq"]  # two rows naming one label
        under = await decisions.uris_under(uri(1))
        assert set(under) == {uri(1), uri(1) + "x", uri(1) + "xy"} and under[uri(1)][0] == 10
        assert len(await decisions.uris_under(f"at://{DID}/")) == 43
    finally:
        await decisions.close()


async def test_the_rescan_of_unavailable_media_queues_what_the_old_query_chose(tmp_path):
    path = tmp_path / "x.sqlite3"
    cids = await _build(path)
    expected = _rows(path, OLD_RESCANS, (DID,))
    assert expected == [(uri(2), cids[uri(2)]), (uri(4), cids[uri(4)]), (uri(6), cids[uri(6)])]  # not uri(1), uri(5)
    ingest = await IngestStore.open(path)
    try:  # the account comes back: its tracks whose latest policy scan found the media unavailable
        res = await ingest.commit("jetstream", 2, [RepoEvent(DID, "account", 2, True, None, None, "jetstream")])
    finally:
        await ingest.close()
    got = _rows(path, "SELECT uri, cid FROM scan_jobs WHERE operation = 'rescan' ORDER BY id")
    assert got == expected and res.enqueued == len(expected)


async def test_plyr_mirroring_names_the_decision_behind_each_label(tmp_path):
    path = tmp_path / "x.sqlite3"
    await _build(path)
    expected = {seq: (f"labeler:{who}" if who else "labeler", why) for seq, who, why in _rows(path, OLD_PLYR, (SRC,))}
    assert {who for who, _ in expected.values()} >= {"labeler:policy", "labeler:mo", "labeler:delete",
                                                     "labeler:import", "labeler:a"}
    plyr = await PlyrStore.open(path)
    try:
        assert await plyr.catch_up(SRC) == len(expected)
    finally:
        await plyr.close()
    got = {seq: (actor, notes) for seq, actor, notes in _rows(path, "SELECT label_seq, actor, notes FROM plyr_events")}
    assert got == expected


async def test_a_v17_database_migrates_and_answers_the_same(tmp_path):
    path = tmp_path / "x.sqlite3"
    await _build(path)
    # Back to version 17's schema (exactly: compared with a fresh v17 below), data untouched.
    with sqlite3.connect(path) as db:
        db.execute("DROP INDEX decisions_unlabelled")
        db.execute("DROP INDEX decisions_by_label")
        db.execute("CREATE INDEX decisions_uri ON decisions(uri, id)")
        db.execute("PRAGMA user_version = 17")
    fresh = tmp_path / "v17.sqlite3"
    with sqlite3.connect(fresh) as db:
        for script in MIGRATIONS[:17]:
            for statement in _statements(script):
                db.execute(statement)
    schema = "SELECT type, name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' ORDER BY name"
    assert _rows(path, schema) == _rows(fresh, schema)
    before = {u: _rows(path, OLD_HISTORY, (u,)) for u in SUBJECTS}
    conn = await open_db(path)  # migrates to 18
    await conn.close()
    assert _rows(path, "PRAGMA user_version") == [(len(MIGRATIONS),)] and len(MIGRATIONS) == 18
    assert _indexes(path) == NEW_INDEXES
    assert {u: _rows(path, OLD_HISTORY, (u,)) for u in SUBJECTS} == before
    await _assert_same_answers(path)


# -- the invariant ----------------------------------------------------------------------------------
async def test_a_decision_naming_a_label_on_another_uri_or_no_label_is_refused(tmp_path):
    path = tmp_path / "x.sqlite3"
    log = await LabelLog.open(path, SigningKey.generate(), SRC)
    decisions = await DecisionStore.open(path)
    try:
        [first] = await log.emit_many([EmitRequest(uri(1), "porn")], also=_labelled("policy"))

        async def wrong_uri(dw, written) -> None:
            await dw.write([DecisionRow(uri(2), None, "label", "porn", "policy", label_seq=written[0].seq)])

        with pytest.raises(DecisionLabelMismatch, match=f"on {uri(2)} names label 2, which is on {uri(1)}"):
            await log.emit_many([EmitRequest(uri(1), "spam")], also=wrong_uri)
        assert await log.count() == 1  # the label and its decision are not committed either
        with pytest.raises(DecisionLabelMismatch, match="names label 99, which does not exist"):
            await decisions.record([DecisionRow(uri(1), None, "label", "porn", "policy"),
                                    DecisionRow(uri(1), None, "label", "porn", "policy", label_seq=99)])
        with pytest.raises(DecisionLabelMismatch, match=f"on {uri(1)}x names label {first.seq}"):
            await decisions.record([DecisionRow(uri(1) + "x", None, "label", "porn", "policy", label_seq=first.seq)])
        assert _rows(path, "SELECT uri, label_seq FROM decisions") == [(uri(1), first.seq)]  # nothing else
        await decisions.record([DecisionRow(uri(1), None, "label", "porn", "human", label_seq=first.seq),
                                DecisionRow(uri(2), None, "none", None, "policy")])
        assert len(await decisions.history(uri(1))) == 2 and len(await decisions.history(uri(2))) == 1
        with sqlite3.connect(path) as db:  # a row that breaks the invariant behind write_decisions' back
            db.execute("INSERT INTO decisions (uri, action, value, origin, label_seq, created)"
                       " VALUES (?, 'label', 'porn', 'policy', ?, 'now')", (uri(2), first.seq))
        assert len(await decisions.history(uri(1))) == 2 == len(_rows(path, OLD_HISTORY, (uri(1),)))  # not uri(1)'s
    finally:
        await decisions.close()
        await log.close()


# -- the plans ----------------------------------------------------------------------------------------
async def test_the_readers_plans_search_the_indexes_and_scan_no_table(tmp_path, monkeypatch):
    path = tmp_path / "x.sqlite3"
    await _build(path)
    seen: list[tuple[str, object]] = []
    execute = aiosqlite.Connection.execute

    def recording(self, sql, parameters=None):
        if "decisions" in sql and sql.lstrip().upper().startswith(("SELECT", "WITH", "INSERT INTO SCAN_JOBS")):
            seen.append((sql, parameters))
        return execute(self, sql, parameters)

    monkeypatch.setattr(aiosqlite.Connection, "execute", recording)
    decisions = await DecisionStore.open(path)
    try:
        await decisions.history(uri(1))
        await decisions.automatic_values(uri(1))
        await decisions.overruled(uri(1), CID1)
        await decisions.uris_under(uri(1))
        await decisions.uris_under("")
    finally:
        await decisions.close()
    ingest = await IngestStore.open(path)
    try:
        await ingest.commit("jetstream", 2, [RepoEvent(DID, "account", 2, True, None, None, "jetstream")])
    finally:
        await ingest.close()
    plyr = await PlyrStore.open(path)
    try:
        await plyr.catch_up(SRC)
    finally:
        await plyr.close()
    assert len({sql for sql, _ in seen}) == 7, [s[:40] for s, _ in seen]  # plyr.fm's twice: until no rows
    for sql, params in seen:
        plan = [r[-1] for r in _rows(path, "EXPLAIN QUERY PLAN " + sql, params or ())]
        assert not any(p.startswith(("SCAN decisions", "SCAN d", "SCAN labels", "SCAN l ", "SCAN label_state",
                                     "SCAN s", "SCAN tracks")) for p in plan), (sql, plan)
        assert any("decisions_by_label (label_seq=?)" in p for p in plan), (sql, plan)
        if "label_prev" in sql:  # the readers by subject: both indexes, label_state's key, the chains
            assert any("decisions_unlabelled (uri" in p for p in plan), plan
            assert any(p.startswith(("SEARCH label_state USING PRIMARY KEY", "SEARCH s USING PRIMARY KEY"))
                       for p in plan), plan
            assert "SEARCH p USING INTEGER PRIMARY KEY (rowid=?)" in plan, plan
        else:  # plyr.fm's mirror: the labels after a seq, a probe a label
            assert any(p.startswith("SEARCH l USING INTEGER PRIMARY KEY (rowid>?)") for p in plan), plan
