"""`firehose-mod db copy`: a SQLite label log onto PostgreSQL, resumable and verified.

The source is read in one read-only snapshot (store/label_export.py): its head H (the last
seq, or a raised seq floor above it) fixes what is copied. The copy holds the PostgreSQL label
log's write lock throughout and writes in batches, each one transaction (store/pg/copy.py), with
the labels' own seq, so the wire CBOR, signatures and cursors are the same on both sides.

Resume: before writing, the target's highest seq M is where a previous (killed) run stopped;
the copy goes on from the first source label above M. The target must be a prefix of the
source: same count up to M, and the labels at its lowest, highest and a few random seqs equal
field for field; the same for decisions by id. Anything else is refused (`CopyRefused`).

Every other table both databases have (source cursors, tracks, the scan queue, operators,
reports, the review desk, ...) follows the decisions: ops/db_copy_tables.py, checked for
foreign rows before anything is written, merged by primary key, its id sequences set past the
source's ids, and compared row for row at the end.

Verification, after the copy: label counts and heads equal; per range of 10,000 seqs, the
count, lowest, highest seq and a digest of every column of every label equal on both sides (so
the seq sets and the bytes are equal); the same for label_state (by seq) and decisions (by id);
and a random sample of labels read back from PostgreSQL whose signatures are checked against
the did:key of their key_id, and whose columns match their stored CBOR.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from hashlib import blake2b

import libipld
import structlog

from firehose_mod.labels.model import Label
from firehose_mod.labels.signing import verify_label
from firehose_mod.ops.db_copy_tables import CopyRefused, TableCopier
from firehose_mod.store.label_export import SqliteLabelSource
from firehose_mod.store.pg.copy import PgCopyTarget

log = structlog.get_logger(__name__)

BATCH = 5000
RANGE = 10_000  # seqs (ids) per verified range
PROBES = 16  # random rows compared before resuming into a non-empty target
READ_PAGE = 10_000

Progress = Callable[[str, int, int], None]  # (phase, done, total)


@dataclass
class Verification:
    labels: int = 0
    head: int = 0
    ranges: int = 0  # label ranges compared (count, min, max, digest)
    state_rows: int = 0
    decisions: int = 0
    sampled: int = 0  # signatures checked on the PostgreSQL side
    keys: list[str] = field(default_factory=list)  # the did:keys the sampled labels were signed by
    tables: int = 0  # other tables compared row for row
    table_rows: int = 0
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class CopyReport:
    source: str
    target: str
    source_head: int  # the snapshot's head: the next seq on PostgreSQL is source_head + 1
    source_labels: int
    source_decisions: int
    resumed_from: int  # the target's highest seq before this run (0: a fresh copy)
    copied_labels: int = 0
    copied_decisions: int = 0
    batches: int = 0
    seconds: float = 0.0
    source_head_now: int | None = None  # the source's head after the copy (above source_head: a daemon wrote)
    verification: Verification | None = None
    copied_rows: int = 0  # the other tables: rows inserted, updated or deleted
    tables: list[dict] = field(default_factory=list)  # one entry per table (ops/db_copy_tables.py)
    not_on_postgresql: dict[str, int] = field(default_factory=dict)  # table -> its rows left in SQLite

    @property
    def left_behind(self) -> int:
        """Seqs the source gave out after the snapshot (a daemon kept writing): copy again to take them."""
        return max(0, (self.source_head_now or 0) - self.source_head)

    def as_dict(self) -> dict:
        out = asdict(self)
        out["left_behind"] = self.left_behind
        if self.verification is not None:
            out["verification"]["ok"] = self.verification.ok
        return out


async def copy_label_log(source: SqliteLabelSource, target: PgCopyTarget, *, source_name: str, target_name: str,
                         batch: int = BATCH, sample: int = 1000, verify: bool = True,
                         progress: Progress | None = None, tables: bool = True) -> CopyReport:
    """Copy `source` into `target` (resuming a previous run), then verify; see the module docstring.
    `tables`: the other tables too (ops/db_copy_tables.py)."""
    await target.hold_write_lock()
    try:
        if tables:
            await target.hold_source_lock()
        return await _copy_locked(source, target, source_name=source_name, target_name=target_name, batch=batch,
                                  sample=sample, verify=verify, progress=progress, tables=tables)
    finally:
        await target.release_write_lock()


async def _copy_locked(source: SqliteLabelSource, target: PgCopyTarget, *, source_name: str, target_name: str,
                       batch: int, sample: int, verify: bool, progress: Progress | None, tables: bool) -> CopyReport:
    started = time.monotonic()
    snap = source.snapshot
    status = await target.status()
    await _check_prefix(source, target, status)
    copier = TableCopier(source, target, batch=batch, progress=progress) if tables else None
    if copier is not None:  # refuses a foreign target before anything is written
        await copier.plan()
        await copier.preflight(proven=bool(status["labels"] or status["decisions"]))
    report = CopyReport(source=source_name, target=target_name, source_head=snap.head, source_labels=snap.labels,
                        source_decisions=snap.decisions, resumed_from=status["max_seq"])
    log.info("db_copy.start", source=source_name, target=target_name, source_head=snap.head, labels=snap.labels,
             decisions=snap.decisions, resumed_from=status["max_seq"], target_labels=status["labels"])
    report.copied_labels, n = await _copy_labels(source, target, status, batch, progress)
    report.batches += n
    report.copied_decisions, n = await _copy_decisions(source, target, status["max_decision"], batch, progress)
    report.batches += n
    if copier is not None:
        for t in await copier.copy():
            report.copied_rows += t.inserted + t.updated + t.deleted
            report.batches += t.batches
        report.not_on_postgresql = dict(copier.not_on_postgresql)
    report.seconds = round(time.monotonic() - started, 3)
    log.info("db_copy.copied", labels=report.copied_labels, decisions=report.copied_decisions,
             rows=report.copied_rows, batches=report.batches, seconds=report.seconds)
    if report.not_on_postgresql:
        log.warning("db_copy.tables_not_on_postgresql", tables=report.not_on_postgresql)
    if verify:
        report.verification = await verify_copy(source, target, sample=sample, progress=progress, tables=copier)
    if copier is not None:
        report.tables = [t.as_dict() for t in copier.reports.values()]
    report.source_head_now = await source.head_now()
    if report.left_behind:
        log.warning("db_copy.source_moved_on", snapshot_head=snap.head, head_now=report.source_head_now)
    return report


async def _check_prefix(source: SqliteLabelSource, target: PgCopyTarget, status: dict[str, int]) -> None:
    """Refuse unless the target is empty or holds what an earlier copy of this source wrote."""
    snap = source.snapshot
    have, top, head = status["labels"], status["max_seq"], status["head"]
    fix = ("copy into an empty database (createdb a new one and point --to at it), or --from the SQLite log"
           " this database was copied from")
    if top > snap.max_seq or head > snap.head:
        raise CopyRefused(f"the PostgreSQL label log is ahead of this source (its last seq {top}, head {head}; the"
                          f" source's last seq {snap.max_seq}, head {snap.head}): {fix}")
    if have:
        seqs = await target.sample_seqs(PROBES)
        theirs, ours = await target.labels_at(seqs), await source.labels_at(seqs)
        for seq in seqs:
            if theirs[seq] != ours.get(seq):
                what = "has no label" if seq not in ours else "has another label"
                raise CopyRefused(f"the PostgreSQL label log holds labels that are not this source's (at seq {seq}"
                                  f" the source {what}): {fix}")
        if (n := await source.count_between(0, top)) != have:
            raise CopyRefused(f"the PostgreSQL label log holds {have} labels up to seq {top}, the source {n}: {fix}")
    if head > top and await source.count_between(top, head):
        raise CopyRefused(f"the PostgreSQL label log's head is {head} but its last label is {top}, and the source has"
                          f" labels in between (someone raised its seq floor): {fix}")
    if status["max_decision"] > snap.max_decision:
        raise CopyRefused(f"the PostgreSQL decisions table goes up to id {status['max_decision']}, beyond the"
                          f" source's {snap.max_decision}: {fix}")
    if status["decisions"]:
        ids = await target.sample_decision_ids(PROBES)
        theirs, ours = await target.decisions_at(ids), await source.decisions_at(ids)
        if any(theirs[i] != ours.get(i) for i in ids) or \
                await source.count_decisions_upto(status["max_decision"]) != status["decisions"]:
            raise CopyRefused(f"the PostgreSQL decisions table holds rows that are not this source's: {fix}")


async def _copy_labels(source: SqliteLabelSource, target: PgCopyTarget, status: dict[str, int], batch: int,
                       progress: Progress | None) -> tuple[int, int]:
    snap = source.snapshot
    last, head = status["max_seq"], status["head"]
    total = await source.count_between(last, snap.head)
    copied = batches = 0
    while rows := await source.labels_after(last, batch):
        await target.append_labels(rows, expected_head=head)
        last = head = rows[-1][0]
        copied += len(rows)
        batches += 1
        log.debug("db_copy.batch", table="labels", rows=len(rows), last_seq=last)
        if progress is not None:
            progress("labels", copied, total)
    if snap.head > head:  # a raised seq floor (sqlite_sequence) above the last label
        await target.raise_head(snap.head, expected_head=head)
        log.info("db_copy.seq_floor", head=snap.head, last_seq=last)
    return copied, batches


async def _copy_decisions(source: SqliteLabelSource, target: PgCopyTarget, last: int, batch: int,
                          progress: Progress | None) -> tuple[int, int]:
    total = source.snapshot.decisions - await source.count_decisions_upto(last)
    copied = batches = 0
    while rows := await source.decisions_after(last, batch):
        await target.append_decisions(rows, expected_max=last)
        last = rows[-1][0]
        copied += len(rows)
        batches += 1
        if progress is not None:
            progress("decisions", copied, total)
    return copied, batches


# -- verification ------------------------------------------------------------------------
class RangeDigests:
    """Per range of RANGE keys (seq or id): count, lowest, highest, and a digest of every row."""

    def __init__(self) -> None:
        self.ranges: dict[int, list] = {}

    def add(self, key: int, row: tuple) -> None:
        r = self.ranges.get(key // RANGE)
        if r is None:
            r = self.ranges[key // RANGE] = [0, key, key, blake2b(digest_size=16)]
        r[0] += 1
        r[2] = key
        r[3].update(libipld.encode_dag_cbor(list(row)))  # typed and length-prefixed: no two rows collide

    def summary(self) -> dict[int, tuple[int, int, int, str]]:
        return {k: (n, lo, hi, h.hexdigest()) for k, (n, lo, hi, h) in self.ranges.items()}


async def _digest(read_after, key_index: int, progress: Progress | None, phase: str, total: int) -> tuple[RangeDigests, int]:
    digests, last, n = RangeDigests(), 0, 0
    while rows := await read_after(last, READ_PAGE):
        for row in rows:
            digests.add(row[key_index], row)
        last, n = rows[-1][key_index], n + len(rows)
        if progress is not None:
            progress(phase, n, total)
    return digests, n


def _compare(what: str, ours: RangeDigests, theirs: RangeDigests, problems: list[str]) -> int:
    a, b = ours.summary(), theirs.summary()
    differing = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
    for k in differing[:5]:
        problems.append(f"{what} {k * RANGE}..{(k + 1) * RANGE - 1} differ: source (count, min, max, digest)"
                        f" {a.get(k)}, PostgreSQL {b.get(k)}")
    if len(differing) > 5:
        problems.append(f"{what}: {len(differing) - 5} more ranges differ")
    return len(a)


async def verify_copy(source: SqliteLabelSource, target: PgCopyTarget, *, sample: int = 1000,
                      progress: Progress | None = None, tables: TableCopier | None = None) -> Verification:
    """Compare the target with the source snapshot; see the module docstring for what is checked."""
    snap = source.snapshot
    started = time.monotonic()
    v = Verification()
    status = await target.status()
    v.labels, v.head, v.decisions = status["labels"], status["head"], status["decisions"]
    if status["labels"] != snap.labels:
        v.problems.append(f"label counts differ: source {snap.labels}, PostgreSQL {status['labels']}")
    if status["head"] != snap.head:
        v.problems.append(f"heads differ: source {snap.head}, PostgreSQL {status['head']}")
    if status["decisions"] != snap.decisions:
        v.problems.append(f"decision counts differ: source {snap.decisions}, PostgreSQL {status['decisions']}")
    ours, _ = await _digest(source.labels_after, 0, progress, "verify labels (source)", snap.labels)
    theirs, _ = await _digest(target.labels_after, 0, progress, "verify labels (PostgreSQL)", status["labels"])
    v.ranges = _compare("labels", ours, theirs, v.problems)
    ours, v.state_rows = await _digest(source.state_after, 3, None, "", 0)
    theirs, _ = await _digest(target.state_after, 3, None, "", 0)
    _compare("label_state seqs", ours, theirs, v.problems)
    ours, _ = await _digest(source.decisions_after, 0, None, "", 0)
    theirs, _ = await _digest(target.decisions_after, 0, None, "", 0)
    _compare("decision ids", ours, theirs, v.problems)
    await _check_signatures(target, sample, v)
    if tables is not None:
        await tables.verify(v.problems)
        v.tables = len(tables.plans)
        v.table_rows = sum(tables.reports[p.name].target_rows or 0 for p in tables.plans)
    v.seconds = round(time.monotonic() - started, 3)
    log.info("db_copy.verified", ok=v.ok, labels=v.labels, head=v.head, ranges=v.ranges, state_rows=v.state_rows,
             decisions=v.decisions, signatures=v.sampled, seconds=v.seconds, problems=v.problems[:3])
    return v


async def _check_signatures(target: PgCopyTarget, sample: int, v: Verification) -> None:
    """Read `sample` random labels back from PostgreSQL: each stored CBOR decodes to its columns and
    its signature verifies against the did:key that key_id names."""
    bad: list[int] = []
    keys: set[str] = set()
    rows = await target.random_labels(sample)
    for seq, src, uri, cid, val, neg, cts, exp, sig, key_id, cbor in rows:
        label = Label.from_wire(libipld.decode_dag_cbor(cbor))
        columns = Label(src=src, uri=uri, val=val, cts=cts, cid=cid, neg=neg, exp=exp, ver=label.ver, sig=sig)
        keys.add(key_id)
        if label != columns or not verify_label(key_id, label):
            bad.append(seq)
    v.sampled, v.keys = len(rows), sorted(keys)
    if bad:
        v.problems.append(f"{len(bad)} of {len(rows)} sampled labels fail their signature or differ from their CBOR"
                          f" (seqs {', '.join(map(str, bad[:10]))})")
