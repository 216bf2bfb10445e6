"""Prometheus view of ingest and the scan workers, read from their counters at scrape time."""

from __future__ import annotations

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily


class IngestCollector:
    def __init__(self, source, pipeline, workers):
        self.source = source
        self.pipeline = pipeline
        self.workers = workers

    def collect(self):
        name = self.source.name
        for key, help_ in (
            ("frames", "Frames received from the source."),
            ("bytes", "Bytes received from the source."),
            ("events", "Watched events decoded."),
            ("skipped", "Events of other collections or repos, skipped."),
            ("dead", "Frames or records rejected into dead letters."),
            ("reconnects", "Reconnections to the source."),
        ):
            c = CounterMetricFamily(f"firehose_mod_ingest_{key}", help_, labels=["source"])
            c.add_metric([name], self.source.stats.get(key, 0))
            yield c
        for key, help_ in (
            ("commits", "Ingest transactions committed."),
            ("enqueued", "Scan jobs enqueued."),
            ("duplicates", "Events already known (replays, repeats after reconnect)."),
        ):
            c = CounterMetricFamily(f"firehose_mod_ingest_{key}", help_, labels=["source"])
            c.add_metric([name], self.pipeline.stats[key])
            yield c
        g = GaugeMetricFamily("firehose_mod_ingest_cursor", "Last committed source cursor.", labels=["source"])
        g.add_metric([name], self.pipeline.committed_cursor or 0)
        yield g
        jobs = CounterMetricFamily("firehose_mod_scan_jobs", "Scan jobs finished, by outcome.", labels=["outcome"])
        for outcome in ("done", "retried", "failed"):
            jobs.add_metric([outcome], self.workers.stats[outcome])
        yield jobs
