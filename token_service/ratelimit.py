"""Rate-limit policies -> store buckets, and the IETF RateLimit header fields (design 2.5).

Header syntax follows draft-ietf-httpapi-ratelimit-headers: ``RateLimit-Policy`` lists every
policy that applied (``"name";q=<quota>;w=<window>``) and ``RateLimit`` reports the one closest
to refusing (``"name";r=<remaining>;t=<seconds to reset>``).
"""

from __future__ import annotations

from token_service.settings import RateLimitSettings
from token_service.store.base import Bucket, LimitDecision

GLOBAL_TAG = "global"
_PROVEN = frozenset({"ip", "identity", "family", "client"})
_FAILED = frozenset({"ip", "global"})


class RateLimiter:
    """Which buckets a request charges (design 2.5).

    A request whose proof holds charges the client IP and, since the proof shows whose they are, the
    identity's and the family's buckets. A failed proof charges only the client IP and the global
    failure budget: a stranger cannot use up someone else's budget.
    """

    def __init__(self, settings: RateLimitSettings) -> None:
        self.enabled = settings.enabled
        # Per endpoint, its policies' (name, key, limit, window): what every request reads, read once.
        self._policies: dict[str, list[tuple[str, str, int, int]]] = {}
        for p in settings.policies:
            self._policies.setdefault(p.endpoint, []).append((p.name, p.key, p.limit, p.window))

    def buckets(self, endpoint: str, *, ip: str | None, tag: str | None = None,
                family_id: str | None = None, client: str | None = None) -> list[Bucket]:
        """The buckets a request with a valid proof (for ``tag`` and ``family_id``, or by the trusted
        ``client``) counts against."""
        return self._buckets(endpoint, _PROVEN, ip, tag, family_id, client)

    def failure_buckets(self, endpoint: str, *, ip: str | None) -> list[Bucket]:
        """The buckets a failed proof counts against: the client IP and the global failure budget."""
        return self._buckets(endpoint, _FAILED, ip, None, None, None)

    def _buckets(self, endpoint: str, keys: frozenset[str], ip: str | None, tag: str | None,
                 family_id: str | None, client: str | None) -> list[Bucket]:
        if not self.enabled:
            return []
        found = []
        for name, key, limit, window in self._policies.get(endpoint, ()):
            if key not in keys:
                continue
            if key == "ip" and ip:
                found.append(Bucket(name, "-", f"ip:{ip}", limit, window))
            elif key == "identity" and tag:
                found.append(Bucket(name, "-", tag, limit, window))
            elif key == "family" and tag and family_id:
                found.append(Bucket(name, family_id, tag, limit, window))
            elif key == "global":
                found.append(Bucket(name, "-", GLOBAL_TAG, limit, window))
            elif key == "client" and client:
                found.append(Bucket(name, "-", f"client:{client}", limit, window))
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
