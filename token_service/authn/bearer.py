"""Bearer proof: an ID token, a JWT access token (RFC 9068), or an opaque access token (design 2.1).

A JWT fails closed, in this order: size and shape (strict, canonical base64url); header (``alg``
on the issuer's asymmetric allow-list, no ``crit`` we do not understand, a token ``typ`` we
accept); the issuer, matched by ``iss`` (exact, alias, or tenant template, see ``issuers.py``)
only to choose which keys to verify with; the signature, with a key from that issuer's own JWKS
(``jku``, ``x5u`` and ``jwk`` headers are never followed; RSA keys under 2048 bits refused), then
the claims with the issuer's leeway (``iss``, ``exp``, ``nbf``, ``iat``, required claims, and
``aud`` in ``audiences``), both in one PyJWT ``decode``; and after it the rules
PyJWT has no option for: whole-number dates, the tenant's ``tid``, access tokens accepted through
a client-id claim, and ``azp`` when ``aud`` has several values (OIDC Core 3.1.3.7). No claim is
used before the signature holds.

A bearer that is not a JWT goes to ``introspection.py``, only to the issuer it is routed to.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from token_service.authn.alb import AlbKeyCache
from token_service.authn.introspection import OpaqueTokens
from token_service.authn.issuers import IssuerDirectory, check_tenant
from token_service.authn.jwks import FileKeySource, HttpKeySource, JwksCache, KeyCache
from token_service.authn.jws import (
    ACCEPTED_TYPES,
    TokenChecker,
    check_header,
    signing_key,
    split_jws,
)
from token_service.errors import InvalidToken
from token_service.mapping import condition_holds
from token_service.settings import IssuerSettings

REQUIRED_CLAIMS = ["iss", "sub", "aud", "exp", "iat"]
# OIDC Back-Channel Logout 1.0, 2.4: typ logout+jwt; iss, aud, iat, exp, jti and events required.
LOGOUT_TYPES = frozenset({"logout+jwt", "application/logout+jwt"})
LOGOUT_REQUIRED = ["iss", "aud", "iat", "exp", "jti"]


@dataclass(frozen=True)
class VerifiedToken:
    issuer: IssuerSettings
    claims: Mapping[str, Any]


def _audiences(claims: Mapping[str, Any]) -> list[str] | None:
    """``aud`` as a list, or None when absent; a malformed one refuses the token."""
    if "aud" not in claims:
        return None
    aud = claims["aud"]
    accepted = [aud] if isinstance(aud, str) else aud
    if not isinstance(accepted, list) or not all(isinstance(a, str) for a in accepted):
        raise InvalidToken("the token's audience is not accepted by this service")
    return accepted


def check_client(claims: Mapping[str, Any], issuer: IssuerSettings) -> None:
    """Audience for issuers that take access tokens through a client-id claim (Cognito, Keycloak).

    One of our ``audiences`` is enough, as in PyJWT; otherwise ``client_id_claim`` must name one of
    ``client_ids``, ``token_use`` must hold, and any ``aud`` must be in ``tolerated_audiences``.
    """
    aud = _audiences(claims)
    if aud and any(a in issuer.audiences for a in aud):
        return
    client = claims.get(issuer.client_id_claim or "")
    if not isinstance(client, str) or client not in issuer.client_ids:
        raise InvalidToken("the token's audience is not accepted by this service")
    if issuer.token_use is not None and not condition_holds(claims, issuer.token_use):
        raise InvalidToken(f"the token's {issuer.token_use.claim!r} claim says it is not an access token "
                           "this service accepts")
    if aud and any(a not in issuer.tolerated_audiences for a in aud):
        raise InvalidToken("the token's audience is not accepted by this service")


def check_authorized_party(claims: Mapping[str, Any], issuer: IssuerSettings) -> None:
    """OIDC Core 3.1.3.7: with several audiences, a present ``azp`` must be one of our clients."""
    aud = _audiences(claims)
    if aud is None or len(aud) < 2 or "azp" not in claims:
        return
    azp = claims["azp"]
    if not isinstance(azp, str) or (azp not in issuer.client_ids and azp not in issuer.audiences):
        raise InvalidToken("the token's authorized party (azp) is not a client of this service")


def cache_for(issuer: IssuerSettings) -> KeyCache:
    """The issuer's key cache: a JWKS, or an AWS ALB's keys fetched one by one (PEM by kid)."""
    gateway = issuer.gateway
    if gateway is not None and gateway.kind == "aws_alb":
        return AlbKeyCache(gateway.alb_key_url, name=issuer.name, ttl=issuer.jwks_ttl,
                           cooldown=issuer.jwks_refetch_cooldown, max_stale=issuer.jwks_max_stale,
                           timeout=issuer.http_timeout)
    source = (
        FileKeySource(issuer.jwks_file)
        if issuer.jwks_file
        else HttpKeySource(issuer.issuer, issuer.jwks_uri, issuer.http_timeout, issuer.discovery_url)
    )
    return JwksCache(
        source,
        name=issuer.name,
        ttl=issuer.jwks_ttl,
        cooldown=issuer.jwks_refetch_cooldown,
        max_stale=issuer.jwks_max_stale,
    )


class BearerVerifier:
    """Verifies bearer tokens against every configured issuer."""

    def __init__(self, issuers: Iterable[IssuerSettings]) -> None:
        issuers = list(issuers)
        self.directory = IssuerDirectory(issuers)
        self.caches: dict[str, KeyCache] = {i.name: cache_for(i) for i in issuers}
        self.opaque = OpaqueTokens(issuers)
        self._checker = TokenChecker()

    def verify(self, token: str) -> VerifiedToken:
        """A bearer proof: an ID token or access token for one of our audiences or clients."""
        if token.count(".") != 2:
            checked = self.opaque.check(token)
            if checked is not None:
                issuer, claims = checked
                return VerifiedToken(issuer=issuer, claims=claims)
        return self._verify(token)

    def verify_gateway_assertion(self, token: str, issuer_name: str) -> VerifiedToken:
        """A JWT a gateway in front forwarded for ``issuer_name`` (Google IAP, Cloudflare Access, a proxy)."""
        return self._verify(token, only_issuer=issuer_name, from_gateway=True)

    def verify_logout_token(self, token: str, issuer_name: str, client_id: str) -> VerifiedToken:
        """An OIDC Back-Channel Logout token (typ ``logout+jwt``) from ``issuer_name`` for us."""
        return self._verify(token, types=LOGOUT_TYPES, audience=client_id, required=LOGOUT_REQUIRED,
                            only_issuer=issuer_name)

    def _verify(
        self,
        token: str,
        *,
        types: frozenset[str] = ACCEPTED_TYPES,
        audience: str | None = None,
        required: list[str] = REQUIRED_CLAIMS,
        only_issuer: str | None = None,
        from_gateway: bool = False,
    ) -> VerifiedToken:
        parts = split_jws(token)
        match = self.directory.match(parts.payload.get("iss"))
        if match is None or (only_issuer is not None and match.issuer.name != only_issuer):
            raise InvalidToken("the token's issuer is not trusted by this service")
        issuer = match.issuer
        if issuer.gateway is not None and not from_gateway:
            # A gateway's assertion counts only in its header, from a trusted proxy (authn/gateway.py).
            raise InvalidToken("the token's issuer is a gateway, whose assertions are accepted only as the "
                               "gateway forwards them")
        alg = check_header(parts.header, issuer.algorithms, types)
        key = signing_key(self.caches[issuer.name], issuer.name, parts.header.get("kid"), alg)
        by_client = audience is None and issuer.client_id_claim is not None
        claims = self._checker.claims(
            token,
            key,
            alg,
            require=[c for c in required if not (by_client and c == "aud")],
            audience=None if by_client else audience or issuer.audiences,
            issuer=match.iss,
            leeway=issuer.leeway,
        )
        check_tenant(claims, match)
        if by_client:
            check_client(claims, issuer)
        if audience is None:
            check_authorized_party(claims, issuer)
        if "sub" in required and not claims["sub"]:
            raise InvalidToken("the token's 'sub' claim is not a non-empty string")
        return VerifiedToken(issuer=issuer, claims=claims)
