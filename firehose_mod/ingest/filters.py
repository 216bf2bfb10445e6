"""Which collections we watch: exact NSIDs or NSID prefixes such as `fm.plyr.*`."""

from __future__ import annotations

import re
from dataclasses import dataclass

_NSID_RE = re.compile(r"^[a-zA-Z][a-zA-Z0-9-]*(\.[a-zA-Z0-9-]+)+$")


@dataclass(frozen=True)
class Collections:
    """A set of wanted collections; `fm.plyr.*` wants every NSID under `fm.plyr.`."""

    exact: frozenset[str]
    prefixes: tuple[str, ...]

    @classmethod
    def parse(cls, wanted: list[str] | tuple[str, ...]) -> Collections:
        exact, prefixes = set(), []
        for w in wanted:
            if w.endswith(".*"):
                base = w[:-2]
                if not _NSID_RE.match(base + ".x"):
                    raise ValueError(f"not an NSID prefix: {w!r} (example: fm.plyr.*)")
                prefixes.append(base + ".")
            elif _NSID_RE.match(w):
                exact.add(w)
            else:
                raise ValueError(f"not an NSID: {w!r} (example: fm.plyr.track)")
        if not exact and not prefixes:
            raise ValueError("no collections wanted")
        return cls(frozenset(exact), tuple(prefixes))

    def matches(self, collection: str) -> bool:
        return collection in self.exact or any(collection.startswith(p) for p in self.prefixes)

    def query_values(self) -> list[str]:
        """The values for Jetstream's `wantedCollections` parameter."""
        return sorted(self.exact) + [p + "*" for p in self.prefixes]
