"""The PostgreSQL side of `firehose-mod db copy` (ops/db_copy.py): writing a SQLite label log's
rows as they are, and reading them back to verify.

The copy holds the label log's write lock (WRITE_LOCK, the advisory lock PgLabelLog's writers
take) for its whole session, and every batch is one transaction taking it again, so no writer
can interleave. Inside a batch the head is checked against what the copy last left
(`CopyConflict` if anyone else moved it), the labels go in by COPY with their own seq, their
label_state rows move to the batch's latest seq per (uri, val, src), and the head follows. A killed copy leaves whole batches only: it resumes
from the highest seq on the table. Rows use the column order of store/label_export.py.
"""

from __future__ import annotations

from collections.abc import Callable

import asyncpg

from firehose_mod.store.db import DatabaseBusy
from firehose_mod.store.label_export import (
    DECISION_COLUMNS,
    LABEL_COLUMNS,
    DecisionRow,
    LabelRow,
)
from firehose_mod.store.pg.label_log import DatabaseUnreachable
from firehose_mod.store.pg.schema import SOURCE_LOCK, WRITE_LOCK, migrate

_LABELS = ", ".join(LABEL_COLUMNS)
_DECISIONS = ", ".join(DECISION_COLUMNS)


class CopyConflict(RuntimeError):
    """Another writer changed the PostgreSQL label log during the copy."""


def _label(row) -> LabelRow:
    seq, src, uri, cid, val, neg, cts, exp, sig, key_id, cbor = row
    return (seq, src, uri, cid, val, neg, cts, exp, bytes(sig), key_id, bytes(cbor))


