"""Prometheus view of ingest and the scan workers, read from their counters at scrape time."""

from __future__ import annotations

from dataclasses import fields

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from firehose_mod.ingest.source import SourceStats


class IngestCollector:
    """The source's `SourceStats`, the pipeline's commits and the scan workers' jobs."""

    def __init__(self, source, pipeline, workers):
        self.source = source
        self.pipeline = pipeline
        self.workers = workers

    def collect(self):
        name = self.source.name
        for f in fields(SourceStats):
            c = CounterMetricFamily(f"firehose_mod_ingest_{f.name}", f.metadata["help"], labels=["source"])
            c.add_metric([name], getattr(self.source.stats, f.name))
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
