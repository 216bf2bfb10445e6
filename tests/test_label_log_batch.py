"""Batched label writes (issue 19): one thread hop per batch, explicit seqs, the same rules as one at a time."""

from __future__ import annotations

import os
import resource
import sqlite3

import anyio
import pytest
from structlog.testing import capture_logs

from firehose_mod.labels import verify_label
from firehose_mod.store import EmitRequest, LabelLog
from firehose_mod.store import label_log as label_log_module
from firehose_mod.store import wal_checkpoint
from firehose_mod.store.decisions import DecisionRow
from tests.conftest import Running, uri
from tests.stream_client import Received, collect, subscribe

pytestmark = pytest.mark.anyio


def _rows(log: LabelLog, sql: str, params: tuple = ()) -> list[tuple]:
    with sqlite3.connect(log._path) as db:
        return db.execute(sql, params).fetchall()


async def test_a_batch_takes_consecutive_seqs_and_moves_sqlite_sequence(label_log: LabelLog):
    await label_log.emit(uri(0), "porn")
    written = await label_log.emit_many([EmitRequest(uri(i), "porn") for i in range(1, 1001)])
    assert [s.seq for s in written] == list(range(2, 1002))
    assert await label_log.head() == 1001
    assert _rows(label_log, "SELECT seq FROM sqlite_sequence WHERE name = 'labels'") == [(1001,)]
    assert all(verify_label(label_log.key.did_key, s.label) for s in written[:: 97])
    assert _rows(label_log, "SELECT count(*), min(seq), max(seq) FROM label_state") == [(1001, 1, 1001)]
    # what the stream reads is what the writer handed its listeners
    assert await label_log.cbor_after(1, 1000) == [(s.seq, s.cbor) for s in written[:1000]]


async def test_a_batch_after_a_raised_seq_floor_starts_above_it(label_log: LabelLog):
    await label_log.emit(uri(0), "porn")
    await label_log.raise_seq_floor(5000)
    written = await label_log.emit_many([EmitRequest(uri(i), "porn") for i in range(1, 4)])
    assert [s.seq for s in written] == [5001, 5002, 5003]
    assert await label_log.head() == 5003


async def test_a_batch_follows_the_rules_in_request_order(label_log: LabelLog):
    await label_log.emit(uri(1), "porn")
    written = await label_log.emit_many([
        EmitRequest(uri(1), "porn"),              # in force: no-op
        EmitRequest(uri(2), "porn"),              # new
        EmitRequest(uri(2), "porn"),              # repeat within the batch: no-op
        EmitRequest(uri(2), "porn", neg=True),    # negates the label written just above
        EmitRequest(uri(3), "porn", neg=True),    # nothing in force: no negation
        EmitRequest(uri(1), "porn", neg=True),
        EmitRequest(uri(1), "porn"),              # relabel after the negation
    ])
    assert [(s.label.uri, s.label.neg) for s in written] == [
        (uri(2), False), (uri(2), True), (uri(1), True), (uri(1), False)]
    assert [s.seq for s in written] == [2, 3, 4, 5]
    assert [x.val for x in await label_log.in_force(uri(1))] == ["porn"]
    assert await label_log.in_force(uri(2)) == []
    assert _rows(label_log, "SELECT uri, seq FROM label_state ORDER BY seq") == [(uri(2), 3), (uri(1), 5)]


async def test_an_import_batch_skips_what_the_log_already_holds(label_log: LabelLog):
    reqs = [EmitRequest(uri(i), "porn", cts=f"2024-01-01T00:00:0{i}.000Z") for i in range(5)]
    assert len(await label_log.emit_many(reqs)) == 5
    await label_log.emit(uri(0), "porn", neg=True)  # ours, newer than the imported label
    again = await label_log.emit_many(reqs)
    assert again == []  # held already, or older than our own latest word on (uri, val)
    assert [s.label.cts for s in await label_log.history(uri(1))] == ["2024-01-01T00:00:01.000Z"]


