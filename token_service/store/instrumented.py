"""A ``Store`` wrapper that times every call and counts failures, whatever the backend.

Kept apart from the backends so they stay about storage, and the metrics stay the same for all.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from token_service.metrics import STORE_DURATION, STORE_ERRORS, child
from token_service.store.base import (
    Bucket,
    Ended,
    FamilyPolicy,
    Issued,
    LimitDecision,
    NewFamily,
    Revocation,
    Rotation,
    Store,
    StoreUnavailable,
)

T = TypeVar("T")


class InstrumentedStore(Store):
    def __init__(self, inner: Store) -> None:
        self.inner = inner

    def _measure(self, operation: str, call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        started = time.perf_counter()
        try:
            return call(*args, **kwargs)
        except StoreUnavailable:
            child(STORE_ERRORS, operation).inc()
            raise
        finally:
            child(STORE_DURATION, operation).observe(time.perf_counter() - started)

    def issue(self, buckets: Sequence[Bucket], family: NewFamily, policy: FamilyPolicy,
              month: str = "") -> Issued:
        return self._measure("issue", self.inner.issue, buckets, family, policy, month)

    def rotate(self, buckets: Sequence[Bucket], tag: str, family_id: str, generation: int,
               policy: FamilyPolicy, month: str = "") -> Rotation:
        return self._measure("rotate", self.inner.rotate, buckets, tag, family_id, generation, policy, month)

    def revoke(self, buckets: Sequence[Bucket], tag: str, family_id: str, generation: int,
               policy: FamilyPolicy) -> Revocation:
        return self._measure("revoke", self.inner.revoke, buckets, tag, family_id, generation, policy)

    def end_families(self, tag: str, *, principal: str = "", idp_session: str = "", browser_session: str = "",
                     reason: str, policy: FamilyPolicy) -> Ended:
        return self._measure("end_families", self.inner.end_families, tag, principal=principal,
                             idp_session=idp_session, browser_session=browser_session, reason=reason,
                             policy=policy)

    def logout_tags(self, issuer: str, *, subject: str = "", idp_session: str = "") -> list[str]:
        return self._measure("logout_tags", self.inner.logout_tags, issuer, subject=subject,
                             idp_session=idp_session)

    def current_role(self, tag: str) -> str | None:
        return self._measure("current_role", self.inner.current_role, tag)

    def hit(self, buckets: Sequence[Bucket]) -> LimitDecision:
        return self._measure("hit", self.inner.hit, buckets)

    def put(self, key: str, value: str, ttl: int) -> None:
        self._measure("put", self.inner.put, key, value, ttl)

    def get(self, key: str) -> str | None:
        return self._measure("get", self.inner.get, key)

    def delete(self, key: str) -> None:
        self._measure("delete", self.inner.delete, key)


    def add_once(self, key: str, ttl: int) -> bool:
        return self._measure("add_once", self.inner.add_once, key, ttl)

    def link(self, index: str, member: str, ttl: int) -> None:
        self._measure("link", self.inner.link, index, member, ttl)

    def members(self, index: str) -> list[str]:
        return self._measure("members", self.inner.members, index)

    def active_identities(self, month: str) -> int:
        return self._measure("active_identities", self.inner.active_identities, month)

    def ping(self) -> float:
        return self._measure("ping", self.inner.ping)

    def close(self) -> None:
        self.inner.close()
