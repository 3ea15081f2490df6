"""The store interface: refresh-token families and rate-limit buckets (design 2.4-2.6).

One interface, two backends (``memory.py`` for one process, ``redis.py`` for production) that
pass one contract test suite. Each request-path operation checks the rate-limit buckets *and*
does its work in one atomic step (one Redis round trip), and writes nothing when a bucket refuses.
Only SHA-256 digests of refresh tokens are ever stored.

The values a request makes and passes along (buckets, decisions, families, outcomes) are
``NamedTuple``s: immutable like frozen dataclasses, but built in C rather than field by field
through ``object.__setattr__``, which cost a refresh several microseconds (``make bench``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple


class StoreUnavailable(Exception):
    """The store cannot be reached or did not answer in time; callers answer 503."""


class Bucket(NamedTuple):
    """One rate-limit bucket: ``limit`` requests per ``window`` seconds for one key.

    ``tag`` is the Redis Cluster hash tag the bucket's key lives under: the identity's tag for
    identity and family buckets (so they sit in the family's slot), the client IP for IP buckets.
    """

    policy: str  # e.g. "token-ip": the name shown in RateLimit-Policy
    key: str  # the bucket's own id inside its policy (an IP, "identity", a family id)
    tag: str
    limit: int
    window: int


class BucketState(NamedTuple):
    policy: str
    limit: int
    window: int
    remaining: int
    reset: int  # seconds until the bucket is full again


class LimitDecision(NamedTuple):
    """The outcome of checking a set of buckets; ``allowed`` is False when any one refused."""

    allowed: bool = True
    retry_after: int = 0
    states: Sequence[BucketState] = ()

    def tightest(self) -> BucketState | None:
        """The bucket closest to refusing: the one the ``RateLimit`` header reports."""
        return min(self.states, key=lambda s: (s.remaining, -s.reset), default=None)

    def merged(self, other: LimitDecision) -> LimitDecision:
        return LimitDecision(
            allowed=self.allowed and other.allowed,
            retry_after=max(self.retry_after, other.retry_after),
            states=[*self.states, *other.states],
        )


class Family(NamedTuple):
    """What a refresh-token family remembers, for minting and for logout/revocation later."""

    family_id: str
    tag: str
    identity: str
    role: str
    role_sid: str
    issuer: str
    subject: str
    session_id: str = ""


@dataclass(frozen=True)
class FamilyLifetimes:
    idle: int  # seconds a token may go unused
    absolute: int  # seconds from login after which the family ends whatever happens
    reuse_grace: int = 0  # seconds a just-used token may still be presented


class Issued(NamedTuple):
    limits: LimitDecision
    expires_at: int = 0  # unix seconds: when the new refresh token stops working (idle/absolute)


RotationOutcome = Literal["rotated", "grace", "reused", "revoked", "unknown", "limited"]


class Rotation(NamedTuple):
    outcome: RotationOutcome
    limits: LimitDecision = LimitDecision()
    family: Family | None = None
    expires_at: int = 0


class Revocation(NamedTuple):
    limits: LimitDecision
    revoked: bool = False
    family: Family | None = None


def family_ref(tag: str, family_id: str) -> str:
    """How an index names a family."""
    return f"f:{tag}:{family_id}"


def parse_family_ref(member: str) -> tuple[str, str] | None:
    kind, _, rest = member.partition(":")
    tag, _, family_id = rest.partition(":")
    return (tag, family_id) if kind == "f" and tag and family_id else None


class Store(ABC):
    """Refresh-token families and rate limits; every method may raise ``StoreUnavailable``."""

    @abstractmethod
    def issue(self, buckets: Sequence[Bucket], family: Family, digest: str,
              lifetimes: FamilyLifetimes, month: str = "", links: Sequence[str] = ()) -> Issued:
        """Check ``buckets``; if all allow, store a new family whose live token is ``digest``.

        With ``month`` (``YYYY-MM``), the identity also counts as active that month. The family
        is added (as ``family_ref``) to each index in ``links``, so logout can find it.
        """

    @abstractmethod
    def rotate(self, buckets: Sequence[Bucket], tag: str, family_id: str, presented: str,
               new_digest: str, lifetimes: FamilyLifetimes, month: str = "") -> Rotation:
        """Check ``buckets``; then spend ``presented`` and make ``new_digest`` live.

        ``reused`` (and the whole family revoked) when ``presented`` was already spent outside
        the grace window; ``grace`` when inside it; ``revoked``/``unknown`` otherwise. A
        successful rotation counts the identity as active in ``month``.
        """

    @abstractmethod
    def revoke(self, buckets: Sequence[Bucket], tag: str, family_id: str, presented: str) -> Revocation:
        """Check ``buckets``; end the family ``presented`` belongs to (RFC 7009)."""

    @abstractmethod
    def revoke_identity(self, tag: str, identity: str) -> int:
        """End every family of ``identity``; return how many were live."""

    @abstractmethod
    def hit(self, buckets: Sequence[Bucket]) -> LimitDecision:
        """Count one request against ``buckets`` (refused requests and failed proofs)."""

    # -- small key-value and index primitives for browser sessions and logout -------------
    @abstractmethod
    def put(self, key: str, value: str, ttl: int) -> None:
        """Store ``value`` under ``key`` for ``ttl`` seconds."""

    @abstractmethod
    def get(self, key: str) -> str | None:
        """The live value under ``key``, or None."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Forget ``key``."""

    @abstractmethod
    def add_once(self, key: str, ttl: int) -> bool:
        """True the first time ``key`` is added within ``ttl``; False on a replay."""

    @abstractmethod
    def link(self, index: str, member: str, ttl: int) -> None:
        """Add ``member`` to the set ``index`` (kept at least ``ttl`` seconds)."""

    @abstractmethod
    def members(self, index: str) -> list[str]:
        """The members of the set ``index``."""

    @abstractmethod
    def revoke_families(self, refs: Sequence[tuple[str, str]]) -> int:
        """End the families ``(tag, family_id)``; return how many were live (logout)."""

    @abstractmethod
    def active_identities(self, month: str) -> int:
        """How many distinct identities got a token in ``month`` (approximate on Redis: HLL)."""

    @abstractmethod
    def ping(self) -> float:
        """Round-trip time in seconds; raises ``StoreUnavailable``."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""
