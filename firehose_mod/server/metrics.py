"""Prometheus metrics of one server: counters it increments and gauges read from the feed."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from firehose_mod.server.feed import LabelFeed
from firehose_mod.store.db import BUSY_STATS
from firehose_mod.supervise import TASK_STATS


class FeedCollector:
    """Gauges computed at scrape time, so per-subscriber series vanish when a client leaves."""

    def __init__(self, feed: LabelFeed):
        self.feed = feed

    def collect(self):
        feed = self.feed
        yield GaugeMetricFamily("firehose_mod_label_head_seq", "Highest published label seq.", value=feed.head)
        yield CounterMetricFamily(
            "firehose_mod_labels_published", "Labels published to the stream by this process.",
            value=feed.published_total,
        )
        yield GaugeMetricFamily(
            "firehose_mod_subscribers", "Connected subscribeLabels clients.", value=len(feed.subscribers)
        )
        yield CounterMetricFamily("firehose_mod_frames_sent", "subscribeLabels frames sent.",
                                  value=feed.frames_sent_total)
        yield CounterMetricFamily("firehose_mod_bytes_sent", "subscribeLabels bytes sent.",
                                  value=feed.bytes_sent_total)
        # Keyed by subscriber id only: /metrics is public, and who is connected from where is
        # operator information (/admin/status has the addresses).
        lag = GaugeMetricFamily(
            "firehose_mod_subscriber_lag", "Labels between the head and a subscriber's cursor.", labels=["subscriber"],
        )
        cursor = GaugeMetricFamily("firehose_mod_subscriber_cursor", "Last seq sent to a subscriber.",
                                   labels=["subscriber"])
        for s in list(feed.subscribers.values()):
            lag.add_metric([str(s.id)], feed.head - s.cursor)
            cursor.add_metric([str(s.id)], s.cursor)
        yield lag
        yield cursor


class HealthCollector:
    """Waits for another process's database lock, and background tasks that failed and restarted."""

    def collect(self):
        yield CounterMetricFamily("firehose_mod_db_busy_retries", "Writes retried because another connection held the"
                                  " database's write lock.", value=BUSY_STATS["retries"])
        yield CounterMetricFamily("firehose_mod_db_busy_seconds", "Seconds spent waiting for the write lock beyond"
                                  " SQLite's own busy timeout.", value=BUSY_STATS["seconds"])
        yield CounterMetricFamily("firehose_mod_db_busy_gave_up", "Operator writes that gave up waiting for the lock.",
                                  value=BUSY_STATS["gave_up"])
        failures = CounterMetricFamily("firehose_mod_task_failures", "Unexpected failures of a background task.",
                                       labels=["task"])
        restarts = CounterMetricFamily("firehose_mod_task_restarts", "Restarts of a background task after a failure.",
                                       labels=["task"])
        for name, stats in sorted(TASK_STATS.items()):
            failures.add_metric([name], stats.failures)
            restarts.add_metric([name], stats.restarts)
        yield failures
        yield restarts


class ServerMetrics:
    def __init__(self, feed: LabelFeed):
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(FeedCollector(feed))
        self.registry.register(HealthCollector())
        self.disconnects = Counter(
            "firehose_mod_disconnects", "subscribeLabels disconnections by reason.", ["reason"],
            registry=self.registry,
        )
        self.labels_written = Counter(
            "firehose_mod_labels_written", "Labels committed by this process.", registry=self.registry
        )
        self.http_requests = Counter(
            "firehose_mod_http_requests", "HTTP requests by endpoint and status.", ["endpoint", "status"],
            registry=self.registry,
        )
        self.queries_stopped = Counter(
            "firehose_mod_queries_stopped", "queryLabels requests whose SQL was stopped by their budget.", ["reason"],
            registry=self.registry,
        )
        self.client_frames_ignored = Counter(
            "firehose_mod_client_frames_ignored", "Messages sent by subscribers (the protocol has none).",
            registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