async def test_a_failing_also_rolls_back_the_whole_batch(label_log: LabelLog):
    await label_log.emit(uri(0), "porn")

    async def also(decisions, written) -> None:
        await decisions.write([DecisionRow(s.label.uri, None, "label", s.label.val, "policy", label_seq=s.seq)
                               for s in written])
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        await label_log.emit_many([EmitRequest(uri(i), "porn") for i in range(1, 300)], also=also)
    assert await label_log.head() == 1
    assert _rows(label_log, "SELECT count(*) FROM label_state") == [(1,)]
    assert _rows(label_log, "SELECT count(*) FROM decisions") == [(0,)]
    written = await label_log.emit_many([EmitRequest(uri(1), "porn")])
    assert written[0].seq == 2


async def test_also_runs_while_the_batch_is_signed_and_a_failure_then_leaves_the_signer_sound(label_log: LabelLog):
    # `also` sees each label's seq and fields before its signature exists (the helper signs
    # meanwhile); what emit_many returns is signed. A batch whose `also` raises with the helper
    # half-way leaves nothing behind: the next batches are signed right.
    seen: list = []

    async def also(decisions, written) -> None:
        seen.extend(written)
        await decisions.write([DecisionRow(s.label.uri, None, "label", s.label.val, "policy", label_seq=s.seq)
                               for s in written])

    async def failing(decisions, written) -> None:
        await also(decisions, written)
        raise RuntimeError("boom")

    written = await _batches_until_the_helper_signs(label_log, 0, 1000)  # the helper up and signing
    for first in (10_000, 20_000):
        with pytest.raises(RuntimeError):
            await label_log.emit_many([EmitRequest(uri(i), "spam") for i in range(first, first + 2000)], also=failing)
    assert await label_log.head() == len(written)
    seen.clear()
    written = await label_log.emit_many([EmitRequest(uri(i), "spam") for i in range(30_000, 32_000)], also=also)
    assert [(s.seq, s.label.uri, s.label.val, s.label.cts) for s in seen] == [
        (s.seq, s.label.uri, s.label.val, s.label.cts) for s in written]
    assert all(s.label.sig is None and s.cbor == b"" for s in seen)
    assert all(verify_label(label_log.key.did_key, s.label) for s in written)
    stored = await label_log.read_after(written[0].seq - 1, 5000)
    assert [(s.seq, s.label, s.cbor) for s in stored] == [(s.seq, s.label, s.cbor) for s in written]
    assert _rows(label_log, "SELECT count(*) FROM decisions") == [(2000,)]


