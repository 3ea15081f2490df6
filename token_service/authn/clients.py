"""Trusted backend clients that mint on someone's behalf (design 2.1, "Trusted service clients").

A bot, a support console or an SMS-to-chat bridge needs a Conversations token for an identity it
names. Each such backend is a ``[[trusted_clients]]`` entry, and proves itself in one of two ways:

- a client-credentials access token from one of the ``[[issuers]]``, verified like any bearer token
  (signature, issuer, audience); the client is the one whose ``issuer`` and ``subject`` are that
  token's (a client-credentials token's ``sub`` names the client: RFC 9068 2.2). A user's token,
  even one issued to the same application, has the user's ``sub`` and is never a client's;
- an RFC 7523 JWT signed with the client's own registered key (``rfc7523.py``).

Then its allow-list decides: the identity must be one of ``identities`` or match one of
``identity_patterns`` (globs, case-sensitive), and pass the Conversations identity rules; the role
must be one of ``roles``. Anything else is a 403 that says which rule refused.
"""

from __future__ import annotations

from fnmatch import fnmatchcase

from token_service.authn.bearer import BearerVerifier, VerifiedToken
from token_service.authn.rfc7523 import ClientAssertions
from token_service.errors import AccessDenied
from token_service.mapping import IdentityPolicy, Mapped, check_named_identity
from token_service.ratelimit import RateLimiter
from token_service.settings import Settings, TrustedClientSettings
from token_service.store.base import Bucket, Store

CLIENT_POLICY = "client-client"  # the rate-limit policy a client's own ``rate_limit`` replaces


class TrustedClients:
    """Every ``[[trusted_clients]]`` entry: who presents a credential, and what they may mint."""

    def __init__(self, settings: Settings, verifier: BearerVerifier, store: Store) -> None:
        clients = settings.trusted_clients
        self._by_subject = {(c.issuer, c.credential_subject): c for c in clients if c.issuer is not None}
        self.assertions = ClientAssertions(clients, settings.server.public_url, store)
        self._verifier = verifier
        self._sids = settings.roles.sids
        identity = settings.identity
        self._identity_rules = IdentityPolicy(
            sources=(), max_length=identity.max_length, reserved=identity.reserved_characters,
            allowed_reserved=frozenset(identity.allowed_reserved),
        )

    def owner(self, verified: VerifiedToken) -> TrustedClientSettings | None:
        """The trusted client whose client-credentials token this is, if any."""
        return self._by_subject.get((verified.issuer.name, verified.claims.get("sub")))

    def authenticate(self, credential: str) -> TrustedClientSettings:
        """The client ``credential`` proves: its own RFC 7523 JWT, or an issuer's client-credentials token."""
        named = self.assertions.client_named(credential)
        if named is not None:
            self.assertions.verify(credential, named)
            return named
        client = self.owner(self._verifier.verify(credential))
        if client is None:
            raise AccessDenied("the token is valid but is not the credential of a trusted client: only a "
                               "[[trusted_clients]] entry may name the identity to mint for")
        return client

    def permit(self, client: TrustedClientSettings, identity: str, role: str | None) -> Mapped:
        """The identity and role, once ``client``'s allow-list and the identity rules accept them."""
        check_named_identity(identity, self._identity_rules)  # first: it bounds the length the globs see
        if not (identity in client.identities or any(fnmatchcase(identity, p) for p in client.identity_patterns)):
            raise AccessDenied(f"the identity is outside the allow-list of client {client.client_id!r} "
                               "(identities, identity_patterns)")
        chosen = client.role_when_unnamed if role is None else role
        if chosen not in client.roles:
            raise AccessDenied(f"client {client.client_id!r} may not grant that role; it may grant: "
                               f"{', '.join(client.roles)}")
        return Mapped(identity=identity, role=chosen, role_sid=self._sids[chosen])

    @staticmethod
    def buckets(limiter: RateLimiter, client: TrustedClientSettings, *, tag: str | None,
                ip: str | None) -> list[Bucket]:
        """The ``client`` endpoint's buckets; the client's own ``rate_limit`` replaces ``client-client``."""
        found = limiter.buckets("client", ip=ip, tag=tag, client=client.client_id)
        own = client.rate_limit
        if own is None or not limiter.enabled:
            return found
        return [Bucket(CLIENT_POLICY, "-", f"client:{client.client_id}", own.limit, own.window),
                *(b for b in found if b.policy != CLIENT_POLICY)]
