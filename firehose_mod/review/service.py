"""Opening the review desk's parts over a label log: what the CLI uses and the daemon wires.

`open_review(settings, label_log)` yields `ReviewServices`: the desk (every action), the
operator directory (who a token or a name is), the triage agent and the notifier when they are
configured (each with an async `run()` to supervise and counters in `metrics`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

from firehose_mod.config import Settings
from firehose_mod.review.actors import Operators
from firehose_mod.review.desk import ReviewDesk
from firehose_mod.store import LabelLog
from firehose_mod.store.open import open_operator_store, open_review_store
from firehose_mod.store.pg.review import PgReviewStore
from firehose_mod.store.review import ReviewStore


@dataclass
class ReviewServices:
    desk: ReviewDesk
    operators: Operators
    store: ReviewStore | PgReviewStore
    triage: object | None = None  # review.triage.TriageAgent when [triage] enabled
    notifier: object | None = None  # review.notify.Notifier when a webhook or DM is configured
    reports: object | None = None  # review.reports.ReportDesk in the daemon (createReport, appeals)
    plyr: object | None = None  # compat.plyr.PlyrCompat in the daemon when [plyr_compat] enabled

    def metrics(self) -> dict[str, dict]:
        """Counters for /metrics: desk actions, triage outcomes and spend, notices."""
        out: dict[str, dict] = {"desk": dict(self.desk.stats)}
        if self.triage is not None:
            out["triage"] = self.triage.metrics.as_dict()
        if self.notifier is not None:
            out["notify"] = dict(self.notifier.metrics)
        return out


def review_link(settings: Settings, batch_id: str) -> str:
    """The admin page's link to a batch of items."""
    return f"{(settings.public_url or settings.endpoint).rstrip('/')}/admin/review?batch={batch_id}"


@asynccontextmanager
async def open_review(settings: Settings, label_log: LabelLog, *, daemon: bool = False
                      ) -> AsyncIterator[ReviewServices]:
    """The desk over `label_log`'s database; with `daemon`, also the triage agent and notifier."""
    busy = None if daemon else settings.db_busy_wait
    async with AsyncExitStack() as stack:  # closed in reverse: triage, operators, the store
        # SQLite, or PostgreSQL when settings.database_url is set (store/open.py)
        store = await stack.enter_async_context(open_review_store(settings, busy_wait=busy))
        operators = Operators(await stack.enter_async_context(open_operator_store(settings, busy_wait=busy)))
        services = ReviewServices(ReviewDesk(label_log, store, operators), operators, store)
        if settings.triage_enabled:
            from firehose_mod.review.triage import TriageAgent, TriageConfig

            services.triage = TriageAgent(services.desk, TriageConfig.from_settings(settings))
            stack.push_async_callback(services.triage.aclose)
        if daemon and (settings.notify_webhook_url or settings.notify_dm_recipients):
            from firehose_mod.review.notify import Notifier, NotifyConfig

            services.notifier = Notifier(store, NotifyConfig.from_settings(settings))
        yield services
