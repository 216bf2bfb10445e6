"""Issue 19, third pass: the cheaper write path writes what it wrote before, and a label's history
is found through label_state and label_prev (migration 17) instead of an index of labels by uri."""

from __future__ import annotations

import dataclasses
import json
import pickle
import sqlite3
from pathlib import Path

import pytest

from firehose_mod.labels import verify_label
from firehose_mod.labels.model import Label, fast_frozen_init
from firehose_mod.labels.signing import SigningKey
from firehose_mod.scan.base import Finding
from firehose_mod.store.db import _statements, open_db
from firehose_mod.store.decisions import DecisionRow, decision_rows
from firehose_mod.store.label_log import _CHAIN, _COLUMNS, EmitRequest, LabelLog, StoredLabel
from firehose_mod.store.migrations import MIGRATIONS
from tests.conftest import uri

pytestmark = pytest.mark.anyio
SRC = "did:plc:thirdpass"
CID = "bafyreifxykqhed72s26cr4i64rxvrtofeqrly3j4vjzbkvo3ckkjbxjqtq"
HISTORY_BY_SCAN = f"SELECT {_COLUMNS} FROM labels WHERE uri = ? ORDER BY seq"  # what labels_uri served


def _rows(path: Path, sql: str, params: tuple = ()) -> list[tuple]:
    with sqlite3.connect(path) as db:
        return db.execute(sql, params).fetchall()


# -- the frozen dataclasses' faster __init__ ----------------------------------------------------
def test_a_fast_init_keeps_what_a_frozen_dataclass_promises():
    label = Label(SRC, uri(1), "porn", "2026-01-01T00:00:00.000Z", exp="2027-01-01T00:00:00.000Z")
    assert label == Label(src=SRC, uri=uri(1), val="porn", cts="2026-01-01T00:00:00.000Z", cid=None, neg=False,
                          exp="2027-01-01T00:00:00.000Z", ver=1, sig=None)
    assert (label.ver, label.sig, label.neg) == (1, None, False)  # defaults
    assert hash(label) == hash(dataclasses.replace(label))
    assert pickle.loads(pickle.dumps(label)) == label
    assert dataclasses.replace(label, neg=True).neg is True and label.neg is False
    with pytest.raises(dataclasses.FrozenInstanceError):
        label.neg = True  # type: ignore[misc]
    with pytest.raises(TypeError, match="missing"):
        Label(SRC, uri(1))  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="unexpected keyword"):
        Label(SRC, uri(1), "porn", "x", colour="red")  # type: ignore[call-arg]
    row = DecisionRow(uri(1), None, "label", "porn", origin="policy", label_seq=3)
    assert dataclasses.asdict(row)["label_seq"] == 3 and row.evidence is None
    stored = StoredLabel(1, label, "did:key:z", b"\xa0")
    assert stored == StoredLabel(seq=1, label=label, key_id="did:key:z", cbor=b"\xa0")

    @dataclasses.dataclass(frozen=True, slots=True)
    class WithFactory:
        xs: list = dataclasses.field(default_factory=list)

    with pytest.raises(TypeError):
        fast_frozen_init(WithFactory)

    @dataclasses.dataclass(slots=True)
    class NotFrozen:
        x: int

    with pytest.raises(TypeError):
        fast_frozen_init(NotFrozen)


# -- decision rows: the same text, encoded once per object ---------------------------------------
def _reference(rows: list[DecisionRow]) -> list[tuple]:
    """The columns as json.dumps gives them, row by row (what decision_rows always meant)."""
    def evidence(findings) -> str:
        return json.dumps([dataclasses.asdict(f) if dataclasses.is_dataclass(f) else f for f in findings or []],
                          default=str)
    return [(r.uri, r.cid, r.action, r.value, r.origin, r.rule, r.policy_version,
             json.dumps(r.scanners or {}, sort_keys=True), evidence(r.evidence), r.label_seq, r.actor, r.reason)
            for r in rows]


