"""Redis backend: standalone, TLS, ACL users, Sentinel or Cluster, with Lua for atomicity.

Every request-path operation is one ``EVALSHA`` (one round trip): the rate-limit buckets and the
family work run in the same script. An identity's record and its identity and family buckets share
the hash tag ``{<identity tag>}``, so they live in one Cluster slot. A client-IP or global bucket has
its own tag; on a Cluster it is therefore checked by a separate script just before (two round trips
there; one on standalone and Sentinel).

Only redis-py's public API is used (``register_script``, the client's commands), so a redis-py
upgrade cannot change how a reply is read. Every error the client can raise, whatever Redis
answered (``LOADING``, ``READONLY``, ``NOAUTH``, ``OOM``, ``CLUSTERDOWN``, ``MOVED`` ...) or however
the connection failed, becomes ``StoreUnavailable`` here and nowhere else.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from importlib import resources
from typing import Any, TypeVar

import redis
from redis.commands.core import Script
from redis.exceptions import RedisClusterException

from token_service.store.base import (
    TOMBSTONE_SECONDS,
    Bucket,
    BucketState,
    Ended,
    FamilyInfo,
    FamilyPolicy,
    Issued,
    LimitDecision,
    NewFamily,
    Revocation,
    Rotation,
    Store,
    StoreUnavailable,
    logout_key,
)

log = logging.getLogger(__name__)
T = TypeVar("T")
SCRIPTS = ("limit", "issue", "rotate", "revoke", "end_families", "link")
# Whatever redis-py raises for a failed call: its own errors, the cluster client's, and the
# socket errors of a connection it did not get to wrap.
STORE_ERRORS = (redis.RedisError, RedisClusterException, OSError)


def _source(name: str) -> str:
    lua = resources.files("token_service.store").joinpath("lua")
    preludes = ("gcra.lua", "family.lua")
    return "".join(lua.joinpath(part).read_text() + "\n" for part in (*preludes, f"{name}.lua"))


def _decision(outcome: str, retry: Any, flat: Sequence[Any], buckets: Sequence[Bucket]) -> LimitDecision:
    states = [
        BucketState(b.policy, b.limit, b.window, int(flat[2 * i]), int(flat[2 * i + 1]))
        for i, b in enumerate(buckets)
    ]
    return LimitDecision(allowed=outcome != "limited", retry_after=int(retry), states=states)


def _family_info(family_id: str, reply: Sequence[Any]) -> FamilyInfo | None:
    """The identity, role and ``issuer<TAB>sub`` a script replied with (items 3 to 5), if any."""
    if len(reply) < 6:
        return None
    issuer, _, subject = str(reply[5]).partition("\t")
    return FamilyInfo(family_id, reply[3], reply[4], issuer, subject)


class RedisStore(Store):
    """``client`` is a redis-py client; or ``connect`` makes one at first use (a Redis Cluster client
    contacts the cluster as it is built, and a cluster that is down at start must mean 503s, not a
    service that cannot start)."""

    def __init__(self, client: Any = None, *, connect: Callable[[], Any] | None = None, prefix: str = "ts:",
                 cluster: bool = False, max_connections: int = 64, wait: float = 0.5) -> None:
        self.prefix = prefix
        self.cluster = cluster
        self._connect = connect
        self._lock = threading.Lock()
        # redis-py's default pools refuse a call past max_connections ("Too many connections") rather
        # than wait, and Sentinel's pool has no blocking kind (BlockingConnectionPool is for a plain
        # Redis). A gevent worker runs as many requests at once as it has connections, so calls wait
        # here, at most ``wait`` seconds, for a pooled connection: one rule for every backend.
        self._slots = threading.BoundedSemaphore(max_connections)
        self._wait = wait
        self._client: Any = None
        self._scripts: dict[str, Script] = {}
        if client is not None:
            self._use(client)

    def _use(self, client: Any) -> None:
        self._scripts = {name: client.register_script(_source(name)) for name in SCRIPTS}
        self._client = client

    @property
    def client(self) -> Any:
        """The redis-py client, made now if it does not exist yet (callers go through ``_call``)."""
        if self._client is None:
            with self._lock:
                if self._client is None:
                    assert self._connect is not None
                    self._use(self._connect())
        return self._client

    # -- keys -------------------------------------------------------------------------------
    def bucket_key(self, b: Bucket) -> str:
        return f"{self.prefix}{{{b.tag}}}:rl:{b.policy}:{b.key}"

    def record_key(self, tag: str) -> str:
        return f"{self.prefix}{{{tag}}}:u"

    def active_key(self, month: str) -> str:
        return f"{self.prefix}active:{month}"

    def _active_keys(self, month: str) -> list[str]:
        """The HyperLogLog joins the request's script, except on a Cluster (another slot)."""
        return [self.active_key(month)] if month and not self.cluster else []

    def _count_active_apart(self, month: str, tag: str) -> None:
        if month and self.cluster:
            key = self.active_key(month)
            self._call(lambda: self.client.pfadd(key, tag))

    # -- plumbing ---------------------------------------------------------------------------
    @staticmethod
    def _unavailable(exc: Exception) -> StoreUnavailable:
        log.warning("store error: %s: %s", type(exc).__name__, exc)
        return StoreUnavailable(type(exc).__name__)

    def _call(self, fn: Callable[[], T]) -> T:
        if not self._slots.acquire(timeout=self._wait):
            log.warning("store busy: every pooled connection stayed in use for %.2f s", self._wait)
            raise StoreUnavailable("PoolExhausted")
        try:
            return fn()
        except STORE_ERRORS as exc:
            raise self._unavailable(exc) from None
        finally:
            self._slots.release()

    def _script(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        def run() -> Any:
            self.client  # noqa: B018 - made (and its scripts registered) at first use
            return self._scripts[name](keys=keys, args=args)

        return self._call(run)

    def _run(self, name: str, buckets: Sequence[Bucket], keys: Sequence[str], args: Sequence[Any]) -> Any:
        """One script: the buckets' keys and (limit, window) pairs first, then the script's own."""
        bucket_args: list[Any] = [len(buckets)]
        for b in buckets:
            bucket_args += (b.limit, b.window)
        return self._script(name, [*map(self.bucket_key, buckets), *keys], [*bucket_args, *args])

    def _limit_by_slot(self, buckets: Sequence[Bucket]) -> LimitDecision:
        """One limit script per hash tag (a Cluster slot); stop at the first refusal."""
        decision = LimitDecision()
        for tag in dict.fromkeys(b.tag for b in buckets):
            decision = decision.merged(self._limit([b for b in buckets if b.tag == tag]))
            if not decision.allowed:
                break
        return decision

    def _split(self, buckets: Sequence[Bucket], tag: str) -> tuple[LimitDecision, list[Bucket]]:
        """On a Cluster, check buckets of other slots first; return the decision and the rest."""
        if not self.cluster:
            return LimitDecision(), list(buckets)
        return self._limit_by_slot([b for b in buckets if b.tag != tag]), [b for b in buckets if b.tag == tag]

    def _limit(self, buckets: Sequence[Bucket]) -> LimitDecision:
        outcome, retry, flat = self._run("limit", buckets, [], [])
        return _decision(outcome, retry, flat, buckets)

    # -- Store ------------------------------------------------------------------------------
    def hit(self, buckets: Sequence[Bucket]) -> LimitDecision:
        if not buckets:
            return LimitDecision()
        return self._limit_by_slot(buckets) if self.cluster else self._limit(buckets)

    def _logout_keys(self, family: NewFamily) -> list[str]:
        if not family.logout_index:
            return []
        keys = [logout_key(family.issuer, "sub", family.subject)]
        if family.idp_session:
            keys.append(logout_key(family.issuer, "sid", family.idp_session))
        return [self.prefix + key for key in keys]

    def issue(self, buckets: Sequence[Bucket], family: NewFamily, policy: FamilyPolicy,
              month: str = "") -> Issued:
        first, rest = self._split(buckets, family.tag)
        if not first.allowed:
            return Issued(first)
        hll = self._active_keys(month)
        # The logout maps live in other slots: inside the script on standalone, apart on a Cluster.
        logout = self._logout_keys(family)
        reply = self._run(
            "issue", rest, [self.record_key(family.tag), *hll, *([] if self.cluster else logout)],
            [family.family_id, family.identity, family.role, family.issuer, family.subject, family.principal,
             family.session_digest, family.browser_digest, policy.idle, policy.absolute, family.confirmed_at,
             family.tag, len(hll)],
        )
        limits = first.merged(_decision(reply[0], reply[1], reply[2], rest))
        if not limits.allowed:
            return Issued(limits)
        self._count_active_apart(month, family.tag)
        if self.cluster:
            for key in logout:
                self._add_logout_tag(key, family.tag, policy.absolute)
        return Issued(limits, expires_at=int(reply[4]), role=reply[3], previous_role=reply[5])

    def _add_logout_tag(self, key: str, tag: str, ttl: int) -> None:
        """A Cluster's logout map, updated apart from the family (it lives in another slot)."""
        def update() -> None:
            tags = (self.client.get(key) or "").split()
            if tag not in tags:
                tags = [*tags, tag][-4:]
            self.client.set(key, " ".join(tags), ex=ttl)

        self._call(update)

    def rotate(self, buckets: Sequence[Bucket], tag: str, family_id: str, generation: int,
               policy: FamilyPolicy, month: str = "") -> Rotation:
        first, rest = self._split(buckets, tag)
        if not first.allowed:
            return Rotation("limited", first)
        reply = self._run(
            "rotate", rest, [self.record_key(tag), *self._active_keys(month)],
            [family_id, generation, policy.idle, policy.absolute, policy.retry_window, policy.role_max_age,
             1 if policy.on_role_change == "revoke" else 0, tag],
        )
        outcome = reply[0]
        limits = first.merged(_decision(outcome, reply[1], reply[2], rest))
        if outcome in ("rotated", "retried"):
            self._count_active_apart(month, tag)
            return Rotation(outcome, limits, _family_info(family_id, reply), int(reply[6]), int(reply[7]), reply[8])
        return Rotation(outcome, limits, _family_info(family_id, reply))

    def revoke(self, buckets: Sequence[Bucket], tag: str, family_id: str, generation: int,
               policy: FamilyPolicy) -> Revocation:
        first, rest = self._split(buckets, tag)
        if not first.allowed:
            return Revocation(first)
        reply = self._run("revoke", rest, [self.record_key(tag)], [family_id, generation, policy.idle,
                                                                   policy.absolute])
        limits = first.merged(_decision(reply[0], reply[1], reply[2], rest))
        return Revocation(limits, revoked=reply[0] == "revoked", family=_family_info(family_id, reply))

    def end_families(self, tag: str, *, principal: str = "", idp_session: str = "", browser_session: str = "",
                     reason: str, policy: FamilyPolicy) -> Ended:
        until = int(time.time()) + TOMBSTONE_SECONDS
        identity, ended = self._script(
            "end_families", [self.record_key(tag)],
            [principal, idp_session, browser_session, reason, until, policy.idle, policy.absolute],
        )
        return Ended(identity, list(ended))

    def logout_tags(self, issuer: str, *, subject: str = "", idp_session: str = "") -> list[str]:
        key = logout_key(issuer, "sid", idp_session) if idp_session else logout_key(issuer, "sub", subject)
        value = self.get(key)
        return value.split() if value else []

    def current_role(self, tag: str) -> str | None:
        key = self.record_key(tag)
        return self._call(lambda: self.client.hget(key, "r"))  # type: ignore[no-any-return]

    def put(self, key: str, value: str, ttl: int) -> None:
        self._call(lambda: self.client.set(self.prefix + key, value, ex=ttl))

    def get(self, key: str) -> str | None:
        return self._call(lambda: self.client.get(self.prefix + key))  # type: ignore[no-any-return]

    def delete(self, key: str) -> None:
        self._call(lambda: self.client.delete(self.prefix + key))


    def add_once(self, key: str, ttl: int) -> bool:
        return bool(self._call(lambda: self.client.set(self.prefix + key, "1", ex=ttl, nx=True)))

    def link(self, index: str, member: str, ttl: int) -> None:
        self._script("link", [self.prefix + index], [member, ttl])

    def members(self, index: str) -> list[str]:
        return sorted(self._call(lambda: self.client.smembers(self.prefix + index)))

    def active_identities(self, month: str) -> int:
        key = self.active_key(month)
        return int(self._call(lambda: self.client.pfcount(key)))

    def ping(self) -> float:
        started = time.perf_counter()
        self._call(self.client.ping)
        return time.perf_counter() - started

    def close(self) -> None:
        if self._client is None:
            return
        try:
            self._client.close()
        except STORE_ERRORS:  # pragma: no cover - closing a dead connection
            pass
