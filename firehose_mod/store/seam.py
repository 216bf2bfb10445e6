"""The label log's seam: what the rest of the code may ask of a label log, whatever its backend.

`store.label_log.LabelLog` (SQLite, the embedded default) and `store.pg.PgLabelLog`
(PostgreSQL, shared by several processes) both satisfy `LabelStore`; the server, the engine
and the operator commands should need nothing else.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Protocol, runtime_checkable

from firehose_mod.labels.model import Label
from firehose_mod.labels.signing import SigningKey
from firehose_mod.store.label_log import EmitRequest, StoredLabel
from firehose_mod.store.query import QueryBudget


@runtime_checkable
class LabelStore(Protocol):
    """An append-only, signed label log whose seq is the subscribeLabels cursor.

    Write rules (both backends): re-emitting a label in force is a no-op (None / skipped); a
    negation is written only for a label in force; an import (`EmitRequest.cts`) keeps its cts
    and is written once. Seqs are committed in order with no gap a reader could skip.
    """

    key: SigningKey
    src: str

    def on_commit(self, listener: Callable[[list[StoredLabel]], None]) -> None: ...

    async def emit(self, uri: str, val: str, *, cid: str | None = None, neg: bool = False,
                   exp: str | None = None) -> StoredLabel | None: ...

    async def emit_many(self, requests: Iterable[EmitRequest], *,
                        also: Callable[[Any, list[StoredLabel]], Awaitable[object]] | None = None
                        ) -> list[StoredLabel]: ...

    async def head(self) -> int: ...

    async def raise_seq_floor(self, floor: int) -> int: ...

    async def read_after(self, seq: int, limit: int) -> list[StoredLabel]: ...

    async def cbor_after(self, seq: int, limit: int) -> list[tuple[int, bytes]]: ...

    async def query(self, patterns: list[str], sources: list[str], limit: int, cursor: int = 0,
                    budget: QueryBudget = QueryBudget()) -> list[StoredLabel]: ...

    async def in_force(self, uri: str) -> list[Label]: ...

    async def in_force_many(self, uris: Sequence[str]) -> dict[str, list[Label]]: ...

    async def history(self, uri: str) -> list[StoredLabel]: ...

    async def count(self) -> int: ...

    async def current_under(self, prefix: str) -> list[StoredLabel]: ...

    async def close(self) -> None: ...
