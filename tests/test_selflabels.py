"""Self-labels: every value the record declares is passed on, malformed entries skipped."""

from __future__ import annotations

import pytest

from firehose_mod.scan.base import ScanContext, Track
from firehose_mod.scan.selflabels import SelfLabelScanner, self_label_values


def track(record: dict) -> Track:
    return Track("at://did:plc:a/fm.plyr.track/1", "did:plc:a", "1", "bafy", record)


@pytest.mark.anyio
async def test_each_self_label_becomes_a_finding_with_its_value():
    labels = {"$type": "com.atproto.label.defs#selfLabels", "values": [{"val": "porn"}, {"val": "graphic-media"}]}
    findings = await SelfLabelScanner().scan(track({"title": "t", "labels": labels}), ScanContext(None, None))
    assert [(f.kind, f.value, f.score) for f in findings] == [("self-label", "porn", 1.0),
                                                              ("self-label", "graphic-media", 1.0)]
    assert all(f.scanner == "self-labels" and f.evidence == {"values": ["porn", "graphic-media"]} for f in findings)


@pytest.mark.parametrize("labels, values", [
    (None, []),
    ("porn", []),
    ({"values": "porn"}, []),
    ({"values": [{"val": "sexual"}, {"val": "sexual"}, {"val": ""}, {"val": 3}, "x", {}, {"val": "x" * 129}]},
     ["sexual"]),
    ({"values": [{"val": f"v{i}"} for i in range(15)]}, [f"v{i}" for i in range(10)]),
])
def test_malformed_self_labels_are_skipped_not_fatal(labels, values):
    record = {"title": "t"} if labels is None else {"title": "t", "labels": labels}
    assert self_label_values(record) == values
