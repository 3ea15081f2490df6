"""The store interface: refresh-token families, identity records and rate-limit buckets (design 2.4-2.6).

One interface, two backends (``memory.py`` for one process, ``redis.py`` for production) that pass one
contract test suite. Each request-path operation checks the rate-limit buckets *and* does its work in
one atomic step (one Redis round trip), and writes nothing when a bucket refuses.

What is kept, per identity (one record, so an identity's data sits in one Redis Cluster slot):
- the identity's current role and when a proof of identity (a sign-in) last confirmed it: refreshes
  mint with that role, so a role change reaches every device (issue "role lifecycle");
- each family's generation number, creation and last-rotation times, the role it last minted, and
  short digests of its issuer + ``sub``, IdP session and browser session (for logout). No part of any
  refresh token is stored: tokens are HMACs of (family, generation) under a key the store never sees.
"""

from __future__ import annotations

import base64
import hashlib
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple


class StoreUnavailable(Exception):
    """The store cannot be reached or did not answer in time; callers answer 503."""


class Bucket(NamedTuple):
    """One rate-limit bucket: ``limit`` requests per ``window`` seconds for one key.

    ``tag`` is the Redis Cluster hash tag the bucket's key lives under: the identity's tag for
    identity and family buckets (so they sit in the identity's slot), the client IP for IP buckets.
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


RoleChange = Literal["follow", "revoke"]


@dataclass(frozen=True)
class FamilyPolicy:
    """``[refresh]``: how long families live and what a refresh accepts."""

    idle: int  # seconds a family may go unrefreshed
    absolute: int  # seconds from sign-in after which the family ends whatever happens
    retry_window: int = 60  # seconds after a rotation in which the spent token may be retried
    role_max_age: int = 0  # seconds a role may go unconfirmed by a sign-in; 0: no bound
    on_role_change: RoleChange = "follow"  # families take the identity's new role, or end


TOMBSTONE_SECONDS = 86400  # how long an ended family is remembered as ended (not just unknown)


def short_digest(*parts: str) -> str:
    """48 bits of SHA-256, base64url (8 characters): tells an identity's few families, sessions and
    subjects apart, in as few bytes of the store as that takes."""
    return base64.urlsafe_b64encode(hashlib.sha256("\x00".join(parts).encode("utf-8")).digest()[:6]).decode()


def logout_key(issuer: str, kind: Literal["sub", "sid"], value: str) -> str:
    """Where back-channel logout finds the identities that a ``sub`` or ``sid`` of ``issuer`` reached."""
    digest = base64.urlsafe_b64encode(hashlib.sha256(value.encode("utf-8")).digest()[:16]).rstrip(b"=").decode()
    return f"bcl:{issuer}:{kind}:{digest}"


class NewFamily(NamedTuple):
    """What a sign-in starts. ``confirmed``: a fresh proof of identity, whose role becomes the
    identity's current role; otherwise (a browser session's later token) the family takes the
    identity's current role when there is one."""

    tag: str
    family_id: str
    identity: str
    role: str
    issuer: str
    subject: str
    idp_session: str = ""  # the IdP's session id (``sid``), when the proof carried one
    browser_session: str = ""  # digest of the browser session it was minted through
    confirmed_at: int = 0  # 0: confirmed now (a sign-in); else when the proof it rests on was made
    logout_index: bool = False  # findable by back-channel logout (its issuer is the [login] issuer)

    @property
    def principal(self) -> str:
        return short_digest(self.issuer, self.subject)

    @property
    def session_digest(self) -> str:
        return short_digest(self.issuer, self.idp_session) if self.idp_session else "-"

    @property
    def browser_digest(self) -> str:
        return short_digest(self.browser_session) if self.browser_session else "-"


class Issued(NamedTuple):
    limits: LimitDecision
    expires_at: int = 0  # unix seconds: when the family ends unless refreshed
    role: str = ""  # the role the family mints with: the identity's current role
    previous_role: str = ""  # the identity's role before this sign-in, when the sign-in changed it


class FamilyInfo(NamedTuple):
    """What a rotation or revocation learns about the family, for minting and the audit line."""

    family_id: str
    identity: str
    role: str
    issuer: str = ""
    subject: str = ""


RotationOutcome = Literal[
    "rotated", "retried", "reused", "revoked", "unknown", "limited", "login_required", "role_revoked"
]


class Rotation(NamedTuple):
    outcome: RotationOutcome
    limits: LimitDecision = LimitDecision()
    family: FamilyInfo | None = None
    generation: int = 0  # the successor's generation: mint the refresh token for it
    expires_at: int = 0
    previous_role: str = ""  # the role the family minted last, when it now learned another


class Revocation(NamedTuple):
    limits: LimitDecision
    revoked: bool = False
    family: FamilyInfo | None = None


class Ended(NamedTuple):
    """Families ended at once (sign-out, back-channel logout, revoke-all), for the audit line."""

    identity: str
    family_ids: Sequence[str]


class Store(ABC):
    """Families, identity records and rate limits; every method may raise ``StoreUnavailable``."""

    @abstractmethod
    def issue(self, buckets: Sequence[Bucket], family: NewFamily, policy: FamilyPolicy,
              month: str = "") -> Issued:
        """Check ``buckets``; if all allow, start ``family`` at generation 0.

        With ``month`` (``YYYY-MM``) the identity also counts as active that month.
        """

    @abstractmethod
    def rotate(self, buckets: Sequence[Bucket], tag: str, family_id: str, generation: int,
               policy: FamilyPolicy, month: str = "") -> Rotation:
        """Check ``buckets``; then spend the token of ``generation``.

        The current generation rotates (``rotated``, successor ``generation + 1``); the one before
        it, within ``retry_window`` of that rotation, gets the same successor again (``retried``);
        any older one revokes the family (``reused``). The family mints with the identity's current
        role (``previous_role`` names the one it learned from); ``role_revoked`` when it must end on a
        role change instead, ``login_required`` when the role is older than ``role_max_age``.
        """

    @abstractmethod
    def revoke(self, buckets: Sequence[Bucket], tag: str, family_id: str, generation: int,
               policy: FamilyPolicy) -> Revocation:
        """Check ``buckets``; end the family (RFC 7009) when ``generation`` is one of its tokens."""

    @abstractmethod
    def end_families(self, tag: str, *, principal: str = "", idp_session: str = "", browser_session: str = "",
                     reason: str, policy: FamilyPolicy) -> Ended:
        """End the identity's live families that match every given digest (none given: all of them).

        The digests are ``NewFamily``'s: ``principal``, ``session_digest``, ``browser_digest``.
        """

    @abstractmethod
    def logout_tags(self, issuer: str, *, subject: str = "", idp_session: str = "") -> list[str]:
        """The identity tags whose families carried this ``sid`` (or, without one, this ``sub``)."""

    @abstractmethod
    def current_role(self, tag: str) -> str | None:
        """The identity's current role, as the newest proof of identity set it."""

    @abstractmethod
    def hit(self, buckets: Sequence[Bucket]) -> LimitDecision:
        """Count one request against ``buckets`` (refused requests and failed proofs)."""

    # -- small key-value and index primitives for browser sessions and the sync cache -----------
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
    def active_identities(self, month: str) -> int:
        """How many distinct identities got a token in ``month`` (approximate on Redis: HLL)."""

    @abstractmethod
    def ping(self) -> float:
        """Round-trip time in seconds; raises ``StoreUnavailable``."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""
