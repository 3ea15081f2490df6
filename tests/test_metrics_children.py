"""``metrics.child``: the labelled children the hot path keeps, counting into the same samples."""

from __future__ import annotations

import pytest

from tests.support import sample
from token_service.metrics import REFRESHES, STORE_DURATION, child

pytestmark = pytest.mark.unit


def test_child_is_the_labelled_metric_and_counts_into_its_samples() -> None:
    assert child(REFRESHES, "rotated") is REFRESHES.labels("rotated")
    assert child(REFRESHES, "rotated") is not child(REFRESHES, "grace")
    before = sample("token_service_refreshes_total", outcome="rotated")
    child(REFRESHES, "rotated").inc()
    child(REFRESHES, "rotated").inc()
    assert sample("token_service_refreshes_total", outcome="rotated") == before + 2


def test_histogram_children_observe_into_their_buckets() -> None:
    count = "token_service_store_duration_seconds_count"
    bucket = "token_service_store_duration_seconds_bucket"
    before = sample(count, operation="rotate")
    fastest, next_up = sample(bucket, operation="rotate", le="0.0005"), sample(bucket, operation="rotate", le="0.001")
    child(STORE_DURATION, "rotate").observe(0.0004)
    assert sample(count, operation="rotate") == before + 1
    # Buckets are cumulative: 0.4 ms counts in the 0.5 ms bucket and every wider one.
    assert sample(bucket, operation="rotate", le="0.0005") == fastest + 1
    assert sample(bucket, operation="rotate", le="0.001") == next_up + 1
    slow = sample(bucket, operation="rotate", le="0.0005")
    child(STORE_DURATION, "rotate").observe(0.0007)
    assert sample(bucket, operation="rotate", le="0.0005") == slow
