"""Helpers for driving a source into a pipeline and looking at what reached the queue."""

from __future__ import annotations

from functools import partial

import anyio

from firehose_mod.ingest.events import Decoded
from firehose_mod.ingest.reconnect import Backoff
from firehose_mod.store.ingest import IngestStore


async def queued_uris(store: IngestStore) -> list[str]:
    async with store._db.execute("SELECT uri FROM scan_jobs ORDER BY id") as cur:
        return [r[0] for r in await cur.fetchall()]


async def run_until(source, pipeline, start, predicate, timeout=15):
    """Run `source` into `pipeline` from `start` until `await predicate()` holds."""
    async with anyio.create_task_group() as tg:
        tg.start_soon(pipeline.run_flusher)
        tg.start_soon(source.run, pipeline.sink, start)
        with anyio.fail_after(timeout):
            while not await predicate():
                await anyio.sleep(0.02)
        tg.cancel_scope.cancel()


def fast_backoff() -> Backoff:
    return Backoff(base=0.01, cap=0.05)


async def collect(source, start_cursor: int | None, until, *, on_frame=None, exact_start: bool = False,
                  timeout: float = 5) -> list[Decoded]:
    """Run the source until `until(received)` is true; returns every Decoded handed to the sink."""
    received: list[Decoded] = []
    with anyio.fail_after(timeout):
        async with anyio.create_task_group() as tg:
            async def sink(decoded: Decoded) -> None:
                received.append(decoded)
                if on_frame is not None:
                    await on_frame(decoded, tg)
                if until(received):
                    tg.cancel_scope.cancel()
            tg.start_soon(partial(source.run, sink, start_cursor, exact_start=exact_start))
    return received
