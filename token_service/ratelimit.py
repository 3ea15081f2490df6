"""Rate-limit policies -> store buckets, and the IETF RateLimit header fields (design 2.5).

Header syntax follows draft-ietf-httpapi-ratelimit-headers: ``RateLimit-Policy`` lists every
policy that applied (``"name";q=<quota>;w=<window>``) and ``RateLimit`` reports the one closest
to refusing (``"name";r=<remaining>;t=<seconds to reset>``).
"""

from __future__ import annotations

from token_service.settings import RateLimitSettings
from token_service.store.base import Bucket, LimitDecision


class RateLimiter:
    def __init__(self, settings: RateLimitSettings) -> None:
        self.enabled = settings.enabled
        self._policies = settings.policies

    def buckets(
        self,
        endpoint: str,
        *,
        ip: str | None,
        tag: str | None = None,
        family_id: str | None = None,
        ip_only: bool = False,
    ) -> list[Bucket]:
        """The buckets one request to ``endpoint`` counts against."""
        if not self.enabled:
            return []
        found = []
        for p in self._policies:
            if p.endpoint != endpoint:
                continue
            if p.key == "ip" and ip:
                found.append(Bucket(p.name, "-", f"ip:{ip}", p.limit, p.window))
            elif p.key == "identity" and tag and not ip_only:
                found.append(Bucket(p.name, "-", tag, p.limit, p.window))
            elif p.key == "family" and tag and family_id and not ip_only:
                found.append(Bucket(p.name, family_id, tag, p.limit, p.window))
        return found


def rate_limit_headers(decision: LimitDecision) -> dict[str, str]:
    tightest = decision.tightest()
    if tightest is None:
        return {}
    policies = ", ".join(f'"{s.policy}";q={s.limit};w={s.window}' for s in decision.states)
    headers = {
        "RateLimit-Policy": policies,
        "RateLimit": f'"{tightest.policy}";r={tightest.remaining};t={tightest.reset}',
    }
    if not decision.allowed:
        headers["Retry-After"] = str(max(1, decision.retry_after))
    return headers
