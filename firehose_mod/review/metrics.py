"""Prometheus view of the review desk: actions taken, LLM triage outcomes and spend, notices."""

from __future__ import annotations

from prometheus_client.core import CounterMetricFamily

from firehose_mod.review.service import ReviewServices


class ReviewCollector:
    def __init__(self, review: ReviewServices):
        self.review = review

    def collect(self):
        m = self.review.metrics()
        actions = CounterMetricFamily("firehose_mod_review_events", "Review events written, by action.",
                                      labels=["action"])
        for action, n in sorted(m["desk"].items()):
            actions.add_metric([action], n)
        yield actions
        if "triage" in m:
            t = dict(m["triage"])
            cost = t.pop("cost_usd", 0.0)
            outcomes = CounterMetricFamily("firehose_mod_triage", "LLM triage counters (calls, outcomes, tokens).",
                                           labels=["what"])
            for what, n in sorted(t.items()):
                outcomes.add_metric([what], n)
            yield outcomes
            yield CounterMetricFamily("firehose_mod_triage_cost_usd", "LLM triage spend in US dollars.", value=cost)
        if "notify" in m:
            notices = CounterMetricFamily("firehose_mod_notify", "Review notifications sent and failed.",
                                          labels=["what"])
            for what, n in sorted(m["notify"].items()):
                notices.add_metric([what], n)
            yield notices
