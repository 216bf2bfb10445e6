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
            ("verified", "Firehose commits whose signature was checked and valid."),
            ("unverified", "Track events passed through because the signing key could not be fetched."),
            ("bad_signature", "Track events rejected: the commit signature or its tree did not check out."),
        ):
            if key not in self.source.stats and key in ("verified", "unverified", "bad_signature"):
                continue
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


class ScanCollector:
    """Per-scanner runs, failures, timeouts and seconds; AudD's units and cost; the review queue."""

    def __init__(self, engine):
        self.engine = engine

    def collect(self):
        runs = CounterMetricFamily("firehose_mod_scanner_runs", "Scanner runs.", labels=["scanner"])
        failures = CounterMetricFamily("firehose_mod_scanner_failures", "Scanner runs that raised.", labels=["scanner"])
        timeouts = CounterMetricFamily("firehose_mod_scanner_timeouts", "Scanner runs past the timeout.",
                                       labels=["scanner"])
        seconds = CounterMetricFamily("firehose_mod_scanner_seconds", "Wall seconds spent in a scanner.",
                                      labels=["scanner"])
        for name, st in self.engine.stats.items():
            runs.add_metric([name], st["runs"])
            failures.add_metric([name], st["failures"])
            timeouts.add_metric([name], st["timeouts"])
            seconds.add_metric([name], st["seconds"])
        yield from (runs, failures, timeouts, seconds)
        audd = next((s for s in self.engine.scanners if s.name == "audd"), None)
        if audd is not None:
            yield CounterMetricFamily("firehose_mod_audd_calls", "AudD requests made (one per track).",
                                      value=audd.stats["calls"])
            yield CounterMetricFamily("firehose_mod_audd_units", "AudD 12 s units billed.", value=audd.stats["units"])
            yield CounterMetricFamily("firehose_mod_audd_cost_usd", "AudD cost in US dollars.", value=audd.stats["usd"])
            yield CounterMetricFamily("firehose_mod_audd_skipped_local_match",
                                      "Tracks AudD was not asked about because the local index matched.",
                                      value=audd.stats["skipped_local_match"])
