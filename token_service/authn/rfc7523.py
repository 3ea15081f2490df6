"""RFC 7523 JWTs a trusted backend signs with its own registered key (sections 2.2 and 3).

A ``[[trusted_clients]]`` entry with its own ``jwks_uri`` or ``jwks_file`` proves itself with a
short JWT instead of an IdP's client-credentials token. The rules of RFC 7523 section 3, as this
service applies them:

- ``iss`` and ``sub`` are the client's ``client_id`` (3.1, 3.2: a client authenticating as itself);
- ``aud`` names this service: its public URL, or one of its token endpoints (3.3);
- ``exp`` is required and at most ``max_assertion_lifetime`` ahead (3.4: an unreasonably far ``exp``
  may be refused); ``nbf`` and ``iat`` are checked when present, with the client's ``leeway``;
- ``jti`` is required and accepted once while the assertion lives (3.7): the store remembers a
  digest of it, never the JWT;
- the signature is checked with the client's own keys (a ``JwksCache``, with its refetch cooldown
  and bad-``kid`` memory), on the client's algorithm allow-list, before any claim is used.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable
from typing import Any

from token_service.authn.jwks import FileKeySource, HttpKeySource, JwksCache
from token_service.authn.jws import (
    TokenChecker,
    check_header,
    signing_key,
    split_jws,
)
from token_service.errors import InvalidToken
from token_service.settings import TrustedClientSettings
from token_service.store.base import Store

TOKEN_ENDPOINTS = ("/v1/token", "/oauth2/token")


def _keys(client: TrustedClientSettings) -> JwksCache:
    source = (FileKeySource(client.jwks_file) if client.jwks_file
              else HttpKeySource(client.client_id, client.jwks_uri, client.http_timeout))
    return JwksCache(source, name=f"client:{client.client_id}", ttl=600, cooldown=30, max_stale=86400)


class ClientAssertions:
    """The RFC 7523 JWTs of every trusted client that registered keys of its own."""

    def __init__(self, clients: Iterable[TrustedClientSettings], public_url: str, store: Store,
                 clock: Callable[[], float] = time.time) -> None:
        self.clients = {c.client_id: c for c in clients if c.issuer is None}
        self.caches = {client_id: _keys(c) for client_id, c in self.clients.items()}
        base = public_url.rstrip("/")
        self.audiences = [base, *(base + path for path in TOKEN_ENDPOINTS)]
        self.store = store
        self._clock = clock
        self._checker = TokenChecker()

    def client_named(self, token: str) -> TrustedClientSettings | None:
        """The client an assertion claims to come from (its ``iss``), only to choose the keys."""
        if not self.clients or token.count(".") != 2:
            return None
        issuer = split_jws(token).payload.get("iss")
        return self.clients.get(issuer) if isinstance(issuer, str) else None

    def verify(self, token: str, client: TrustedClientSettings) -> dict[str, Any]:
        """The assertion's claims once signature, the RFC 7523 rules and single use all hold."""
        header = split_jws(token).header
        alg = check_header(header, client.algorithms)
        key = signing_key(self.caches[client.client_id], f"client:{client.client_id}", header.get("kid"), alg)
        claims = self._checker.claims(token, key, alg, require=["iss", "sub", "aud", "exp", "jti"],
                                      leeway=client.leeway, audience=self.audiences, issuer=client.client_id)
        if claims["sub"] != client.client_id:
            raise InvalidToken("the assertion's 'sub' must be the client's own id (RFC 7523 3)")
        now = self._clock()
        if claims["exp"] > now + client.max_assertion_lifetime + client.leeway:
            raise InvalidToken(f"the assertion lives too long: its 'exp' may be at most "
                               f"{client.max_assertion_lifetime} s ahead")
        jti = claims["jti"]
        if not isinstance(jti, str) or not jti:
            raise InvalidToken("the assertion's 'jti' is not a non-empty string")
        digest = hashlib.sha256(f"{client.client_id}\x00{jti}".encode()).hexdigest()[:40]
        if not self.store.add_once(f"rfc7523:{digest}", max(1, int(claims["exp"] - now) + client.leeway)):
            raise InvalidToken("the assertion was already used (its 'jti' is spent): sign a new one")
        return claims