async def test_a_large_batch_of_mostly_no_ops_writes_the_rest_signed_right(label_log: LabelLog):
    # A batch the helper signs is sent to it before the state read decides what is written: the
    # labels written must carry their own signatures, whatever was skipped around them.
    await _batches_until_the_helper_signs(label_log, 0, 600)
    held = await label_log.head()
    requests = []
    for i in range(1200):  # every other request is a label already in force: a no-op
        requests.append(EmitRequest(uri(i // 2), "porn") if i % 2 else EmitRequest(uri(50_000 + i), "spam"))
    requests += [EmitRequest(uri(7), "porn")] * 50  # a run of no-ops: whole chunks with nothing written
    requests.append(EmitRequest(uri(7), "porn", neg=True))
    written = await label_log.emit_many(requests)
    assert [(s.label.uri, s.label.val, s.label.neg) for s in written] == (
        [(uri(50_000 + i), "spam", False) for i in range(0, 1200, 2)] + [(uri(7), "porn", True)])
    assert [s.seq for s in written] == list(range(held + 1, held + 602))
    assert all(verify_label(label_log.key.did_key, s.label) for s in written)
    stored = await label_log.read_after(held, 1000)
    assert [(s.seq, s.label, s.cbor) for s in stored] == [(s.seq, s.label, s.cbor) for s in written]
    no_ops = [r for r in requests[1:1200:2] if r.uri != uri(7)]  # uri(7)'s porn was just negated
    assert await label_log.emit_many(no_ops) == []  # all no-ops: nothing written, nothing left over
    after = await label_log.emit_many([EmitRequest(uri(90_000 + i), "spam") for i in range(500)])
    assert all(verify_label(label_log.key.did_key, s.label) for s in after)


async def test_decisions_of_a_batch_commit_with_it_in_order(label_log: LabelLog):
    async def also(decisions, written) -> None:
        await decisions.write([DecisionRow(s.label.uri, None, "label", s.label.val, "policy", label_seq=s.seq,
                                           scanners={"text": "1"}) for s in written])

    await label_log.emit_many([EmitRequest(uri(i), "porn") for i in range(500)], also=also)
    rows = _rows(label_log, "SELECT label_seq, scanners FROM decisions ORDER BY id")
    assert rows == [(seq, '{"text": "1"}') for seq in range(1, 501)]


async def test_small_writes_log_each_label_large_ones_a_summary(label_log: LabelLog):
    with capture_logs() as logs:
        await label_log.emit(uri(0), "porn")
        await label_log.emit_many([EmitRequest(uri(i), "porn") for i in range(1, 501)])
    events = [e["event"] for e in logs if e["event"].startswith("label")]
    assert events == ["label.written", "labels.written"]
    summary = next(e for e in logs if e["event"] == "labels.written")
    assert (summary["count"], summary["first_seq"], summary["last_seq"]) == (500, 2, 501)


async def test_the_state_lookup_searches_label_state_by_key(label_log: LabelLog):
    """Issue 19: `(uri, val) IN (VALUES ...)` was planned as a scan of label_state, so each batch got
    slower as the log grew. The lookup must search the primary key."""
    await label_log.emit_many([EmitRequest(uri(i), "porn") for i in range(50)])
    captured: list[str] = []
    conn = sqlite3.connect(label_log._path)
    conn.set_trace_callback(captured.append)
    try:
        label_log._currents(conn, {(uri(1), "porn"), (uri(2), "porn")})
        plan = conn.execute("EXPLAIN QUERY PLAN " + captured[-1]).fetchall()
    finally:
        conn.close()
    details = [row[-1] for row in plan]
    assert "SEARCH s USING PRIMARY KEY (uri=? AND val=? AND src=?)" in details, details
    assert not any(d.startswith("SCAN s") for d in details), details


# -- the live stream while a large batch is written ---------------------------------------------

N = 100_000


async def _live_subscriber(running: Running):
    ws = await subscribe(running.ws_base)
    with anyio.fail_after(10):
        while not any(s.state == "live" for s in running.server.feed.subscribers.values()):
            await anyio.sleep(0.01)
    return ws


async def test_a_live_subscriber_sees_a_100k_label_batch_once_and_in_order(running: Running):
    await running.log.emit(uri(10_000_000), "porn")  # something before: the subscriber is live-only
    ws = await _live_subscriber(running)
    try:
        got = Received()
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: collect(ws, got, count=N, timeout=300))
            written = await running.log.emit_many([EmitRequest(uri(i), "porn") for i in range(N)])
        assert len(written) == N
        assert got.seqs == list(range(2, N + 2))
        assert [lab.uri for lab in got.labels] == [uri(i) for i in range(N)]
    finally:
        await ws.close()


async def test_subscribers_see_every_label_once_while_batches_are_written(running: Running):
    """A live subscriber from the start, and one that connects with cursor=0 half-way through
    (backfill, then live) while 1,000-label batches keep committing."""
    live = await _live_subscriber(running)
    got_live, got_late = Received(), Received()

    async def late() -> None:
        while await running.log.head() < N // 2:
            await anyio.sleep(0.01)
        async with subscribe(running.ws_base, 0) as ws:
            await collect(ws, got_late, count=N, timeout=300)

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: collect(live, got_live, count=N, timeout=300))
            tg.start_soon(late)
            for lo in range(0, N, 1000):
                await running.log.emit_many([EmitRequest(uri(i), "porn") for i in range(lo, lo + 1000)])
        for got in (got_live, got_late):
            assert got.seqs == list(range(1, N + 1))
            assert [lab.uri for lab in got.labels[:: 997]] == [uri(i) for i in range(0, N, 997)]
    finally:
        await live.close()


# -- signing on two cores (labels/sign_worker.py) and the background checkpoint -----------------------
def _payloads(n: int) -> list[bytes]:
    return [f"label {i} of a batch".encode() * (1 + i % 5) for i in range(n)]


def test_the_parallel_signer_gives_the_signatures_the_key_gives():
    from firehose_mod.labels.sign_worker import ParallelSigner
    from firehose_mod.labels.signing import SigningKey, verify_bytes

    key = SigningKey.generate()
    signer = ParallelSigner(key.curve, key._k1().secret, key.sign_bytes)
    try:
        sizes = [1000, 97, 5, 2500]  # several batches on one helper, big and small
        while sizes:
            payloads = _payloads(sizes.pop(0))
            ran = []
            sigs = signer.sign_many(payloads, meanwhile=lambda: ran.append(True))
            assert ran == [True]
            # RFC 6979: deterministic, so byte for byte the key's own; and each verifies, low-S
            assert sigs == [key.sign_bytes(p) for p in payloads]
            assert all(verify_bytes(key.did_key, p, s) for p, s in zip(payloads[::37], sigs[::37], strict=True))
            if not sizes and signer.stats["helper"] == 0 and sum(signer.stats.values()) < 40_000:
                sizes.append(1000)  # the helper still starting (a loaded machine): nobody waits for it
        assert signer.stats["helper"] > 0 and signer.stats["caller"] > 0
        assert sum(signer.stats.values()) % 1000 == (97 + 5 + 2500) % 1000
    finally:
        signer.close()
    assert signer._proc is None


def test_a_dead_signing_helper_costs_nothing_but_time():
    from firehose_mod.labels.sign_worker import ParallelSigner
    from firehose_mod.labels.signing import SigningKey

    key = SigningKey.generate()
    problems: list[str] = []
    signer = ParallelSigner(key.curve, key._k1().secret, key.sign_bytes, on_error=problems.append)
    try:
        payloads = _payloads(1000)
        assert signer.sign_many(payloads) == [key.sign_bytes(p) for p in payloads]
        signer.sign_many(payloads, meanwhile=lambda: signer._proc.kill())  # dies with chunks in flight
        assert problems and signer._proc is None
        assert signer.sign_many(payloads[:500]) == [key.sign_bytes(p) for p in payloads[:500]]
        assert signer._proc is None  # not restarted at once: the caller signs alone for a while
    finally:
        signer.close()


def test_a_stopped_signing_helper_leaves_the_batch_to_the_caller_without_stalling_it():
    # The caller never waits on a helper that does not answer: it signs the chunks itself (the
    # helper skips what the caller took, by the board), and the helper, once it runs again, is used
    # again with nothing of the old batches mixed in.
    import signal

    from firehose_mod.labels.sign_worker import ParallelSigner
    from firehose_mod.labels.signing import SigningKey

    key = SigningKey.generate()
    problems: list[str] = []
    signer = ParallelSigner(key.curve, key._k1().secret, key.sign_bytes, on_error=problems.append)
    try:
        payloads = _payloads(1000)
        want = [key.sign_bytes(p) for p in payloads]
        assert signer.sign_many(payloads) == want
        proc = signer._proc
        proc.send_signal(signal.SIGSTOP)
        try:
            for _ in range(3):
                before = dict(signer.stats)
                assert signer.sign_many(payloads) == want
                assert signer.stats["caller"] - before["caller"] == 1000  # all of it here
        finally:
            proc.send_signal(signal.SIGCONT)
        for _ in range(40):
            before = signer.stats["helper"]
            assert signer.sign_many(payloads) == want
            if signer.stats["helper"] > before:
                break
        else:
            raise AssertionError(f"the helper never signed again: {signer.stats}")
        assert problems == [] and signer._proc is proc
    finally:
        signer.close()


def test_a_p256_key_signs_in_the_caller():
    from firehose_mod.labels.sign_worker import ParallelSigner
    from firehose_mod.labels.signing import SigningKey, verify_bytes

    key = SigningKey.generate("p256")
    signer = ParallelSigner(key.curve, None, key.sign_bytes)
    payloads = _payloads(200)
    sigs = signer.sign_many(payloads)
    assert signer._proc is None and signer.stats == {"helper": 0, "caller": 200}
    assert all(verify_bytes(key.did_key, p, s) for p, s in zip(payloads, sigs, strict=True))


async def _batches_until_the_helper_signs(label_log: LabelLog, first: int, size: int) -> list:
    """Batches of `size` labels from uri(first) on until the signing helper has signed part of one:
    the helper starts with the first large batch, and the writer never waits for it, so the first
    batches may be signed by the writer alone while the helper starts up."""
    written: list = []
    for _ in range(40):
        written += await label_log.emit_many([EmitRequest(uri(i), "porn") for i in range(first, first + size)])
        first += size
        if label_log._signer.stats["helper"] > 0:
            return written
    raise AssertionError(f"the signing helper signed nothing in 40 batches: {label_log._signer.stats}")


async def test_a_big_batch_is_signed_in_two_processes_and_every_label_verifies(label_log: LabelLog):
    written = await label_log.emit(uri(0), "porn")
    assert label_log._signer is None or label_log._signer._proc is None  # one label: no helper
    written = await _batches_until_the_helper_signs(label_log, 1, 3000)
    assert label_log._signer._proc is not None
    assert label_log._signer.stats["caller"] > 0  # two processes: the writer signed its share too
    assert all(verify_label(label_log.key.did_key, s.label) for s in written)
    stored = await label_log.read_after(1, len(written) + 10)
    assert [(s.seq, s.label, s.cbor) for s in stored] == [(s.seq, s.label, s.cbor) for s in written]
    proc = label_log._signer._proc
    await label_log.close()
    assert proc.poll() is not None  # close() ends the helper


async def test_a_big_batch_is_signed_in_a_process_holding_more_than_1024_descriptors(label_log: LabelLog):
    # A daemon with a thousand subscribers holds a socket each: select() cannot watch an fd past 1024.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < 1200:
        pytest.skip(f"the descriptor limit ({hard}) is too low to hold 1,100 descriptors")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1200), hard))
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    try:
        written = await _batches_until_the_helper_signs(label_log, 0, 500)
        assert label_log._signer._proc is not None
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert len(written) % 500 == 0 and all(verify_label(label_log.key.did_key, s.label) for s in written)


