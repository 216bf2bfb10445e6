"""Scan workers: take jobs from the durable queue, hand them to the scan engine, mark them done.

A create, update or rescan job scans the track's current version through the engine
(scanners, then the policy, which writes); a job for a version that has since been
replaced or deleted is skipped. A delete closes the track's review items and negates its
labels (when configured). A failing job is retried with backoff and never blocks the
queue; a stop puts in-flight jobs back to pending.
"""

from __future__ import annotations

import anyio
import structlog

from firehose_mod.scan.base import Track
from firehose_mod.scan.engine import ScanEngine
from firehose_mod.store.ingest import IngestStore, ScanJob

log = structlog.get_logger(__name__)

MAX_ATTEMPTS = 8


class ScanWorkers:
    def __init__(self, store: IngestStore, engine: ScanEngine, *, concurrency: int = 2,
                 negate_on_delete: bool = True, idle_poll: float = 1.0):
        self.engine = engine  # the one writer: scans, deletes, the decisions behind both
        self.store = store
        self.concurrency = concurrency
        self.negate_on_delete = negate_on_delete
        self.idle_poll = idle_poll
        self._wake = anyio.Event()
        self.stats = {"done": 0, "failed": 0, "retried": 0, "negated": 0, "superseded": 0}

    def wake(self, _n: int = 0) -> None:
        self._wake.set()

    async def run(self) -> None:
        """Process jobs until cancelled; jobs left 'running' by a crash are requeued first."""
        requeued = await self.store.requeue_running()
        if requeued:
            log.info("scan.requeued", jobs=requeued, why="left running by the previous process")
        while True:
            jobs = await self.store.claim(self.concurrency)
            if not jobs:
                with anyio.move_on_after(self.idle_poll):
                    await self._wake.wait()
                self._wake = anyio.Event()
                continue
            async with anyio.create_task_group() as tg:
                for job in jobs:
                    tg.start_soon(self._run_one, job)

    async def _run_one(self, job: ScanJob) -> None:
        bound = log.bind(job=job.id, uri=job.uri, cid=job.cid, operation=job.operation)
        try:
            await self.process(job)
        except anyio.get_cancelled_exc_class():
            with anyio.CancelScope(shield=True):
                await self.store.retry_later(job.id, "interrupted by shutdown", 0)
            raise
        except Exception as exc:  # a failing job is logged and retried, never fatal
            give_up = job.attempts >= MAX_ATTEMPTS
            delay = min(3600.0, 2.0 ** job.attempts)
            await self.store.retry_later(job.id, f"{type(exc).__name__}: {exc}", delay, give_up=give_up)
            self.stats["failed" if give_up else "retried"] += 1
            bound.warning("scan.job_failed", error=str(exc)[:300], attempts=job.attempts, give_up=give_up, exc_info=exc,
                          retry_in=None if give_up else delay)
            return
        await self.store.finish(job.id)
        self.stats["done"] += 1
        bound.debug("scan.job_done")

    async def process(self, job: ScanJob) -> None:
        if job.operation == "delete":
            negated = await self.engine.deleted(job.uri, job.cid or None, negate=self.negate_on_delete)
            self.stats["negated"] += len(negated)
            return
        if job.deleted or job.record is None or (job.current_cid and job.current_cid != job.cid):
            self.stats["superseded"] += 1  # a newer version (with its own job) or a delete came since
            return
        did, _collection, rkey = job.uri.removeprefix("at://").split("/", 2)
        await self.engine.process(Track(job.uri, did, rkey, job.cid, job.record))
