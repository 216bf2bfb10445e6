"""Supervised background tasks: a failure is an event, then a restart with backoff.

Ingest, the scan workers and the catalogue watcher each run under `supervised`: an
unexpected exception is logged as a structured error (with the traceback), counted in
`TASK_STATS` (exported as metrics) and followed by a restart after a capped, jittered
backoff that resets once the task has run healthily for a while. The label server is not
supervised: a failure of the label log itself is the one thing that stops the process.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import anyio
import structlog

from firehose_mod.ingest.reconnect import Backoff

log = structlog.get_logger(__name__)


@dataclass
class TaskStats:
    failures: int = 0
    restarts: int = 0
    last_error: str = ""


# Per task name, for /metrics and /admin/status; one process runs one daemon.
TASK_STATS: dict[str, TaskStats] = {}


async def supervised(
    name: str, run: Callable[[], Awaitable[None]], *, backoff: Backoff | None = None,
    before_restart: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Run `run()` until it returns or is cancelled, restarting it after each failure.

    `before_restart` runs before each restart (e.g. re-read the committed cursor so ingest
    resumes from durable state, not from what the failed run had in memory).
    """
    backoff = backoff or Backoff(base=1.0, cap=60.0, healthy_after=60.0)
    stats = TASK_STATS.setdefault(name, TaskStats())
    restarting = False
    while True:
        backoff.connected()  # marks the start: a run that lasted `healthy_after` resets the backoff
        try:
            if restarting:
                if before_restart is not None:
                    await before_restart()
                stats.restarts += 1
                log.info("task.restarting", task=name, restarts=stats.restarts)
            restarting = False
            await run()
            return
        except Exception as exc:  # cancellation is not an Exception: it ends the task as it should
            restarting = True
            stats.failures += 1
            stats.last_error = f"{type(exc).__name__}: {exc}"[:500]
            delay = backoff.delay()
            log.error("task.failed", task=name, error=stats.last_error, failures=stats.failures,
                      restart_in=round(delay, 2), exc_info=exc)
        await anyio.sleep(delay)