class PgCopyTarget:
    """One connection to the target database; see the module docstring."""

    def __init__(self, conn: asyncpg.Connection, busy_wait: float):
        self._conn = conn
        self.busy_wait = busy_wait
        self._source_lock = False
        # A seam for tests: called inside each batch's transaction, after its rows are written and
        # before the commit (a test kills the process there).
        self.before_commit: Callable[[str, int], None] | None = None

    @classmethod
    async def open(cls, url: str, *, busy_wait: float = 30.0) -> PgCopyTarget:
        """Connect and bring the schema up (as PgLabelLog.open does). DatabaseUnreachable if we cannot."""
        try:
            conn = await asyncpg.connect(url, server_settings={"application_name": "firehose-mod db copy"})
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise DatabaseUnreachable(url, exc) from exc
        try:
            await migrate(conn)
        except BaseException:
            await conn.close()
            raise
        return cls(conn, busy_wait)

    async def close(self) -> None:
        await self._conn.close()

    @property
    def connection(self) -> asyncpg.Connection:
        """The copy's connection (ops/db_copy_tables.py writes the other tables through it)."""
        return self._conn

    # -- state ----------------------------------------------------------------------------
    async def status(self) -> dict[str, int]:
        """labels, max_seq, head, decisions, max_decision: where a previous copy (if any) stopped."""
        row = await self._conn.fetchrow(
            "SELECT (SELECT count(*) FROM labels) AS labels, (SELECT coalesce(max(seq), 0) FROM labels) AS max_seq,"
            " (SELECT head FROM label_head WHERE id = 1) AS head, (SELECT count(*) FROM decisions) AS decisions,"
            " (SELECT coalesce(max(id), 0) FROM decisions) AS max_decision")
        return dict(row)

    async def sample_seqs(self, n: int) -> list[int]:
        """Up to `n` random seqs present on the table, with its lowest and highest."""
        rows = await self._conn.fetch(
            "(SELECT seq FROM labels ORDER BY seq LIMIT 1) UNION (SELECT seq FROM labels ORDER BY seq DESC LIMIT 1)"
            " UNION (SELECT seq FROM labels ORDER BY random() LIMIT $1)", n)
        return sorted(r[0] for r in rows)

    async def sample_decision_ids(self, n: int) -> list[int]:
        rows = await self._conn.fetch(
            "(SELECT id FROM decisions ORDER BY id DESC LIMIT 1) UNION (SELECT id FROM decisions ORDER BY random() LIMIT $1)",
            n)
        return sorted(r[0] for r in rows)

    async def labels_at(self, seqs: list[int]) -> dict[int, LabelRow]:
        rows = await self._conn.fetch(f"SELECT {_LABELS} FROM labels WHERE seq = ANY($1::bigint[])", seqs)
        return {r[0]: _label(r) for r in rows}

    async def decisions_at(self, ids: list[int]) -> dict[int, DecisionRow]:
        rows = await self._conn.fetch(f"SELECT {_DECISIONS} FROM decisions WHERE id = ANY($1::bigint[])", ids)
        return {r[0]: tuple(r) for r in rows}

    # -- writing --------------------------------------------------------------------------
    async def hold_write_lock(self) -> None:
        """Hold the label log's write lock for this session (the whole copy): PgLabelLog writers wait,
        an operator command gives up after its busy_wait. Released by `release_write_lock` or when
        the connection ends (a killed copy)."""
        async with self._conn.transaction():
            await self._lock("pg_advisory_lock")

    async def release_write_lock(self) -> None:
        """Release the session's write lock (and the source lock, if held); a lost connection has
        released them already."""
        try:
            await self._conn.execute("SELECT pg_advisory_unlock($1)", WRITE_LOCK)
            if self._source_lock:
                await self._conn.execute("SELECT pg_advisory_unlock($1)", SOURCE_LOCK)
                self._source_lock = False
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            pass  # the error that ended the copy is the one to report

    async def hold_source_lock(self) -> None:
        """Hold the ingest source lock (store/source_lock.py) for the copy, so no ingest process on
        this database moves the cursors or the scan queue under it; a standby waits until the copy
        ends, then resumes from the copied cursor. CopyConflict if an ingest process holds it."""
        if await self._conn.fetchval("SELECT pg_try_advisory_lock($1)", SOURCE_LOCK):
            self._source_lock = True
            return
        holder = await self._conn.fetchval(
            "SELECT a.application_name || ' (pid ' || a.pid || ')' FROM pg_locks l JOIN pg_stat_activity a"
            " ON a.pid = l.pid WHERE l.locktype = 'advisory' AND l.granted"
            " AND ((l.classid::bigint << 32) | l.objid::bigint) = $1 LIMIT 1", SOURCE_LOCK)
        raise CopyConflict(f"an ingest process already runs on this PostgreSQL database ({holder or 'holder gone'}):"
                           " it would move the source cursors and the scan queue during the copy")

    async def _locked(self) -> None:
        """Inside a transaction: the write lock for it too (re-entrant under the session's)."""
        await self._lock("pg_advisory_xact_lock")

    async def _lock(self, function: str) -> None:
        """Take the write lock inside a transaction, giving up after busy_wait naming its holder."""
        db = self._conn
        await db.execute(f"SET LOCAL lock_timeout = {max(1, int(self.busy_wait * 1000))}")
        try:
            await db.execute(f"SELECT {function}($1)", WRITE_LOCK)
        except asyncpg.LockNotAvailableError:
            rows = await db.fetch(
                "SELECT a.pid, a.application_name, a.client_addr FROM pg_locks l JOIN pg_stat_activity a"
                " ON a.pid = l.pid WHERE l.locktype = 'advisory' AND l.granted"
                " AND ((l.classid::bigint << 32) | l.objid::bigint) = $1", WRITE_LOCK)
            holders = ", ".join(f"pid {r['pid']} ({r['application_name']}, {r['client_addr'] or 'local'})" for r in rows)
            raise DatabaseBusy(
                f"another process held the PostgreSQL label log's write lock for more than {self.busy_wait} s"
                f" ({holders or 'holder gone'}): stop every firehose-mod using this database, then run the copy again"
            ) from None
        await db.execute("SET LOCAL lock_timeout = 0")

    async def _check_head(self, expected: int) -> None:
        head = await self._conn.fetchval("SELECT head FROM label_head WHERE id = 1")
        if head != expected:
            raise CopyConflict(f"the PostgreSQL label log's head moved from {expected} to {head} during the copy:"
                               " another process writes to it")

    async def append_labels(self, rows: list[LabelRow], expected_head: int) -> None:
        """Write `rows` (seq order, all above `expected_head`) with their state, and move the head
        to the last one: one transaction under the write lock."""
        latest: dict[tuple[str, str, str], int] = {}
        for r in rows:
            latest[(r[2], r[4], r[1])] = r[0]  # (uri, val, src) -> its last seq in the batch
        db = self._conn
        async with db.transaction():
            await self._locked()
            await self._check_head(expected_head)
            await db.copy_records_to_table("labels", records=rows, columns=LABEL_COLUMNS)
            keys = list(latest)
            await db.execute(
                "INSERT INTO label_state (uri, val, src, seq)"
                " SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[])"
                " ON CONFLICT (uri, val, src) DO UPDATE SET seq = excluded.seq",
                [k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys], list(latest.values()))
            await db.execute("UPDATE label_head SET head = $1 WHERE id = 1", rows[-1][0])
            if self.before_commit is not None:
                self.before_commit("labels", rows[-1][0])

    async def raise_head(self, head: int, expected_head: int) -> None:
        """The source's raised seq floor: the head goes to `head`, so the next label is `head + 1`."""
        async with self._conn.transaction():
            await self._locked()
            await self._check_head(expected_head)
            await self._conn.execute("UPDATE label_head SET head = $1 WHERE id = 1", head)

    async def append_decisions(self, rows: list[DecisionRow], expected_max: int) -> None:
        """Write decision rows with their own ids, then set the id sequence past them, so the
        PostgreSQL writers' next decision gets the next id."""
        db = self._conn
        async with db.transaction():
            await self._locked()
            found = await db.fetchval("SELECT coalesce(max(id), 0) FROM decisions")
            if found != expected_max:
                raise CopyConflict(f"the PostgreSQL decisions table's last id moved from {expected_max} to {found}"
                                   " during the copy: another process writes to it")
            await db.copy_records_to_table("decisions", records=rows, columns=DECISION_COLUMNS)
            await db.execute("SELECT setval(pg_get_serial_sequence('decisions', 'id'), $1)", rows[-1][0])
            if self.before_commit is not None:
                self.before_commit("decisions", rows[-1][0])

    # -- reading back ---------------------------------------------------------------------
    async def labels_after(self, seq: int, limit: int) -> list[LabelRow]:
        rows = await self._conn.fetch(f"SELECT {_LABELS} FROM labels WHERE seq > $1 ORDER BY seq LIMIT $2", seq, limit)
        return [_label(r) for r in rows]

    async def state_after(self, seq: int, limit: int) -> list[tuple]:
        rows = await self._conn.fetch(
            "SELECT uri, val, src, seq FROM label_state WHERE seq > $1 ORDER BY seq LIMIT $2", seq, limit)
        return [tuple(r) for r in rows]

    async def decisions_after(self, id_: int, limit: int) -> list[DecisionRow]:
        rows = await self._conn.fetch(f"SELECT {_DECISIONS} FROM decisions WHERE id > $1 ORDER BY id LIMIT $2",
                                      id_, limit)
        return [tuple(r) for r in rows]

    async def random_labels(self, n: int) -> list[LabelRow]:
        """Up to `n` labels drawn at random (all of them when there are fewer)."""
        rows = await self._conn.fetch(f"SELECT {_LABELS} FROM labels ORDER BY random() LIMIT $1", n)
        return [_label(r) for r in rows]

    async def next_decision_id(self) -> int:
        """The id the next PgDecisionWriter insert would get (without using it up)."""
        row = await self._conn.fetchrow(
            "SELECT last_value, is_called FROM decisions_id_seq")
        return row["last_value"] + 1 if row["is_called"] else row["last_value"]
