"""Bearer proof: an ID token or JWT access token (RFC 9068) from a trusted issuer (design 2.1).

Fails closed, in this order: size and shape (strict, canonical base64url, as PyJWT demands);
header (``alg`` on the issuer's asymmetric allow-list, no ``crit`` we do not understand, a token
``typ`` we accept); the issuer, looked up by exact ``iss`` only to choose which keys to verify
with; the signature, checked by PyJWT's algorithm for ``alg`` with a key from that issuer's own
JWKS (``jku``, ``x5u`` and ``jwk`` headers are never followed); then the required claims and
``iss``, ``aud``, ``exp``, ``nbf`` and ``iat`` with the issuer's leeway, by PyJWT's rules. No claim
is used before the signature holds.

Why not ``jwt.decode``: it decodes and validates the segments again after the checks above, and
that repeat cost as much CPU as the RSA verification itself on the token path. The claim rules
are tested against ``jwt.decode`` as the oracle (``tests/test_bearer_claims.py``). Header and
payload are parsed by orjson, four times faster than ``json`` here and stricter: ``NaN``,
``Infinity`` and lone surrogates make a token malformed, and an integer past 64 bits is read as a
float (which no claim rule accepts where a whole number or a string is due).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import jwt
import orjson
from jwt.algorithms import get_default_algorithms

from token_service.authn.jwks import (
    FileKeySource,
    HttpKeySource,
    JwksCache,
    KeyNotFound,
    KeysUnavailable,
)
from token_service.b64url import b64url_decode
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


_ALGORITHMS = get_default_algorithms()


@dataclass(frozen=True)
class _Compact:
    """A compact JWS taken apart: decoded header and (still unverified) payload, signed bytes."""

    header: dict[str, Any]
    payload: dict[str, Any]
    signing_input: bytes
    signature: bytes


def _split(token: str) -> _Compact:
    """Take a compact JWS apart, or raise ``InvalidToken``; nothing here is trusted yet."""
    if len(token.encode("utf-8", "replace")) > MAX_TOKEN_BYTES:
        raise InvalidToken(f"the token is larger than {MAX_TOKEN_BYTES // 1024} KiB")
    parts = token.split(".")
    if len(parts) != 3 or not all(parts):
        raise InvalidToken("the token is not a signed JWT (expected three dot-separated parts)")
    try:
        header, payload = orjson.loads(b64url_decode(parts[0])), orjson.loads(b64url_decode(parts[1]))
        signature = b64url_decode(parts[2])
    except (ValueError, UnicodeError, RecursionError):
        raise InvalidToken("the token is malformed (a part is not base64url, or not JSON)") from None
    if not isinstance(header, dict) or not isinstance(payload, dict):
        raise InvalidToken("the token is malformed (header or payload is not a JSON object)")
    signing_input = token[: len(parts[0]) + 1 + len(parts[1])].encode("ascii")
    return _Compact(header, payload, signing_input, signature)


def _numeric_date(claims: Mapping[str, Any], name: str) -> int | None:
    """A NumericDate claim (RFC 7519 2) in whole seconds, as PyJWT reads it; absent is None.

    Stricter than PyJWT in one way: a JSON string of digits is refused, not converted.
    """
    if name not in claims:
        return None
    value = claims[name]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidToken(f"the token's {name!r} claim is not a number")
    try:
        return int(value)
    except (OverflowError, ValueError):  # Infinity and NaN, which Python's json accepts
        raise InvalidToken(f"the token's {name!r} claim is not a number") from None


def validate_claims(claims: Mapping[str, Any], *, issuer: str, audiences: Iterable[str], leeway: float,
                    required: Iterable[str], now: float) -> None:
    """PyJWT's claim rules, for claims whose signature already holds; raises ``InvalidToken``."""
    for name in required:
        if claims.get(name) is None:
            raise InvalidToken(f"the token lacks the required {name!r} claim")
    exp, nbf, iat = (_numeric_date(claims, name) for name in ("exp", "nbf", "iat"))
    if exp is not None and exp <= now - leeway:
        raise InvalidToken("the token has expired")
    if (iat is not None and iat > now + leeway) or (nbf is not None and nbf > now + leeway):
        raise InvalidToken("the token is not valid yet (nbf or iat is in the future)")
    if claims.get("iss") != issuer:
        raise InvalidToken("the token's issuer is not trusted")
    aud = claims.get("aud")
    accepted = [aud] if isinstance(aud, str) else aud
    if (
        not isinstance(accepted, list)
        or not all(isinstance(a, str) for a in accepted)
        or not any(a in accepted for a in audiences)
    ):
        raise InvalidToken("the token's audience is not accepted by this service")
    for name in ("sub", "jti"):
        if name in claims and not isinstance(claims[name], str):
            raise InvalidToken(f"the token's {name!r} claim is not a string")


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


def _signature_holds(alg: str, key: Any, parts: _Compact) -> bool:
    """PyJWT's own verifier for ``alg`` (ES* signatures are raw r||s, converted by it)."""
    try:
        return bool(_ALGORITHMS[alg].verify(parts.signing_input, key, parts.signature))
    except (ValueError, TypeError, jwt.PyJWTError):
        return False


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
        parts = _split(token)
        header, unverified = parts.header, parts.payload
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
        if not _signature_holds(alg, key, parts):
            raise InvalidToken("the token's signature is invalid")
        claims = unverified  # from here on, verified
        validate_claims(claims, issuer=issuer.issuer, audiences=[audience] if audience else issuer.audiences,
                        leeway=issuer.leeway, required=required, now=time.time())
        # validate_claims saw to it that a required 'sub' is present and a string; it must not be empty.
        if "sub" in required and not claims["sub"]:
            raise InvalidToken("the token's 'sub' claim is not a non-empty string")
        return VerifiedToken(issuer=issuer, claims=claims)
