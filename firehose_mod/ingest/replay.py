"""Replay: re-read the configured source over a window [T, T2] and queue every track again.

For an operator who changed a scanner or the policy: known versions get a `rescan` job,
new ones a normal one, and the label log's rules (a label in force is never written twice)
keep the result free of duplicate labels.

The window is exact and inclusive at both ends: a frame whose cursor is before T (a
reconnect's rewind) or after T2 is never applied, nor is a frame a reconnect serves again, and the replay stops at the first frame
past T2 or on one exactly at T2. (Jetstream's time_us is not unique per event: another event
sharing T2's exact microsecond, after the first, may be left out.)

The replay has its own cursor (`<source>-replay` in `source_cursors`) and remembers its window
(`<source>-replay.from`, `<source>-replay.until`), so it never moves the live cursor, can run
beside `firehose-mod run` (whose workers then process the jobs), and a killed replay rerun over
the same window resumes from its saved cursor instead of queueing the first part again
(`restart=True` starts over). A finished replay leaves its cursor at T2.
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
from firehose_mod.store.open import open_ingest_store

log = structlog.get_logger(__name__)


@dataclass
class ReplayReport:
    source: str
    from_cursor: int
    until_cursor: int
    frames: int
    enqueued: int
    dead_letters: int
    resumed_from: int | None = None


def replay_keys(source: str) -> tuple[str, str, str]:
    """The `source_cursors` rows of a replay of `source`: its cursor, its window's start and end."""
    key = f"{source}-replay"
    return key, f"{key}.from", f"{key}.until"


async def run_replay(settings: Settings, from_cursor: int, *, until: int | None = None, source=None,
                     progress: Callable[[int, int], None] | None = None, restart: bool = False,
                     notice: Callable[[str], None] | None = None) -> ReplayReport:
    """Replay `settings.ingest_source` over [`from_cursor`, `until`] (default end: the live cursor,
    or the end of the unfinished replay from `from_cursor` being resumed).

    A new replay's first connection starts exactly at `from_cursor` (no resume rewind): the
    operator chose it. A resumed one starts exactly at its saved cursor; `notice` is told so."""
    if until is not None and until < from_cursor:
        raise ValueError(f"--until {until} is before --cursor {from_cursor}: nothing to replay")
    async with open_ingest_store(settings) as store:
        source = source or build_source(settings, set())
        if source is None:
            raise ValueError("ingest source is 'none': nothing to replay (set [ingest] source)")
        key, from_key, until_key = replay_keys(source.name)
        saved_from, saved_until, saved_at = (await store.cursor(from_key), await store.cursor(until_key),
                                             await store.cursor(key))
        unfinished = (saved_from == from_cursor and saved_until is not None and saved_at is not None
                      and from_cursor <= saved_at < saved_until and (until is None or until == saved_until))
        resumed_from = None
        if unfinished and not restart:
            target, resumed_from = saved_until, saved_at
        else:
            target = until if until is not None else await store.cursor(source.name)
            if target is None:
                raise ValueError(f"{source.name} has no saved cursor yet: pass --until, or run the daemon first")
            if from_cursor > target:
                raise ValueError(f"--cursor {from_cursor} is after the end cursor {target} (the live cursor; "
                                 "pass --until)")
            await store.set_cursors({key: None, from_key: from_cursor, until_key: target})
        start = from_cursor if resumed_from is None else resumed_from
        if resumed_from is not None:
            message = f"resuming the replay of [{from_cursor}, {target}] from {resumed_from}; --restart to start over"
            log.info("replay.resuming", source=source.name, cursor=from_cursor, until=target, at=resumed_from)
            if notice:
                notice(message)
        pipeline = IngestPipeline(store, key, rescan=True)
        log.info("replay.starting", source=source.name, cursor=start, until=target)
        finished = False
        high: list = [None, set()]  # the highest cursor handed to the pipeline, and its frames

        def fresh(decoded: Decoded) -> bool:
            # A reconnect resumes `rewind` before the last cursor: what it serves again must not
            # be applied twice (a known version read twice in a replay would be queued again).
            # Cursors need not be unique (Jetstream's time_us), so frames at the highest one are told
            # apart by their content.
            ident = repr((decoded.events, decoded.dead))
            if high[0] is not None and decoded.cursor < high[0]:
                return False
            if decoded.cursor != high[0]:
                high[0], high[1] = decoded.cursor, set()
            if ident in high[1]:
                return False
            high[1].add(ident)
            return True

        async with anyio.create_task_group() as tg:
            async def sink(decoded: Decoded) -> None:
                nonlocal finished
                if decoded.cursor is not None and decoded.cursor > target:
                    finished = True  # past the window: never applied
                    await pipeline.flush()
                    tg.cancel_scope.cancel()
                    return
                if decoded.cursor is not None and decoded.cursor < from_cursor:
                    return  # before the window (a reconnect's rewind): not ours to apply
                if decoded.cursor is not None and not fresh(decoded):
                    return  # read already in this run, served again by a reconnect's rewind
                await pipeline.sink(decoded)
                if decoded.cursor is not None:
                    if progress:
                        progress(decoded.cursor, target)
                    if decoded.cursor >= target:
                        finished = True
                        await pipeline.flush()
                        tg.cancel_scope.cancel()

            tg.start_soon(pipeline.run_flusher)
            tg.start_soon(partial(source.run, sink, start, exact_start=True))
        if finished:
            await store.set_cursors({key: target})  # done: the replay's cursor rests at T2
        return ReplayReport(source.name, from_cursor, target, pipeline.stats["frames"],
                            pipeline.stats["enqueued"], pipeline.stats["dead_letters"], resumed_from)
