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
    Family,
    FamilyLifetimes,
    Issued,
    LimitDecision,
    Revocation,
    Rotation,
    Store,
    StoreUnavailable,
)

T = TypeVar("T")


class InstrumentedStore(Store):
    def __init__(self, inner: Store) -> None:
        self.inner = inner

    def _measure(self, operation: str, call: Callable[..., T], *args: Any) -> T:
        """``call(*args)``, timed (the arguments are passed on, not closed over: one call less)."""
        started = time.perf_counter()
        try:
            return call(*args)
        except StoreUnavailable:
            child(STORE_ERRORS, operation).inc()
            raise
        finally:
            child(STORE_DURATION, operation).observe(time.perf_counter() - started)

    def issue(self, buckets: Sequence[Bucket], family: Family, digest: str,
              lifetimes: FamilyLifetimes, month: str = "", links: Sequence[str] = ()) -> Issued:
        return self._measure("issue", self.inner.issue, buckets, family, digest, lifetimes, month, links)

    def rotate(self, buckets: Sequence[Bucket], tag: str, family_id: str, presented: str,
               new_digest: str, lifetimes: FamilyLifetimes, month: str = "") -> Rotation:
        return self._measure("rotate", self.inner.rotate, buckets, tag, family_id, presented, new_digest,
                             lifetimes, month)

    def revoke(self, buckets: Sequence[Bucket], tag: str, family_id: str, presented: str) -> Revocation:
        return self._measure("revoke", self.inner.revoke, buckets, tag, family_id, presented)

    def revoke_identity(self, tag: str, identity: str) -> int:
        return self._measure("revoke_identity", self.inner.revoke_identity, tag, identity)

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

    def revoke_families(self, refs: Sequence[tuple[str, str]]) -> int:
        return self._measure("revoke_families", self.inner.revoke_families, refs)

    def active_identities(self, month: str) -> int:
        return self._measure("active_identities", self.inner.active_identities, month)

    def ping(self) -> float:
        return self._measure("ping", self.inner.ping)

    def close(self) -> None:
        self.inner.close()
