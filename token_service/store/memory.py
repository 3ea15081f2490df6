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
    TOMBSTONE_SECONDS,
    Bucket,
    Ended,
    FamilyInfo,
    FamilyPolicy,
    Issued,
    LimitDecision,
    NewFamily,
    Revocation,
    Rotation,
    Store,
    logout_key,
)
from token_service.store.gcra import decide, gcra_step

MAX_LOGOUT_TAGS = 4
MAX_FAMILIES = 64  # live families per identity; the Redis scripts keep the same cap


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class _Family:
    generation: int
    created: int  # unix seconds
    last: int  # unix seconds of the last rotation (or the sign-in)
    role: str  # the role it last minted
    principal: str  # short digests: issuer + sub, IdP session, browser session ("-" when none)
    idp_session: str
    browser_session: str
    ended: str = ""  # why it ended; "" while live
    ends_at: int = 0  # a tombstone is kept until the family would have expired

    def expires(self, policy: FamilyPolicy) -> int:
        return min(self.created + policy.absolute, self.last + policy.idle)


@dataclass
class _Identity:
    identity: str
    role: str
    confirmed: int
    principals: dict[str, tuple[str, str]] = field(default_factory=dict)  # digest -> (issuer, sub)
    families: dict[str, _Family] = field(default_factory=dict)


