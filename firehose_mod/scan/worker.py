"""Scan workers: take jobs from the durable queue, hand them to the scan engine, mark them done.

A create, update or rescan job scans the track's current version through the engine
(scanners, then the policy, which writes); a job for a version that has since been
replaced or deleted is skipped. A delete closes the track's review items and negates its
labels (when configured). A failing job is retried with backoff and never blocks the
queue; a stop puts in-flight jobs back to pending.

Each claim is a lease in the worker's name (`worker`), renewed every third of `lease` while
the job runs: scan processes sharing the queue never take a live worker's job, and a dead
one's jobs are taken again once its leases run out (store/scan_queue.py).
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
                 negate_on_delete: bool = True, idle_poll: float = 1.0, worker: str | None = None,
                 lease: float = 300.0):
        self.engine = engine  # the one writer: scans, deletes, the decisions behind both
        self.store = store
        self.concurrency = concurrency
        self.negate_on_delete = negate_on_delete
        self.idle_poll = idle_poll
        # None: the only scan process (`run --role all`), which requeues every running job at start.
        self.worker = worker
        self.lease = lease
        self._wake = anyio.Event()
        self._held: set[int] = set()
        self.stats = {"done": 0, "failed": 0, "retried": 0, "negated": 0, "superseded": 0, "leases_lost": 0}

    def wake(self, _n: int = 0) -> None:
        self._wake.set()

    async def run(self) -> None:
        """Process jobs until cancelled; jobs left 'running' by a crash are requeued first."""
        requeued = await self.store.requeue_running(self.worker)
        if requeued:
            log.info("scan.requeued", jobs=requeued, worker=self.worker,
                     why="left running by the previous process, or their lease ran out")
        name = self.worker or "all"
        async with anyio.create_task_group() as renewals:
            renewals.start_soon(self._renew_leases, name)
            while True:
                jobs = await self.store.claim(self.concurrency, worker=name, lease=self.lease)
                if not jobs:
                    with anyio.move_on_after(self.idle_poll):
                        await self._wake.wait()
                    self._wake = anyio.Event()
                    continue
                self._held.update(j.id for j in jobs)
                try:
                    async with anyio.create_task_group() as tg:
                        for job in jobs:
                            tg.start_soon(self._run_one, job)
                finally:
                    self._held.difference_update(j.id for j in jobs)

    async def _renew_leases(self, name: str) -> None:
        while True:
            await anyio.sleep(self.lease / 3)
            taken = await self.store.renew(sorted(self._held), worker=name, lease=self.lease)
            if taken:  # this process stalled past its lease: another worker may redo those jobs
                self.stats["leases_lost"] += taken
                log.warning("scan.lease_lost", worker=name, jobs=taken, lease=self.lease)

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
