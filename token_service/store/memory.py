"""In-process store: the embedded default for ``make run`` and single-process use.

Same semantics as the Redis backend (the contract tests run against both), made atomic by one
lock. State lives in this process only, so configuration refuses it with more than one worker.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from token_service.store.base import (
    Bucket,
    Family,
    FamilyLifetimes,
    Issued,
    LimitDecision,
    Revocation,
    Rotation,
    Store,
    family_ref,
)
from token_service.store.gcra import decide, gcra_step

MAX_USED_DIGESTS = 256


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class _FamilyState:
    family: Family
    absolute_exp: int
    idle_exp: int
    live: set[str] = field(default_factory=set)
    used: dict[str, int] = field(default_factory=dict)  # digest -> when it was spent (ms)
    revoked: bool = False

    def expires(self) -> int:
        return min(self.idle_exp, self.absolute_exp)

    def end(self) -> bool:
        """Revoke the family and drop its live tokens; True when it was live until now."""
        was_live = not self.revoked
        self.revoked = True
        self.live.clear()
        return was_live


class MemoryStore(Store):
    def __init__(self) -> None:
        self._lock = threading.Lock()
        # -> the bucket's TAT (ms); a bucket is empty, so forgotten, once its TAT has passed
        self._buckets: dict[tuple[str, str, str], float] = {}
        self._families: dict[tuple[str, str], _FamilyState] = {}
        self._index: dict[str, set[str]] = {}
        self._active: dict[str, set[str]] = {}  # month -> identity tags
        self._values: dict[str, tuple[str, int]] = {}  # key -> (value, expires ms)
        self._sets: dict[str, tuple[set[str], int]] = {}  # key -> (members, expires ms)
        self._ops = 0

    # -- buckets ----------------------------------------------------------------------------
    def _check(self, buckets: Sequence[Bucket], now: int) -> LimitDecision:
        steps = []
        for b in buckets:
            tat = self._buckets.get((b.policy, b.tag, b.key))
            if tat is not None and tat <= now:
                tat = None
            steps.append(gcra_step(b, tat, now))
        decision = decide(steps)
        if decision.allowed:
            for b, step in zip(buckets, steps, strict=True):
                self._buckets[(b.policy, b.tag, b.key)] = step.new_tat
        return decision

    def _sweep(self, now: int) -> None:
        self._ops += 1
        if self._ops % 1024:
            return
        self._buckets = {k: tat for k, tat in self._buckets.items() if tat > now}
        self._values = {k: v for k, v in self._values.items() if v[1] > now}
        self._sets = {k: v for k, v in self._sets.items() if v[1] > now}
        self._families = {k: v for k, v in self._families.items() if v.expires() > now}
        self._index = {
            tag: live for tag, ids in self._index.items()
            if (live := {i for i in ids if (tag, i) in self._families})
        }

    def _count_active(self, month: str, tag: str) -> None:
        if month:
            self._active.setdefault(month, set()).add(tag)

    def _family(self, tag: str, family_id: str, now: int) -> _FamilyState | None:
        state = self._families.get((tag, family_id))
        if state is not None and state.expires() <= now:
            del self._families[(tag, family_id)]
            return None
        return state

    # -- Store ------------------------------------------------------------------------------
    def hit(self, buckets: Sequence[Bucket]) -> LimitDecision:
        with self._lock:
            return self._check(buckets, now_ms())

    def issue(self, buckets: Sequence[Bucket], family: Family, digest: str,
              lifetimes: FamilyLifetimes, month: str = "", links: Sequence[str] = ()) -> Issued:
        with self._lock:
            now = now_ms()
            self._sweep(now)
            limits = self._check(buckets, now)
            if not limits.allowed:
                return Issued(limits)
            state = _FamilyState(
                family=family,
                absolute_exp=now + lifetimes.absolute * 1000,
                idle_exp=now + lifetimes.idle * 1000,
                live={digest},
            )
            self._families[(family.tag, family.family_id)] = state
            self._index.setdefault(family.tag, set()).add(family.family_id)
            self._count_active(month, family.tag)
            member = family_ref(family.tag, family.family_id)
            for index in links:
                self._link_locked(index, member, state.absolute_exp, now)
            return Issued(limits, expires_at=state.expires() // 1000)

    def rotate(self, buckets: Sequence[Bucket], tag: str, family_id: str, presented: str,
               new_digest: str, lifetimes: FamilyLifetimes, month: str = "") -> Rotation:
        with self._lock:
            now = now_ms()
            limits = self._check(buckets, now)
            if not limits.allowed:
                return Rotation("limited", limits)
            state = self._family(tag, family_id, now)
            if state is None:
                return Rotation("unknown", limits)
            if state.revoked:
                return Rotation("revoked", limits, state.family)
            if presented in state.live:
                outcome = "rotated"
                state.live.discard(presented)
                state.used[presented] = now
                if len(state.used) > MAX_USED_DIGESTS:
                    del state.used[min(state.used, key=state.used.__getitem__)]
            elif presented in state.used:
                if now - state.used[presented] >= lifetimes.reuse_grace * 1000:
                    state.end()
                    return Rotation("reused", limits, state.family)
                outcome = "grace"
            else:
                return Rotation("unknown", limits)
            state.live.add(new_digest)
            state.idle_exp = now + lifetimes.idle * 1000
            self._count_active(month, tag)
            return Rotation(outcome, limits, state.family, expires_at=state.expires() // 1000)

    def revoke(self, buckets: Sequence[Bucket], tag: str, family_id: str, presented: str) -> Revocation:
        with self._lock:
            now = now_ms()
            limits = self._check(buckets, now)
            if not limits.allowed:
                return Revocation(limits)
            state = self._family(tag, family_id, now)
            if state is None or (presented not in state.live and presented not in state.used):
                return Revocation(limits)
            return Revocation(limits, revoked=state.end(), family=state.family)

    def revoke_identity(self, tag: str, identity: str) -> int:
        with self._lock:
            now = now_ms()
            count = 0
            for family_id in sorted(self._index.get(tag, set())):
                state = self._family(tag, family_id, now)
                if state is None or state.family.identity != identity:
                    continue
                count += state.end()
            return count

    def put(self, key: str, value: str, ttl: int) -> None:
        with self._lock:
            self._values[key] = (value, now_ms() + ttl * 1000)

    def get(self, key: str) -> str | None:
        with self._lock:
            found = self._values.get(key)
            return found[0] if found and found[1] > now_ms() else None

    def delete(self, key: str) -> None:
        with self._lock:
            self._values.pop(key, None)

    def add_once(self, key: str, ttl: int) -> bool:
        with self._lock:
            now = now_ms()
            found = self._values.get(key)
            if found and found[1] > now:
                return False
            self._values[key] = ("1", now + ttl * 1000)
            return True

    def _link_locked(self, index: str, member: str, keep_until: int, now: int) -> None:
        members, expires = self._sets.get(index, (set(), 0))
        if expires <= now:
            members = set()
        members.add(member)
        self._sets[index] = (members, max(expires, keep_until))

    def link(self, index: str, member: str, ttl: int) -> None:
        with self._lock:
            now = now_ms()
            self._link_locked(index, member, now + ttl * 1000, now)

    def members(self, index: str) -> list[str]:
        with self._lock:
            members, expires = self._sets.get(index, (set(), 0))
            return sorted(members) if expires > now_ms() else []

    def revoke_families(self, refs: Sequence[tuple[str, str]]) -> int:
        with self._lock:
            now = now_ms()
            count = 0
            for tag, family_id in refs:
                state = self._family(tag, family_id, now)
                if state is None:
                    continue
                count += state.end()
            return count

    def active_identities(self, month: str) -> int:
        with self._lock:
            return len(self._active.get(month, ()))

    def ping(self) -> float:
        return 0.0
