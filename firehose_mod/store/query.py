"""queryLabels' subject patterns as SQL that uses the uri index and has no LIKE surprises.

`_` and `%` are LIKE wildcards and LIKE is case-insensitive for ASCII, so prefixes are
range scans instead: `uri >= prefix AND uri < next(prefix)` under SQLite's binary collation,
which orders UTF-8 text by code point.
"""

from __future__ import annotations

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