def _wal(label_log: LabelLog):
    return label_log._path.parent / f"{label_log._path.name}-wal"


async def test_large_batches_checkpoint_in_the_background_and_the_wal_starts_over(label_log: LabelLog, monkeypatch):
    # The WAL starts over only at a transaction whose read began with every frame copied back
    # (SQLite's walRestartLog): once it holds more than WAL_RESTART_FRAMES, a batch lets the
    # checkpoint finish before its BEGIN. With a threshold under one batch, and each background
    # checkpoint finished before the next batch (as it is when batches are far apart), every batch
    # writes from the WAL's start.
    monkeypatch.setattr(label_log_module, "WAL_RESTART_FRAMES", 64)
    wal = _wal(label_log)
    sizes = []
    for k in range(4):
        await label_log.emit_many([EmitRequest(uri(k * 1000 + i), "porn") for i in range(1000)])
        sizes.append(wal.stat().st_size)
        await label_log._checkpointer.wait()
        busy, frames, copied = label_log._checkpointer.last
        assert busy == 0 and frames == copied  # each checkpoint copied the whole WAL
    # the WAL starts over instead of growing with every batch: it never holds two batches (four
    # batches without a restart make it 3x the first)
    assert max(sizes) < 2 * sizes[0], sizes
    assert await label_log.count() == 4000


