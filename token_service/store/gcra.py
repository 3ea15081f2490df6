"""GCRA (generic cell rate algorithm) for rate-limit buckets; ``lua/gcra.lua`` is its twin.

One number per bucket (the theoretical arrival time, ``tat``, in ms) gives exact ``remaining``,
``reset`` and ``Retry-After`` values for the IETF RateLimit headers, with no window-edge bursts.
``tat`` is not rounded: a request spends exactly window / limit, which is a fraction of a
millisecond above 1,000 requests per second (rounding each one up to a whole millisecond would cap
every key at 1,000 per second, whatever the limit). A double holds today's time in ms to about
0.1 µs, so a request spends window / limit to within 0.1 µs (0.02% of the 0.6 ms of 100,000 per
minute). Python and Lua compute it with the same double arithmetic, and Redis stores a Lua number
with 17 significant digits, so both backends agree.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from token_service.store.base import Bucket, BucketState, LimitDecision


@dataclass(frozen=True)
class Step:
    allowed: bool
    new_tat: float
    state: BucketState
    retry_after: int


def gcra_step(bucket: Bucket, tat: float | None, now: int) -> Step:
    """One request against one bucket at ``now`` (ms); ``tat`` is what the bucket stores."""
    window = bucket.window * 1000
    interval = window / bucket.limit
    base = max(tat if tat is not None else now, now)
    new_tat = base + interval
    allow_at = new_tat - window
    if now < allow_at:
        state = BucketState(bucket.policy, bucket.limit, bucket.window, 0, math.ceil((base - now) / 1000))
        return Step(False, base, state, max(1, math.ceil((allow_at - now) / 1000)))
    remaining = min(bucket.limit - 1, math.floor((now - allow_at) / interval))
    state = BucketState(bucket.policy, bucket.limit, bucket.window, remaining,
                        math.ceil((new_tat - now) / 1000))
    return Step(True, new_tat, state, 0)


def decide(steps: Sequence[Step]) -> LimitDecision:
    allowed = all(s.allowed for s in steps)
    return LimitDecision(
        allowed=allowed,
        retry_after=max((s.retry_after for s in steps), default=0),
        states=[s.state for s in steps],
    )
