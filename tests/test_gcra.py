"""The GCRA step of the rate-limit buckets (``store/gcra.py``), at fixed instants."""

from __future__ import annotations

from token_service.store.base import Bucket
from token_service.store.gcra import gcra_step

NOW = 1_763_700_000_000  # ms


def burst(bucket: Bucket, now: int = NOW, tat: float | None = None) -> tuple[int, float | None]:
    """How many requests at one instant the bucket allows, and its stored value after them."""
    allowed = 0
    while True:
        step = gcra_step(bucket, tat, now)
        if not step.allowed:
            return allowed, tat
        allowed, tat = allowed + 1, step.new_tat


def test_the_burst_is_the_limit_also_above_a_thousand_per_second() -> None:
    assert burst(Bucket("p", "-", "t", limit=5, window=60))[0] == 5
    # 0.6 ms per request: rounding each one up to a whole millisecond would allow 60,000. A double
    # holds today's time in ms to about 0.1 µs, so 100,000 additions may drift by a few ms in all.
    allowed, _ = burst(Bucket("p", "-", "t", limit=100_000, window=60))
    assert 99_900 <= allowed <= 100_000


def test_time_gives_back_one_request_per_interval() -> None:
    fast = Bucket("p", "-", "t", limit=5000, window=1)  # 0.2 ms per request
    _, tat = burst(fast)
    assert not gcra_step(fast, tat, NOW + 0).allowed
    later = gcra_step(fast, tat, NOW + 1)  # 1 ms later: room for 5 more, this is the first
    assert later.allowed and later.state.remaining == 4


def test_remaining_reset_and_retry_after() -> None:
    slow = Bucket("p", "-", "t", limit=3, window=60)  # 20 s per request
    first = gcra_step(slow, None, NOW)
    assert (first.state.remaining, first.state.reset) == (2, 20)
    _, tat = burst(slow)
    refused = gcra_step(slow, tat, NOW + 5_000)
    assert not refused.allowed
    assert refused.retry_after == 15  # the oldest of the three frees up 20 s after it was spent
    assert (refused.state.remaining, refused.state.reset) == (0, 55)
