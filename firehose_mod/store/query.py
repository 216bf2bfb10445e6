"""queryLabels' subject patterns as SQL that uses the uri index and has no LIKE surprises,
and the connections queries run on, each query within a budget.

`_` and `%` are LIKE wildcards and LIKE is case-insensitive for ASCII, so prefixes are
range scans instead: `uri >= prefix AND uri < next(prefix)` under SQLite's binary collation,
which orders UTF-8 text by code point.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

import aiosqlite
import anyio

from firehose_mod.store.db import open_reader

MAX_CODEPOINT = 0x10FFFF


def prefix_upper_bound(prefix: str) -> str | None:
    """The smallest string greater than every string starting with `prefix` (None: no bound)."""
    chars = list(prefix)
    while chars:
        last = ord(chars.pop())
        nxt = last + 1
        if 0xD800 <= nxt <= 0xDFFF:  # surrogates cannot be stored as UTF-8
            nxt = 0xE000
        if nxt <= MAX_CODEPOINT:
            return "".join(chars) + chr(nxt)
    return None


def build_query(patterns: list[str], sources: list[str]) -> tuple[str, list]:
    """A WHERE clause over `s.uri` / `s.src` and its parameters."""
    clauses: list[str] = []
    params: list = []
    if "*" not in patterns:
        for p in patterns:
            if p.endswith("*"):
                prefix = p[:-1]
                upper = prefix_upper_bound(prefix)
                if upper is None:
                    clauses.append("s.uri >= ?")
                    params.append(prefix)
                else:
                    clauses.append("(s.uri >= ? AND s.uri < ?)")
                    params.extend([prefix, upper])
            else:
                clauses.append("s.uri = ?")
                params.append(p)
    where = " OR ".join(clauses) if clauses else "1"
    if sources:
        where = f"({where}) AND s.src IN ({', '.join('?' * len(sources))})"
        params.extend(sources)
    return where, params


def normalize_patterns(patterns: list[str]) -> list[str]:
    """The same subjects with no repeated work: duplicates dropped, `*` alone when present, and
    any pattern inside a broader prefix dropped (`at://did:plc:x/*` under `at://*`)."""
    unique = set(patterns)
    if "*" in unique:
        return ["*"]
    prefixes: list[str] = []
    for p in sorted(p[:-1] for p in unique if p.endswith("*")):
        # Sorted, a covering prefix comes right before what it covers.
        if not prefixes or not p.startswith(prefixes[-1]):
            prefixes.append(p)
    exact = sorted(p for p in unique if not p.endswith("*") and not p.startswith(tuple(prefixes)))
    return [p + "*" for p in prefixes] + exact


@dataclass(frozen=True)
class QueryBudget:
    """How much database work one queryLabels request may do before it is stopped."""

    seconds: float = 1.0
    # SQLite virtual-machine steps: a bound on rows scanned that does not depend on the load
    # (a uri-range row with its label join and sort costs a few hundred steps).
    steps: int = 50_000_000


class BudgetExceeded(Exception):
    """The query was stopped: `reason` is "time" or "steps"."""

    def __init__(self, reason: str):
        super().__init__(f"query stopped: {reason} budget exceeded")
        self.reason = reason


PROGRESS_EVERY = 10_000  # VM steps between budget checks (each check takes the GIL)


class QueryConnections:
    """Read connections for queries only, apart from the one the live stream reads from, so a
    heavy query delays other queries at most. Each query runs under a progress handler that
    stops its SQL when the budget runs out or the caller is cancelled (the client went away)."""

    def __init__(self, connections: list[aiosqlite.Connection], *, owned: bool = True):
        self._all = list(connections)
        self._free = list(connections)
        self._slots = anyio.Semaphore(len(connections))
        self._owned = owned

    @classmethod
    async def open(cls, path: Path, count: int = 2) -> QueryConnections:
        connections: list[aiosqlite.Connection] = []
        try:
            for _ in range(count):
                connections.append(await open_reader(path))
        except BaseException:
            for c in connections:
                await c.close()
            raise
        return cls(connections)

    async def close(self) -> None:
        if self._owned:
            for c in self._all:
                await c.close()

    async def fetchall(self, sql: str, params: tuple, budget: QueryBudget) -> list[tuple]:
        async with self._slots:
            conn = self._free.pop()
            try:
                return await _run_budgeted(conn, sql, params, budget)
            finally:
                self._free.append(conn)  # its next statement queues behind a stopping one


async def _run_budgeted(conn: aiosqlite.Connection, sql: str, params: tuple, budget: QueryBudget) -> list[tuple]:
    deadline = time.monotonic() + budget.seconds
    state = {"steps": 0, "stop": None}

    def progress() -> int:  # in the connection's thread; non-zero interrupts the statement
        state["steps"] += PROGRESS_EVERY
        if state["stop"] is None:
            if state["steps"] > budget.steps:
                state["stop"] = "steps"
            elif time.monotonic() > deadline:
                state["stop"] = "time"
        return state["stop"] is not None

    await conn.set_progress_handler(progress, PROGRESS_EVERY)
    try:
        return list(await conn.execute_fetchall(sql, params))
    except sqlite3.OperationalError:
        if state["stop"] in ("steps", "time"):
            raise BudgetExceeded(state["stop"]) from None
        raise
    except anyio.get_cancelled_exc_class():
        state["stop"] = "cancelled"
        raise
