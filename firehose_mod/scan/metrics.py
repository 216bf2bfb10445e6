"""Prometheus view of the scanners, read from the engine's and AudD's counters at scrape time."""

from __future__ import annotations

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from firehose_mod.scan.engine import ScanEngine


class ScanCollector:
    """Per-scanner runs, failures, timeouts and seconds; AudD's units and cost; the review queue."""

    def __init__(self, engine: ScanEngine):
        self.engine = engine

    def collect(self):
        runs = CounterMetricFamily("firehose_mod_scanner_runs", "Scanner runs.", labels=["scanner"])
        failures = CounterMetricFamily("firehose_mod_scanner_failures", "Scanner runs that raised.", labels=["scanner"])
        timeouts = CounterMetricFamily("firehose_mod_scanner_timeouts", "Scanner runs past the timeout.",
                                       labels=["scanner"])
        unavailable = CounterMetricFamily("firehose_mod_scanner_media_unavailable",
                                          "Scans whose media the host said is gone (a permanent 4xx).",
                                          labels=["scanner"])
        seconds = CounterMetricFamily("firehose_mod_scanner_seconds", "Wall seconds spent in a scanner.",
                                      labels=["scanner"])
        for name, st in self.engine.stats.items():
            runs.add_metric([name], st["runs"])
            failures.add_metric([name], st["failures"])
            timeouts.add_metric([name], st["timeouts"])
            unavailable.add_metric([name], st["unavailable"])
            seconds.add_metric([name], st["seconds"])
        yield from (runs, failures, timeouts, unavailable, seconds)
        audd = next((s for s in self.engine.scanners if s.name == "audd"), None)
        if audd is not None:
            yield CounterMetricFamily("firehose_mod_audd_calls", "AudD requests made (one per track).",
                                      value=audd.stats["calls"])
            yield CounterMetricFamily("firehose_mod_audd_units", "AudD 12 s units billed.", value=audd.stats["units"])
            yield CounterMetricFamily("firehose_mod_audd_cost_usd", "AudD cost in US dollars.", value=audd.stats["usd"])
            yield CounterMetricFamily("firehose_mod_audd_skipped_local_match",
                                      "Tracks AudD was not asked about because the local index matched.",
                                      value=audd.stats["skipped_local_match"])
        if self.engine.catalogue is not None:
            # Every scanned upload joins the index by design (a later copy of it is found):
            # memory that grows with the uploads, shown apart so RSS can be read net of it.
            stats = self.engine.catalogue.index.stats()
            yield GaugeMetricFamily("firehose_mod_fingerprint_index_refs", "Recordings in the in-memory index.",
                                    value=stats["refs"])
            yield GaugeMetricFamily("firehose_mod_fingerprint_index_bytes",
                                    "Bytes of the in-memory fingerprint index's arrays.", value=stats["bytes"])
            # Each segment costs every lookup an offset read and a run of postings: the background
            # merger keeps them few (scan/catalogue.py plan_merge); many and rising means it cannot.
            yield GaugeMetricFamily("firehose_mod_fingerprint_index_segments",
                                    "On-disk segments the fingerprint index is served from.", value=stats["segments"])
            yield GaugeMetricFamily("firehose_mod_fingerprint_index_disk_bytes",
                                    "Bytes of the fingerprint index's on-disk segments.", value=stats["disk_bytes"])
