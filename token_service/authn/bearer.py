"""Bearer proof: an ID token or JWT access token (RFC 9068) from a trusted issuer (design 2.1).

Fails closed, in this order: size and shape; header (``alg`` on the issuer's asymmetric
allow-list, no ``crit`` we do not understand, a token ``typ`` we accept); the issuer, looked up by
exact ``iss`` only to choose which keys to verify with; the signature, with a key from that
issuer's own JWKS (``jku``, ``x5u`` and ``jwk`` headers are never followed); then ``iss``, ``aud``,
``exp``, ``nbf`` and ``iat`` with the issuer's leeway. No claim is used before the signature holds.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import jwt

from token_service.authn.jwks import (
    FileKeySource,
    HttpKeySource,
    JwksCache,
    KeyNotFound,
    KeysUnavailable,
)
from token_service.errors import InvalidToken, Unavailable
from token_service.settings import IssuerSettings

MAX_TOKEN_BYTES = 16 * 1024
ACCEPTED_TYPES = frozenset({"jwt", "at+jwt", "application/at+jwt"})
REQUIRED_CLAIMS = ["iss", "sub", "aud", "exp", "iat"]
# OIDC Back-Channel Logout 1.0, 2.4: typ logout+jwt; iss, aud, iat, exp, jti and events required.
LOGOUT_TYPES = frozenset({"logout+jwt", "application/logout+jwt"})
LOGOUT_REQUIRED = ["iss", "aud", "iat", "exp", "jti"]


@dataclass(frozen=True)
class VerifiedToken:
    issuer: IssuerSettings
    claims: Mapping[str, Any]


def _b64_json(segment: str) -> Any:
    padded = segment + "=" * (-len(segment) % 4)
    return json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))


def _split(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Decode the header and (unverified) payload of a compact JWS, or raise ``InvalidToken``."""
    if len(token.encode("utf-8", "replace")) > MAX_TOKEN_BYTES:
        raise InvalidToken(f"the token is larger than {MAX_TOKEN_BYTES // 1024} KiB")
    parts = token.split(".")
    if len(parts) != 3 or not all(parts):
        raise InvalidToken("the token is not a signed JWT (expected three dot-separated parts)")
    try:
        header, payload = _b64_json(parts[0]), _b64_json(parts[1])
    except (ValueError, UnicodeError):
        raise InvalidToken("the token is malformed (header or payload is not base64url JSON)") from None
    if not isinstance(header, dict) or not isinstance(payload, dict):
        raise InvalidToken("the token is malformed (header or payload is not a JSON object)")
    return header, payload


def _check_header(
    header: Mapping[str, Any], allowed: Iterable[str], types: frozenset[str] = ACCEPTED_TYPES
) -> str:
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in allowed:
        raise InvalidToken("the token's signing algorithm is not allowed for its issuer")
    if "crit" in header:
        # RFC 7515 4.1.11: a recipient must reject critical extensions it does not understand;
        # this service understands none.
        raise InvalidToken("the token declares critical header parameters this service rejects")
    typ = header.get("typ")
    if typ is not None and (not isinstance(typ, str) or typ.lower() not in types):
        raise InvalidToken("the token type is not accepted here")
    kid = header.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise InvalidToken("the token's key id is malformed")
    return alg


_PYJWT_REASONS: list[tuple[type[Exception], str]] = [
    (jwt.ExpiredSignatureError, "the token has expired"),
    (jwt.ImmatureSignatureError, "the token is not valid yet (nbf or iat is in the future)"),
    (jwt.InvalidAudienceError, "the token's audience is not accepted by this service"),
    (jwt.InvalidIssuerError, "the token's issuer is not trusted"),
    (jwt.MissingRequiredClaimError, "the token lacks a required claim"),
    (jwt.InvalidSignatureError, "the token's signature is invalid"),
    (jwt.InvalidAlgorithmError, "the token's signing algorithm is not allowed for its issuer"),
]


def _reason(exc: jwt.PyJWTError) -> str:
    for cls, reason in _PYJWT_REASONS:
        if isinstance(exc, cls):
            if isinstance(exc, jwt.MissingRequiredClaimError):
                return f"the token lacks the required {exc.claim!r} claim"
            return reason
    return "the token is malformed or its signature is invalid"


def cache_for(issuer: IssuerSettings) -> JwksCache:
    source = (
        FileKeySource(issuer.jwks_file)
        if issuer.jwks_file
        else HttpKeySource(issuer.issuer, issuer.jwks_uri, issuer.http_timeout)
    )
    return JwksCache(
        source,
        name=issuer.name,
        ttl=issuer.jwks_ttl,
        cooldown=issuer.jwks_refetch_cooldown,
        max_stale=issuer.jwks_max_stale,
    )


class BearerVerifier:
    """Verifies bearer JWTs against every configured issuer's keys."""

    def __init__(self, issuers: Iterable[IssuerSettings]) -> None:
        self._issuers = {i.issuer: i for i in issuers}
        self.caches: dict[str, JwksCache] = {i.name: cache_for(i) for i in self._issuers.values()}

    def verify(self, token: str) -> VerifiedToken:
        """A bearer proof: an ID token or a JWT access token for one of our audiences."""
        return self._verify(token)

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
    ) -> VerifiedToken:
        header, unverified = _split(token)
        iss = unverified.get("iss")
        issuer = self._issuers.get(iss) if isinstance(iss, str) else None
        if issuer is None or (only_issuer is not None and issuer.name != only_issuer):
            raise InvalidToken("the token's issuer is not trusted by this service")
        alg = _check_header(header, issuer.algorithms, types)
        try:
            key = self.caches[issuer.name].get_key(header.get("kid"), alg)
        except KeyNotFound as exc:
            raise InvalidToken(str(exc)) from None
        except KeysUnavailable:
            raise Unavailable(
                f"the signing keys of issuer {issuer.name!r} cannot be fetched; retry later",
                retry_after=int(min(30, self.caches[issuer.name].cooldown)),
            ) from None
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=audience or issuer.audiences,
                issuer=issuer.issuer,
                leeway=issuer.leeway,
                options={"require": required, "verify_signature": True},
            )
        except jwt.PyJWTError as exc:
            raise InvalidToken(_reason(exc)) from None
        if "sub" in required and (not isinstance(claims.get("sub"), str) or not claims["sub"]):
            raise InvalidToken("the token's 'sub' claim is not a non-empty string")
        return VerifiedToken(issuer=issuer, claims=claims)