async def test_a_restart_copies_commits_made_after_the_last_checkpoint_started(label_log: LabelLog, monkeypatch):
    # No background checkpoint (as when one was still running at each commit): two batches pile
    # up in the WAL. Before the next BEGIN past the threshold the label log runs the checkpoint
    # those commits missed, so the next transaction writes from the WAL's start: the file does not
    # grow and the WAL then holds that one batch.
    monkeypatch.setattr(wal_checkpoint, "CHECKPOINT_EVERY_LABELS", 10**9)
    wal = _wal(label_log)
    for k in range(2):
        await label_log.emit_many([EmitRequest(uri(k * 1000 + i), "porn") for i in range(1000)])
    two = wal.stat().st_size
    with sqlite3.connect(label_log._path) as conn:
        (page_size,) = conn.execute("PRAGMA page_size").fetchone()
    frames_two = (two - 32) // (24 + page_size)  # a WAL never started over: header, then frames
    monkeypatch.setattr(label_log_module, "WAL_RESTART_FRAMES", 64)
    label_log._checkpointer.last = (0, frames_two, 0)  # the size a finished checkpoint reported
    await label_log.emit_many([EmitRequest(uri(2000 + i), "porn") for i in range(1000)])
    assert wal.stat().st_size == two  # written over the start, not appended
    with sqlite3.connect(label_log._path) as conn:
        (busy, frames_three, copied) = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    assert busy == 0 and 0 < frames_three < frames_two * 2 // 3, (frames_two, frames_three)
    assert await label_log.count() == 3000


