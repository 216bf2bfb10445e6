"""Decisions (the evidence behind every label) and the human review queue.

Every label the policy writes, every negation, every review item opened and every human
resolution is a row in `decisions`, with the findings, the rule, the policy version and
the scanner versions. That is what `explain` reads, and what tells an automatic label
(which a rescan may negate) from a human one (which only a human undoes).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from dataclasses import asdict, dataclass

import aiosqlite

from firehose_mod.labels.model import fast_frozen_init, now_iso
from firehose_mod.store.db import Store, insert_many
from firehose_mod.store.query import prefix_upper_bound
from firehose_mod.store.review import (
    ITEM_COLUMNS, POLICY_ACTOR, ModerationEvent, ReviewItem, ReviewWriter, events_for_uri, item_from_row,
)

__all__ = ["DecisionLabelMismatch", "DecisionRow", "DecisionStore", "DecisionWriter", "ReviewItem", "write_decisions"]


def decision_ids(where: str) -> str:
    """`WITH RECURSIVE chain(uri, seq) AS (...), ids(id) AS (...)`: the id of every decision on the
    uris `where` selects (a condition on `uri`, with named parameters: it is used twice), without an
    index of all decisions by uri (migration 18, issue 19). A decision with a label is found through
    its label: label_state's rows for the uris (a primary-key range), each one's chain of earlier
    labels through label_prev (a rowid search a link), then `decisions_by_label` (a probe a label);
    the others through the partial index `decisions_unlabelled`. `d.uri = c.uri` keeps the answer
    to the uri asked for even if a row broke the invariant `write_decisions` checks (a decision's
    label is on its uri). CROSS JOIN keeps that order (the chain drives the probes)."""
    return ("WITH RECURSIVE chain(uri, seq) AS ("
            f"SELECT uri, seq FROM label_state WHERE {where}"
            " UNION ALL SELECT c.uri, p.prev FROM chain c JOIN label_prev p ON p.seq = c.seq),"
            " ids(id) AS (SELECT d.id FROM chain c CROSS JOIN decisions d ON d.label_seq = c.seq WHERE d.uri = c.uri"
            f" UNION ALL SELECT id FROM decisions WHERE {where} AND label_seq IS NULL)")


# The decisions of one uri, in id order: what `WHERE uri = ? ORDER BY id` over decisions_uri gave.
_ON_URI = decision_ids("uri = :uri")


@fast_frozen_init  # ~1 us to build instead of ~3 (one a label on the batched write path)
@dataclass(frozen=True, slots=True)
class DecisionRow:
    uri: str
    cid: str | None
    action: str  # label | negate | review | none
    value: str | None
    origin: str  # policy | human | delete
    rule: str | None = None
    policy_version: str | None = None
    scanners: dict | None = None
    evidence: list | None = None
    label_seq: int | None = None
    actor: str | None = None
    reason: str | None = None


def _json_encoder(**options) -> Callable[[object], str]:
    """`json.dumps(obj, **options)` (default separators, ensure_ascii) as one call of the C
    encoder, built once: `json.dumps` with any option builds a `JSONEncoder` and a C encoder per
    call, which cost three times the encoding of a small finding (issue 19). The text is the same."""
    encoder = json.JSONEncoder(**options)
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # no C accelerator: the pure-Python encoder, built once all the same
        return encoder.encode
    # No circular-reference check (markers=None): evidence is a tree; a cycle raises RecursionError.
    iterencode = make(None, encoder.default, json.encoder.encode_basestring_ascii, None,
                      encoder.key_separator, encoder.item_separator, encoder.sort_keys, encoder.skipkeys,
                      encoder.allow_nan)
    return lambda obj: "".join(iterencode(obj, 0))


_scanners_json = _json_encoder(sort_keys=True)  # json.dumps(versions, sort_keys=True)
_finding_text = _json_encoder(default=str)  # json.dumps(finding, default=str)


def decision_rows(rows: list[DecisionRow]) -> list[tuple]:
    """The `decisions` columns of `rows` (both backends' INSERT, in column order). The rows of one
    scan or one batch share their versions dict and often their evidence list or findings: each
    distinct object is encoded once. The text is `json.dumps(versions or {}, sort_keys=True)` and
    `json.dumps([asdict(finding) or finding, ...], default=str)`, as it always was."""
    now = now_iso()
    scanners: dict[int, str] = {}  # id() of objects the rows hold: stable for this call
    evidence: dict[int, str] = {}
    findings: dict[int, str] = {}
    out = []
    for r in rows:
        v = r.scanners
        if (sc := scanners.get(id(v))) is None:
            sc = scanners[id(v)] = _scanners_json(v or {})
        e = r.evidence
        if (ev := evidence.get(id(e))) is None:
            ev = evidence[id(e)] = _evidence_json(e, findings)
        out.append((r.uri, r.cid, r.action, r.value, r.origin, r.rule, r.policy_version, sc, ev,
                    r.label_seq, r.actor, r.reason, now))
    return out


def _evidence_json(items, memo: dict[int, str]) -> str:
    """json.dumps of the findings list (dataclass findings as `asdict`), each finding encoded once
    per `memo` (a finding object shared by several rows, as a scan's decisions share theirs)."""
    if not items:
        return "[]"
    parts = []
    for f in items:
        if (text := memo.get(id(f))) is None:
            text = memo[id(f)] = _finding_text(asdict(f) if hasattr(f, "__dataclass_fields__") else f)
        parts.append(text)
    return "[" + ", ".join(parts) + "]"  # json.dumps' list: its item separator between the items


class DecisionStore(Store):


    async def record(self, rows: list[DecisionRow], reviews: list[tuple[str, str | None, str, str, list]] = ()) -> int:
        """Write decisions and open review items (uri, cid, value, reason, findings) in one transaction.

        A review item already open for (uri, value) is not opened twice; returns how many opened.
        """
        async with self._lock, self._transaction() as db:
            return await write_decisions(db, rows, reviews)

    async def automatic_values(self, uri: str) -> dict[str, str]:
        """For each value on `uri`, the origin of its latest label/negate decision (policy or human)."""
        async with self._reading(
            _ON_URI + " SELECT value, origin, action FROM decisions WHERE id IN ids AND action IN ('label', 'negate')"
            " ORDER BY id", {"uri": uri}
        ) as cur:
            latest: dict[str, str] = {}
            for value, origin, action in await cur.fetchall():
                latest[value] = origin if action == "label" else f"negated-by-{origin}"
        return latest

    async def overruled(self, uri: str, cid: str | None) -> set[str]:
        """Values whose latest label decision on `uri` is a negation a person (or an agent the
        policy let act) made for version `cid`: a scan of that same version must not undo it."""
        async with self._reading(
            _ON_URI + " SELECT value, origin, action, cid FROM decisions WHERE id IN ids"
            " AND action IN ('label', 'negate') ORDER BY id", {"uri": uri}
        ) as cur:
            latest = {value: (origin, action, c) for value, origin, action, c in await cur.fetchall()}
        return {v for v, (origin, action, c) in latest.items()
                if action == "negate" and origin not in ("policy", "delete") and c == cid}

    async def history(self, uri: str) -> list[dict]:
        async with self._reading(_ON_URI + " SELECT * FROM decisions WHERE id IN ids ORDER BY id", {"uri": uri}) as cur:
            cols = [c[0] for c in cur.description]
            rows = [dict(zip(cols, r)) for r in await cur.fetchall()]
        for r in rows:
            r["scanners"] = json.loads(r["scanners"])
            r["evidence"] = json.loads(r["evidence"])
        return rows

    # -- review queue -----------------------------------------------------------------------
    async def open_reviews(self, uri: str | None = None, limit: int = 100) -> list[ReviewItem]:
        sql = (f"SELECT {ITEM_COLUMNS} FROM review_items WHERE state = 'open'" + (" AND uri = ?" if uri else "")
               + " ORDER BY id LIMIT ?")
        async with self._reading(sql, (uri, limit) if uri else (limit,)) as cur:
            return [item_from_row(r) for r in await cur.fetchall()]

    async def settled_reviews(self, uri: str, cid: str | None) -> set[str]:
        """Values a review of `uri` at `cid` would not open: an item waits, or a person decided this version."""
        async with self._reading(
            "SELECT DISTINCT value FROM review_items WHERE uri = ? AND (state = 'open'"
            " OR (cid IS ? AND status IN ('confirmed', 'rejected', 'allowed')))", (uri, cid)
        ) as cur:
            return {v for (v,) in await cur.fetchall()}

    async def reviews_for(self, uri: str) -> list[ReviewItem]:
        async with self._reading(f"SELECT {ITEM_COLUMNS} FROM review_items WHERE uri = ? ORDER BY id", (uri,)) as cur:
            return [item_from_row(r) for r in await cur.fetchall()]

    async def resolve_reviews(self, uri: str, resolution: str, actor: str, values: list[str] | None = None) -> int:
        """Close the waiting review items of `uri` (optionally only `values`); returns how many.

        "content-deleted" records a #recordEvent (op delete); any other resolution a
        #modEventAcknowledge with the resolution as its reason. Both by the system actor `actor`.
        """
        async with self._lock, self._transaction() as db:
            return await ReviewWriter(db).close_waiting(uri, resolution, actor, values)

    async def review_events(self, uri: str) -> list[ModerationEvent]:
        """The moderation event log of `uri` (every item on it), in order."""
        return await events_for_uri(self, uri)

    async def counts(self) -> dict[str, int]:
        async with self._reading("SELECT state, count(*) FROM review_items GROUP BY state") as cur:
            out = {"open": 0, "resolved": 0}
            out.update({s: n for s, n in await cur.fetchall()})
        return out

    async def uris_under(self, prefix: str) -> dict[str, tuple[int, str]]:
        """{uri: (decisions, latest decision time)} for every uri starting with `prefix`.

        Ranges (no LIKE) of label_state's key and of `decisions_unlabelled`, and the labels' chains
        (`decision_ids`); explain lists an account's records with it.
        """
        upper = prefix_upper_bound(prefix)
        where = "uri >= :lo" + (" AND uri < :hi" if upper is not None else "")
        async with self._reading(
            decision_ids(where) + " SELECT uri, count(*), max(created) FROM decisions WHERE id IN ids"
            " GROUP BY uri ORDER BY uri", {"lo": prefix, "hi": upper}
        ) as cur:
            return {uri: (n, latest) for uri, n, latest in await cur.fetchall()}

    async def open_reviews_under(self, prefix: str) -> list[ReviewItem]:
        """The open review items of every uri starting with `prefix`, by uri then id."""
        where, params = _prefix_range("uri", prefix)
        # Without ANALYZE statistics SQLite prefers review_state and walks every open item.
        async with self._reading(
            f"SELECT {ITEM_COLUMNS} FROM review_items INDEXED BY review_open WHERE state = 'open' AND {where}"
            " ORDER BY uri, id",
            params,
        ) as cur:
            return [item_from_row(r) for r in await cur.fetchall()]


def _prefix_range(column: str, prefix: str) -> tuple[str, list]:
    """`column` starts with `prefix`, as a range an index can serve (LIKE would not, and has wildcards)."""
    upper = prefix_upper_bound(prefix)
    if upper is None:
        return f"{column} >= ?", [prefix]
    return f"{column} >= ? AND {column} < ?", [prefix, upper]


class DecisionWriter:
    """Decision and review writes inside a transaction someone else holds: what the label log
    hands `emit_many(also=...)`, so a caller outside store/ never holds the raw connection."""

    def __init__(self, db: aiosqlite.Connection, *, pending: dict[int, str] | None = None) -> None:
        self._db = db
        self._pending = pending  # seq -> uri of labels of this transaction the log inserts after `also`

    async def write(self, rows: list[DecisionRow], reviews: list[tuple[str, str | None, str, str, list]] = ()) -> int:
        """`write_decisions` in the held transaction; returns the review items opened."""
        return await write_decisions(self._db, rows, reviews, pending=self._pending)

    @property
    def review(self) -> ReviewWriter:
        """Review items and moderation events in the same transaction (the review desk's writes)."""
        return ReviewWriter(self._db)

    @property
    def reports(self):
        """Report rows in the same transaction as the review item they open or join."""
        from firehose_mod.store.reports import ReportWriter

        return ReportWriter(self._db)

    @property
    def imports(self):
        """Marks on the rows of a label import (`firehose-mod import`), committed with the labels they wrote."""
        from firehose_mod.store.label_import import ImportRowWriter

        return ImportRowWriter(self._db)

    async def resolve_reviews(self, uri: str, resolution: str, actor: str, values: list[str] | None = None) -> int:
        """`DecisionStore.resolve_reviews` inside the held transaction (e.g. with a delete's negations)."""
        return await ReviewWriter(self._db).close_waiting(uri, resolution, actor, values)


class DecisionLabelMismatch(ValueError):
    """A decision whose label_seq names no label, or a label on another uri: readers find a
    decision with a label through its label's uri (migration 18), so it would be lost."""


_INSERT_SQL = ("INSERT INTO decisions (uri, cid, action, value, origin, rule, policy_version, scanners, evidence,"
               " label_seq, actor, reason, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
_CHECK_CHUNK = 500  # label seqs per lookup (under any SQLITE_MAX_VARIABLE_NUMBER)


def _insert_sync(conn: sqlite3.Connection, values: list[tuple], pending: dict[int, str] | None = None) -> None:
    """On aiosqlite's thread, in the caller's transaction: check every row's label (in `pending`, the
    labels of this transaction the label log inserts once they are signed, or a rowid search of
    `labels`), then insert the rows; a mismatch raises before anything is inserted."""
    found: dict[int, str] = {}
    seqs = []  # label_seq
    for v in values:
        if v[9] is not None:
            if pending is not None and (u := pending.get(v[9])) is not None:
                found[v[9]] = u
            else:
                seqs.append(v[9])
    if seqs or found:
        seqs = list(set(seqs))
        for i in range(0, len(seqs), _CHECK_CHUNK):
            chunk = seqs[i : i + _CHECK_CHUNK]
            found.update(conn.execute(
                f"SELECT seq, uri FROM labels WHERE seq IN ({', '.join('?' * len(chunk))})", chunk).fetchall())
        for v in values:
            if v[9] is not None and found.get(v[9]) != v[0]:
                where = f"is on {found[v[9]]}" if v[9] in found else "does not exist"
                raise DecisionLabelMismatch(f"a decision on {v[0]} names label {v[9]}, which {where}:"
                                            " a decision's label_seq must name a label on its own uri")
    insert_many(conn, _INSERT_SQL, values)


async def write_decisions(db: aiosqlite.Connection, rows: list[DecisionRow],
                          reviews: list[tuple[str, str | None, str, str, list]] = (),
                          pending: dict[int, str] | None = None) -> int:
    """The decision and review writes, inside a transaction the caller holds on `db`.

    The engine calls this inside the label log's own transaction, so a label and the decision
    that explains it are committed together or not at all. Returns the review items opened.
    Raises DecisionLabelMismatch (nothing written) for a row whose label_seq is not a label on its uri.
    """
    opened = 0
    if rows:  # the check and one executemany in one call on the connection's thread (`_execute`, as label_log)
        values = decision_rows(rows)
        await db._execute(_insert_sync, db._conn, values, pending)
    writer = ReviewWriter(db)
    for uri, cid, value, reason, findings in reviews:  # each opening is a #modEventReport by the policy
        opened += await writer.open_item(uri, cid, value, reason, findings, actor=POLICY_ACTOR) is not None
    return opened