def test_decision_rows_give_json_dumps_text_for_every_shape():
    f1 = Finding("audio", "copyright-match", 0.93, {"ref": "x\u00e9\u2603", "offs": [1, 2.5, None],
                                                     "path": Path("/a"), "raw": b"\x00"}, "copyright")
    f2 = Finding("text", "text", 1, {})
    versions = {"z": "2", "a": "1", "m": {"q": 1}}
    rows = [
        DecisionRow(uri(1), CID, "label", "copyright", "policy", rule="r", policy_version="v", scanners=versions,
                    evidence=[f1, f2], label_seq=1),
        DecisionRow(uri(1), CID, "review", "porn", "policy", scanners=versions, evidence=[f1]),  # f1 shared
        DecisionRow(uri(2), None, "negate", "porn", "delete", reason="content deleted", label_seq=2),  # None, None
        DecisionRow(uri(3), None, "none", None, "policy", scanners={"x": "1"}, evidence=None),  # evidence None after
        DecisionRow(uri(4), None, "none", None, "policy", scanners={}, evidence=[]),
        DecisionRow(uri(5), None, "label", "spam", "human", actor="ops", scanners={"b": 1.0, "a": float("inf")},
                    evidence=[{"k": float("nan"), "t": True, "x": 1e300}, "text", 5, None,
                              {"n": {"d": [f1.evidence]}}]),
        DecisionRow(uri(6), None, "label", "spam", "policy", scanners={"\u00fc": "\U0001f600"}, evidence=[f2, f2]),
    ]
    got = decision_rows(rows)
    assert [r[:-1] for r in got] == _reference(rows)
    assert len({r[-1] for r in got}) == 1  # one `created` for the batch
    # Rows with neither versions nor evidence keep '[]' as their evidence (before this pass, a row
    # without evidence after one without versions got '{}': one memo served both columns).
    assert got[2][7:9] == ("{}", "[]") and got[3][8] == "[]"


# -- the batch path signs and encodes as the one-label path does ---------------------------------
async def test_a_big_batch_writes_the_cbor_and_signatures_the_key_gives_one_by_one(tmp_path):
    key = SigningKey.from_hex("2b" * 32)
    log = await LabelLog.open(tmp_path / "x.sqlite3", key, SRC)
    try:
        reqs = [EmitRequest(uri(i), ["porn", "spam", "!hide"][i % 3], cid=CID if i % 4 == 0 else None,
                            exp="2031-01-01T00:00:00.000Z" if i % 5 == 0 else None) for i in range(300)]
        written = await log.emit_many(reqs)  # 300 labels: signed by the helper process and this one
        negs = await log.emit_many([EmitRequest(uri(i), "porn", neg=True) for i in range(0, 300, 3)])
        for s in written + negs:
            unsigned = dataclasses.replace(s.label, sig=None)
            again = key.sign(unsigned)
            assert s.label.sig == again.sig and s.cbor == again.to_cbor()  # RFC 6979: byte for byte
            assert verify_label(key.did_key, s.label)
        rows = _rows(log._path, "SELECT seq, cbor, sig FROM labels")
        stored = {seq: (bytes(cbor), bytes(sig)) for seq, cbor, sig in rows}
        assert stored == {s.seq: (s.cbor, s.label.sig) for s in written + negs}
    finally:
        await log.close()


# -- history through label_state and label_prev ---------------------------------------------------
async def test_history_follows_each_values_chain_across_negations_versions_and_sources(tmp_path):
    path = tmp_path / "x.sqlite3"
    key = SigningKey.generate()
    log = await LabelLog.open(path, key, SRC)
    try:
        await log.emit_many([EmitRequest(uri(i), "porn") for i in range(200)])
        await log.emit(uri(1), "porn", neg=True)
        await log.emit(uri(1), "porn")
        await log.emit(uri(1), "porn", cid=CID)  # a new record version: a real change
        await log.emit_many([EmitRequest(uri(1), "spam"), EmitRequest(uri(1), "spam", neg=True),
                             EmitRequest(uri(2), "porn", neg=True), EmitRequest(uri(1), "spam")])  # one batch
        await log.emit_many([EmitRequest(uri(1) + "x", "porn")])  # a uri that extends another: not its history
    finally:
        await log.close()
    other = await LabelLog.open(path, key, "did:plc:renamed")  # the labeler's DID changed: a second src
    try:
        await other.emit(uri(1), "porn")
        await other.emit(uri(1), "porn", neg=True)
        for u in (uri(1), uri(2), uri(3), uri(1) + "x", "did:plc:nobody"):
            expected = _rows(path, HISTORY_BY_SCAN, (u,))
            got = await other.history(u)
            assert [(s.seq, s.label.val, s.label.neg, s.label.src, s.cbor) for s in got] == \
                [(r[0], r[4], bool(r[5]), r[1], bytes(r[10])) for r in expected]
        assert len(await other.history(uri(1))) == 9  # porn 4 + spam 3 + renamed porn 2
        links = _rows(path, "SELECT seq, prev FROM label_prev ORDER BY seq")
        assert links == _rows(path, "SELECT seq, prev FROM (SELECT seq, lag(seq) OVER (PARTITION BY uri, val, src"
                                    " ORDER BY seq) AS prev FROM labels) WHERE prev IS NOT NULL ORDER BY seq")
        assert len(links) == 7  # only labels with a predecessor on their (uri, val, src) get a row
    finally:
        await other.close()