class MemoryStore(Store):
    def __init__(self) -> None:
        self._lock = threading.Lock()
        # -> the bucket's TAT (ms); a bucket is empty, so forgotten, once its TAT has passed
        self._buckets: dict[tuple[str, str, str], float] = {}
        self._identities: dict[str, _Identity] = {}
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

    def _sweep(self, now: int, policy: FamilyPolicy) -> None:
        self._ops += 1
        if self._ops % 1024:
            return
        self._buckets = {k: tat for k, tat in self._buckets.items() if tat > now}
        self._values = {k: v for k, v in self._values.items() if v[1] > now}
        self._sets = {k: v for k, v in self._sets.items() if v[1] > now}
        for record in self._identities.values():
            self._forget_ended(record, now // 1000, policy)
        self._identities = {tag: r for tag, r in self._identities.items() if r.families}

    @staticmethod
    def _forget_ended(record: _Identity, now: int, policy: FamilyPolicy) -> None:
        record.families = {
            fid: f for fid, f in record.families.items()
            if (f.ends_at if f.ended else f.expires(policy)) > now
        }

    def _count_active(self, month: str, tag: str) -> None:
        if month:
            self._active.setdefault(month, set()).add(tag)

    def _family(self, tag: str, family_id: str, now: int, policy: FamilyPolicy) -> tuple[_Identity, _Family] | None:
        record = self._identities.get(tag)
        family = record.families.get(family_id) if record else None
        if record is None or family is None:
            return None
        if (family.ends_at if family.ended else family.expires(policy)) <= now:
            del record.families[family_id]
            return None
        return record, family

    @staticmethod
    def _info(record: _Identity, family_id: str, family: _Family) -> FamilyInfo:
        issuer, subject = record.principals.get(family.principal, ("", ""))
        return FamilyInfo(family_id, record.identity, family.role, issuer, subject)

    @staticmethod
    def _end(family: _Family, reason: str, policy: FamilyPolicy) -> None:
        family.ends_at = family.expires(policy)
        family.ended = reason

    # -- Store ------------------------------------------------------------------------------
    def hit(self, buckets: Sequence[Bucket]) -> LimitDecision:
        with self._lock:
            return self._check(buckets, now_ms())

    def issue(self, buckets: Sequence[Bucket], family: NewFamily, policy: FamilyPolicy,
              month: str = "") -> Issued:
        with self._lock:
            ms = now_ms()
            now = ms // 1000
            self._sweep(ms, policy)
            limits = self._check(buckets, ms)
            if not limits.allowed:
                return Issued(limits)
            record = self._identities.get(family.tag)
            previous = record.role if record else ""
            if record is None:
                record = _Identity(family.identity, family.role, family.confirmed_at or now)
                self._identities[family.tag] = record
            elif not family.confirmed_at:
                record.role, record.confirmed = family.role, now
            self._forget_ended(record, now, policy)
            if len(record.families) >= MAX_FAMILIES:
                live = sorted((f.last, fid) for fid, f in record.families.items() if not f.ended)
                for _, oldest in live[: max(0, len(live) - MAX_FAMILIES + 1)]:
                    del record.families[oldest]  # the least recently used device signs in again
            record.principals[family.principal] = (family.issuer, family.subject)
            record.families[family.family_id] = _Family(
                0, now, now, record.role, family.principal, family.session_digest, family.browser_digest)
            self._count_active(month, family.tag)
            if family.logout_index:
                self._index_for_logout(family, policy, ms)
            changed = previous if previous and previous != record.role else ""
            return Issued(limits, now + min(policy.idle, policy.absolute), record.role, changed)

    def _index_for_logout(self, family: NewFamily, policy: FamilyPolicy, ms: int) -> None:
        keys = [logout_key(family.issuer, "sub", family.subject)]
        if family.idp_session:
            keys.append(logout_key(family.issuer, "sid", family.idp_session))
        for key in keys:
            found = self._values.get(key)
            tags = found[0].split() if found and found[1] > ms else []
            if family.tag not in tags:
                tags = [*tags, family.tag][-MAX_LOGOUT_TAGS:]
            self._values[key] = (" ".join(tags), ms + policy.absolute * 1000)

    def rotate(self, buckets: Sequence[Bucket], tag: str, family_id: str, generation: int,
               policy: FamilyPolicy, month: str = "") -> Rotation:
        with self._lock:
            ms = now_ms()
            now = ms // 1000
            limits = self._check(buckets, ms)
            if not limits.allowed:
                return Rotation("limited", limits)
            found = self._family(tag, family_id, now, policy)
            if found is None:
                return Rotation("unknown", limits)
            record, family = found
            info = self._info(record, family_id, family)
            if family.ended:
                return Rotation("revoked", limits, info)
            if generation == family.generation:
                outcome = "rotated"
            elif generation == family.generation - 1 and now - family.last < policy.retry_window:
                outcome = "retried"
            elif generation < family.generation:
                self._end(family, "reuse", policy)
                return Rotation("reused", limits, info)
            else:
                return Rotation("unknown", limits)
            if policy.role_max_age and now - record.confirmed >= policy.role_max_age:
                return Rotation("login_required", limits, info)
            learned = ""
            if family.role != record.role:
                if policy.on_role_change == "revoke":
                    self._end(family, "role_change", policy)
                    return Rotation("role_revoked", limits, info)
                learned, family.role = family.role, record.role
            if outcome == "rotated":
                family.generation += 1
                family.last = now
            self._count_active(month, tag)
            return Rotation(outcome, limits, info._replace(role=family.role), family.generation,
                            family.expires(policy), learned)

    def revoke(self, buckets: Sequence[Bucket], tag: str, family_id: str, generation: int,
               policy: FamilyPolicy) -> Revocation:
        with self._lock:
            ms = now_ms()
            limits = self._check(buckets, ms)
            if not limits.allowed:
                return Revocation(limits)
            found = self._family(tag, family_id, ms // 1000, policy)
            if found is None or generation > found[1].generation:
                return Revocation(limits)
            record, family = found
            info = self._info(record, family_id, family)
            if family.ended:
                return Revocation(limits, False, info)
            self._end(family, "revoke", policy)
            return Revocation(limits, True, info)

    def end_families(self, tag: str, *, principal: str = "", idp_session: str = "", browser_session: str = "",
                     reason: str, policy: FamilyPolicy) -> Ended:
        with self._lock:
            record = self._identities.get(tag)
            if record is None:
                return Ended("", [])
            now = int(time.time())
            ended = []
            for family_id, family in record.families.items():
                if family.ended or family.expires(policy) <= now:
                    continue
                if principal and family.principal != principal:
                    continue
                if idp_session and family.idp_session != idp_session:
                    continue
                if browser_session and family.browser_session != browser_session:
                    continue
                family.ended, family.ends_at = reason, now + TOMBSTONE_SECONDS
                ended.append(family_id)
            return Ended(record.identity, ended)

    def logout_tags(self, issuer: str, *, subject: str = "", idp_session: str = "") -> list[str]:
        key = logout_key(issuer, "sid", idp_session) if idp_session else logout_key(issuer, "sub", subject)
        value = self.get(key)
        return value.split() if value else []

    def current_role(self, tag: str) -> str | None:
        with self._lock:
            record = self._identities.get(tag)
            return record.role if record else None

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

    def link(self, index: str, member: str, ttl: int) -> None:
        with self._lock:
            now = now_ms()
            members, expires = self._sets.get(index, (set(), 0))
            if expires <= now:
                members = set()
            members.add(member)
            self._sets[index] = (members, max(expires, now + ttl * 1000))

    def members(self, index: str) -> list[str]:
        with self._lock:
            members, expires = self._sets.get(index, (set(), 0))
            return sorted(members) if expires > now_ms() else []

    def active_identities(self, month: str) -> int:
        with self._lock:
            return len(self._active.get(month, ()))

    def ping(self) -> float:
        return 0.0
