"""Replay: re-read the configured source from a past cursor and queue every track again.

For an operator who changed a scanner or the policy: known versions get a `rescan` job,
new ones a normal one, and the label log's rules (a label in force is never written twice)
keep the result free of duplicate labels. The replay has its own cursor (`<source>-replay`)
and stops once it reaches the live cursor saved when it started, so it never moves the live
cursor and can run beside `firehose-mod run`, whose workers then process the jobs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import anyio
import structlog

from firehose_mod.config import Settings
from firehose_mod.ingest.build import build_source
from firehose_mod.ingest.events import Decoded
from firehose_mod.ingest.pipeline import IngestPipeline
from firehose_mod.store.db import close_shielded
from firehose_mod.store.ingest import IngestStore

log = structlog.get_logger(__name__)


@dataclass
class ReplayReport:
    source: str
    from_cursor: int
    until_cursor: int
    frames: int
    enqueued: int
    dead_letters: int


async def run_replay(settings: Settings, from_cursor: int, *, until: int | None = None, source=None,
                     progress: Callable[[int, int], None] | None = None) -> ReplayReport:
    """Replay `settings.ingest_source` from `from_cursor` up to `until` (default: the live cursor).

    The first connection starts exactly at `from_cursor` (no resume rewind): the operator chose it."""
    store = await IngestStore.open(settings.db_path, synchronous=settings.db_synchronous)
    try:
        source = source or build_source(settings, set())
        if source is None:
            raise ValueError("ingest source is 'none': nothing to replay (set [ingest] source)")
        target = until if until is not None else await store.cursor(source.name)
        if target is None:
            raise ValueError(f"{source.name} has no saved cursor yet: pass --until, or run the daemon first")
        if from_cursor >= target:
            raise ValueError(f"--cursor {from_cursor} is not before the end cursor {target}")
        pipeline = IngestPipeline(store, f"{source.name}-replay", rescan=True)
        log.info("replay.starting", source=source.name, cursor=from_cursor, until=target)
        async with anyio.create_task_group() as tg:
            async def sink(decoded: Decoded) -> None:
                await pipeline.sink(decoded)
                if decoded.cursor is not None:
                    if progress:
                        progress(decoded.cursor, target)
                    if decoded.cursor >= target:
                        await pipeline.flush()
                        tg.cancel_scope.cancel()

            tg.start_soon(pipeline.run_flusher)
            tg.start_soon(partial(source.run, sink, from_cursor, exact_start=True))
        return ReplayReport(source.name, from_cursor, target, pipeline.stats["frames"],
                            pipeline.stats["enqueued"], pipeline.stats["dead_letters"])
    finally:
        await close_shielded(store)