async def test_an_import_already_held_deep_in_a_chain_is_skipped(tmp_path):
    log = await LabelLog.open(tmp_path / "x.sqlite3", SigningKey.generate(), SRC)
    try:
        old = [EmitRequest(uri(i), "porn", cts="2024-01-01T00:00:00.000Z") for i in range(3)]
        assert len(await log.emit_many(old)) == 3
        newer = [EmitRequest(uri(i), "porn", neg=True, cts="2024-02-01T00:00:00.000Z") for i in range(3)]
        assert len(await log.emit_many(newer)) == 3
        again = [EmitRequest(uri(i), "porn", cts="2024-03-01T00:00:00.000Z") for i in range(3)]
        assert len(await log.emit_many(again)) == 3  # three labels a (uri, val) now
        # The first import again: not newer than our latest (2024-03), and held two links down the chain.
        assert await log.emit_many(old + newer + again) == []
        assert [s.label.cts[:7] for s in await log.history(uri(0))] == ["2024-01", "2024-02", "2024-03"]
    finally:
        await log.close()


async def test_the_write_path_has_no_index_of_labels_by_uri_and_history_searches_keys(tmp_path):
    path = tmp_path / "x.sqlite3"
    log = await LabelLog.open(path, SigningKey.generate(), SRC)
    await log.close()
    indexes = {name for (name,) in _rows(path, "SELECT name FROM sqlite_master WHERE type = 'index'"
                                                " AND tbl_name = 'labels' AND sql IS NOT NULL")}
    assert indexes == set()  # labels: its rowid (seq) only
    for where, params in (("uri = ?", ("u",)), ("uri = ? AND val = ? AND src = ?", ("u", "v", "s"))):
        plan = [r[-1] for r in _rows(path, "EXPLAIN QUERY PLAN " + _CHAIN.format(where=where)
                                     + f" SELECT {_COLUMNS} FROM labels WHERE seq IN chain ORDER BY seq", params)]
        assert any(p.startswith("SEARCH label_state USING PRIMARY KEY") for p in plan), plan
        assert "SEARCH p USING INTEGER PRIMARY KEY (rowid=?)" in plan, plan
        assert not any(p.startswith("SCAN label") or "TEMP B-TREE" in p for p in plan), plan


async def test_migration_17_links_the_labels_an_older_version_wrote(tmp_path):
    """A log written before migration 17 (labels_uri, no label_prev) keeps every label's history."""
    path = tmp_path / "old.sqlite3"
    with sqlite3.connect(path) as db:
        for script in MIGRATIONS[:16]:
            for statement in _statements(script):
                db.execute(statement)
        db.execute("PRAGMA user_version = 16")
        rows = []
        for seq in range(1, 301):
            src = SRC if seq < 250 else "did:plc:renamed"
            rows.append((seq, src, uri(seq % 7), ["porn", "spam"][seq % 2], seq % 5 == 0,
                         f"2025-01-01T00:00:{seq % 60:02d}Z", b"s" * 64, "did:key:z", b"c"))
        db.executemany("INSERT INTO labels (seq, src, uri, val, neg, cts, sig, key_id, cbor)"
                       " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
        latest = {}
        for seq, src, u, val, *_ in rows:
            latest[(u, val, src)] = seq
        db.executemany("INSERT INTO label_state (uri, val, src, seq) VALUES (?, ?, ?, ?)",
                       [(*k, s) for k, s in latest.items()])
    before = {u: _rows(path, HISTORY_BY_SCAN, (u,)) for u in {r[2] for r in rows}}
    conn = await open_db(path)  # migrates
    await conn.close()
    assert _rows(path, "PRAGMA user_version") == [(len(MIGRATIONS),)]
    assert _rows(path, "SELECT count(*) FROM label_prev") == [(300 - len(latest),)]
    log = await LabelLog.open(path, SigningKey.generate(), SRC)
    try:
        for u, expected in before.items():
            assert [s.seq for s in await log.history(u)] == [r[0] for r in expected]
        written = await log.emit(uri(1), "porn", neg=True)  # the chain goes on from the migrated links
        assert [s.seq for s in await log.history(uri(1))][-1] == written.seq
        assert _rows(path, "SELECT prev FROM label_prev WHERE seq = ?", (written.seq,)) == \
            [(latest[(uri(1), "porn", SRC)],)]
    finally:
        await log.close()