async def test_a_reader_holding_an_old_snapshot_does_not_stall_batches_past_the_restart_point(
        label_log: LabelLog, monkeypatch):
    # A subscriber's backfill or a long report holds a read snapshot: checkpoints cannot copy past
    # it and the WAL cannot start over. Batches past the restart threshold must go on (the catch-up
    # runs at most one more checkpoint, it does not loop), and the WAL starts over once the reader
    # is gone.
    monkeypatch.setattr(label_log_module, "WAL_RESTART_FRAMES", 64)
    wal = _wal(label_log)
    await label_log.emit_many([EmitRequest(uri(i), "porn") for i in range(1000)])
    reader = sqlite3.connect(label_log._path, isolation_level=None)
    try:
        reader.execute("BEGIN")
        assert reader.execute("SELECT count(*) FROM labels").fetchone() == (1000,)
        with anyio.fail_after(60):
            for k in range(1, 5):
                await label_log.emit_many([EmitRequest(uri(k * 1000 + i), "porn") for i in range(1000)])
        assert reader.execute("SELECT count(*) FROM labels").fetchone() == (1000,)  # still its snapshot
        await label_log._checkpointer.wait()
        held = wal.stat().st_size
    finally:
        reader.close()
    for k in range(5, 8):  # reader gone: the next catch-ups copy everything and the WAL starts over
        await label_log.emit_many([EmitRequest(uri(k * 1000 + i), "porn") for i in range(1000)])
        await label_log._checkpointer.wait()
    assert wal.stat().st_size == held  # written over its start, not grown by three more batches
    assert await label_log.count() == 8000


def test_k1_signer_gives_coincurves_signature_low_s():
    from firehose_mod.labels.signing import CURVES, SigningKey, k1_chunk_signer, k1_signer, verify_bytes

    key = SigningKey.generate()
    sign = k1_signer(key._k1().secret)
    assert sign is not None
    for p in _payloads(200):
        sig = sign(p)
        assert sig == key._k1().sign_recoverable(p)[:64] == key.sign_bytes(p)
        assert int.from_bytes(sig[32:], "big") <= CURVES["secp256k1"][1] // 2
        assert verify_bytes(key.did_key, p, sig)
    sign_chunk = k1_chunk_signer(key._k1().secret)  # the same signatures, a chunk at a time
    for n in (0, 1, 32, 33):
        payloads = _payloads(n)
        assert sign_chunk(payloads) == b"".join(sign(p) for p in payloads)
