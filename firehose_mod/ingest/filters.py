"""Which collections we watch: exact NSIDs or NSID prefixes such as `fm.plyr.*`."""

from __future__ import annotations

from dataclasses import dataclass

from firehose_mod.syntax import check_collection_pattern


@dataclass(frozen=True)
class Collections:
    """A set of wanted collections; `fm.plyr.*` wants every NSID under `fm.plyr.`."""

    exact: frozenset[str]
    prefixes: tuple[str, ...]

    @classmethod
    def parse(cls, wanted: list[str] | tuple[str, ...]) -> Collections:
        """Raises ValueError (`syntax.IdentifierError`) for anything but NSIDs and NSID prefixes."""
        exact, prefixes = set(), []
        for w in wanted:
            check_collection_pattern(w)
            if w.endswith(".*"):
                prefixes.append(w[:-1])
            else:
                exact.add(w)
        if not exact and not prefixes:
            raise ValueError("no collections wanted")
        return cls(frozenset(exact), tuple(prefixes))

    def matches(self, collection: str) -> bool:
        return collection in self.exact or any(collection.startswith(p) for p in self.prefixes)

    def query_values(self) -> list[str]:
        """The values for Jetstream's `wantedCollections` parameter."""
        return sorted(self.exact) + [p + "*" for p in self.prefixes]
