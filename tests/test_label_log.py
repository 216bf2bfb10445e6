"""The label log's write rules: append-only, signed, idempotent, reversible, durable on reopen."""

from __future__ import annotations

import sqlite3

import pytest

from firehose_mod.labels import LabelError, verify_label
from firehose_mod.store import EmitRequest, LabelLog

from tests.conftest import uri

pytestmark = pytest.mark.anyio
LABEL_LOG_BACKENDS = ("sqlite", "postgres")  # tests/conftest.py; PostgreSQL's own: tests/test_pg_label_log.py

CID = "bafyreifxykqhed72s26cr4i64rxvrtofeqrly3j4vjzbkvo3ckkjbxjqtq"


async def test_emit_signs_with_the_labeler_key_and_numbers_from_one(label_log: LabelLog):
    first = await label_log.emit(uri(1), "porn")
    second = await label_log.emit(uri(2), "copyright-violation", cid=CID)
    assert (first.seq, second.seq) == (1, 2)
    assert first.label.src == label_log.src
    assert first.key_id == label_log.key.did_key
    assert verify_label(label_log.key.did_key, first.label)
    assert verify_label(label_log.key.did_key, second.label) and second.label.cid == CID


async def test_emitting_a_label_in_force_is_a_no_op(label_log: LabelLog):
    assert await label_log.emit(uri(1), "porn") is not None
    assert await label_log.emit(uri(1), "porn") is None
    assert await label_log.head() == 1
    # another value, another subject or a new record version is a real change
    assert await label_log.emit(uri(1), "sexual") is not None
    assert await label_log.emit(uri(2), "porn") is not None
    assert (await label_log.emit(uri(1), "porn", cid=CID)).seq == 4


async def test_negation_only_for_a_label_in_force_and_relabel_after_it(label_log: LabelLog):
    assert await label_log.emit(uri(1), "porn", neg=True) is None  # nothing to negate
    await label_log.emit(uri(1), "porn")
    neg = await label_log.emit(uri(1), "porn", neg=True)
    assert neg is not None and neg.label.neg and verify_label(label_log.key.did_key, neg.label)
    assert await label_log.emit(uri(1), "porn", neg=True) is None  # already negated
    again = await label_log.emit(uri(1), "porn")
    assert again is not None and not again.label.neg
    assert [s.label.neg for s in await label_log.history(uri(1))] == [False, True, False]


async def test_expired_label_is_not_in_force(label_log: LabelLog):
    await label_log.emit(uri(1), "porn", exp="2020-01-01T00:00:00.000Z")
    assert await label_log.emit(uri(1), "porn", neg=True) is None  # expired: nothing in force
    renewed = await label_log.emit(uri(1), "porn")
    assert renewed is not None and renewed.label.exp is None
    future = await label_log.emit(uri(1), "porn", exp="2999-01-01T00:00:00.000Z")
    assert future is not None  # a new expiry is a change
    assert await label_log.emit(uri(1), "porn", exp="2999-01-01T00:00:00.000Z") is None


@pytest.mark.parametrize(
    ("subject", "val", "cid", "exp", "match"),
    [
        ("https://example.com", "porn", None, None, "neither an at:// URI nor a DID"),
        (uri(1), "Porn", None, None, "lowercase"),
        (uri(1), "x" * 129, None, None, "at most 128"),
        (uri(1), "has space", None, None, "lowercase"),
        (uri(1), "porn", "not-a-cid", None, "not a valid CID"),
        ("did:plc:abc", "porn", CID, None, "needs an at:// subject"),
        (uri(1), "porn", None, "tomorrow", "RFC 3339"),
    ],
)
async def test_invalid_fields_are_refused_with_a_reason(label_log, subject, val, cid, exp, match):
    with pytest.raises(LabelError, match=match):
        await label_log.emit(subject, val, cid=cid, exp=exp)
    assert await label_log.head() == 0


async def test_emit_many_is_one_transaction_and_skips_no_ops(label_log: LabelLog):
    written = await label_log.emit_many([EmitRequest(uri(i), "porn") for i in range(5)] + [EmitRequest(uri(0), "porn")])
    assert [s.seq for s in written] == [1, 2, 3, 4, 5]
    with pytest.raises(LabelError):
        await label_log.emit_many([EmitRequest(uri(9), "porn"), EmitRequest(uri(10), "BAD")])
    assert await label_log.head() == 5  # validation happens before anything is written


@pytest.mark.backends("sqlite")  # opens the SQLite file; on PostgreSQL: tests/test_pg_label_log.py
async def test_the_log_is_append_only_at_the_database_level(label_log: LabelLog, settings):
    await label_log.emit(uri(1), "porn")
    db = sqlite3.connect(settings.db_path)
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        db.execute("DELETE FROM labels")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        db.execute("UPDATE labels SET val = 'x'")
    db.close()


@pytest.mark.backends("sqlite")  # opens the SQLite file; on PostgreSQL: tests/test_pg_label_log.py
async def test_labels_and_their_signatures_survive_reopening(settings, label_log: LabelLog):
    stored = await label_log.emit(uri(1), "porn", exp="2999-01-01T00:00:00Z")
    await label_log.close()
    reopened = await LabelLog.open(settings.db_path, label_log.key, label_log.src)
    try:
        (again,) = await reopened.read_after(0, 10)
        assert again == stored  # exact strings, as signed: cts/exp never re-rendered
        assert again.label.exp == "2999-01-01T00:00:00Z"
        assert verify_label(label_log.key.did_key, again.label)
    finally:
        await reopened.close()
    label_log._reader = label_log._writer = _Closed()  # the fixture closes it again


class _Closed:
    async def close(self):
        pass


async def test_a_rotated_key_re_signs_old_labels_on_read(settings, label_log: LabelLog):
    from firehose_mod.labels import SigningKey

    old = await label_log.emit(uri(1), "porn")
    label_log.key = SigningKey.generate()
    ((seq, cbor),) = await label_log.cbor_after(0, 10)
    import libipld

    from firehose_mod.labels import Label

    sent = Label.from_wire(libipld.decode_dag_cbor(cbor))
    assert seq == old.seq and sent.cts == old.label.cts
    assert verify_label(label_log.key.did_key, sent)
    assert not verify_label(old.key_id, sent)
    (stored,) = await label_log.read_after(0, 10)
    assert stored.key_id == old.key_id  # the stored original is untouched


async def test_records_written_with_labels_commit_or_roll_back_together(label_log: LabelLog):
    async def explode(db, written):
        assert [s.seq for s in written] == [1]
        raise RuntimeError("decision store unreachable")

    with pytest.raises(RuntimeError):
        await label_log.emit_many([EmitRequest(uri(1), "porn")], also=explode)
    assert await label_log.head() == 0  # no label without the decision that explains it
    seen = []

    async def note(db, written):
        seen.extend(s.seq for s in written)

    await label_log.emit_many([EmitRequest(uri(1), "porn")], also=note)
    assert seen == [1] and await label_log.head() == 1
