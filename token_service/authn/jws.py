"""A compact JWS taken apart and checked: the steps every JWT verification here shares (RFC 7515, 7519).

Bearer tokens (``bearer.py``), gateway assertions (``gateway.py``, ``alb.py``) and RFC 7523 client
assertions (``rfc7523.py``) all go through these: strict parsing before anything is trusted, the
header's ``alg`` on an allow-list and no ``crit``, the key from the issuer's own cache (never a key
the token names), the signature and then the claims checked in one PyJWT ``decode`` (RSA keys under
2048 bits refused), and PyJWT's refusals told as the caller's fix, never echoing the token.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import jwt
import orjson
from cryptography.hazmat.primitives.asymmetric import ed448, ed25519
from jwt.algorithms import OKPAlgorithm

from token_service.authn.jwks import KeyCache, KeyNotFound, KeysUnavailable
from token_service.b64url import b64url_decode
from token_service.errors import InvalidToken, Unavailable
from token_service.settings import ASYMMETRIC_ALGORITHMS

MAX_TOKEN_BYTES = 16 * 1024
ACCEPTED_TYPES = frozenset({"jwt", "at+jwt", "application/at+jwt"})


class FullySpecifiedEdDSA(OKPAlgorithm):
    """RFC 9864's ``Ed25519`` / ``Ed448``: PyJWT's EdDSA, held to the one curve the name fixes."""

    def __init__(self, public_type: type) -> None:
        super().__init__()
        self.public_type = public_type

    def prepare_key(self, key: Any) -> Any:
        prepared = super().prepare_key(key)
        if not isinstance(prepared, self.public_type):
            raise jwt.InvalidKeyError(f"the key is not an {self.public_type.__name__}")
        return prepared


FULLY_SPECIFIED_EDDSA = {"Ed25519": ed25519.Ed25519PublicKey, "Ed448": ed448.Ed448PublicKey}


@dataclass(frozen=True)
class Compact:
    """A compact JWS taken apart: decoded header and (still unverified) payload."""

    header: dict[str, Any]
    payload: dict[str, Any]


def split_jws(token: str) -> Compact:
    """Take a compact JWS apart, or raise ``InvalidToken``; nothing here is trusted yet.

    Stricter than PyJWT: canonical base64url (``=`` padding allowed, as an AWS ALB sends it), and
    orjson, which refuses ``NaN``, ``Infinity`` and lone surrogates.
    """
    if len(token.encode("utf-8", "replace")) > MAX_TOKEN_BYTES:
        raise InvalidToken(f"the token is larger than {MAX_TOKEN_BYTES // 1024} KiB")
    parts = token.split(".")
    if len(parts) != 3 or not all(parts):
        raise InvalidToken("the token is not a signed JWT (expected three dot-separated parts)")
    try:
        header, payload = orjson.loads(b64url_decode(parts[0])), orjson.loads(b64url_decode(parts[1]))
        b64url_decode(parts[2])
    except (ValueError, UnicodeError, RecursionError):
        raise InvalidToken("the token is malformed (a part is not base64url, or not JSON)") from None
    if not isinstance(header, dict) or not isinstance(payload, dict):
        raise InvalidToken("the token is malformed (header or payload is not a JSON object)")
    return Compact(header, payload)


def check_header(
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


_CLAIM_ERRORS: list[tuple[type[jwt.PyJWTError], str]] = [
    (jwt.ExpiredSignatureError, "the token has expired"),
    (jwt.ImmatureSignatureError, "the token is not valid yet (nbf or iat is in the future)"),
    (jwt.InvalidIssuerError, "the token's issuer is not trusted"),
    (jwt.InvalidAudienceError, "the token's audience is not accepted by this service"),
]


def claim_refusal(exc: jwt.PyJWTError) -> InvalidToken:
    """PyJWT's reason, told as the caller's fix (never echoing the token)."""
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return InvalidToken(f"the token lacks the required {exc.claim!r} claim")
    for kind, message in _CLAIM_ERRORS:
        if isinstance(exc, kind):
            return InvalidToken(message)
    return InvalidToken("the token's registered claims are malformed (exp, nbf, iat, sub or jti)")


def whole_dates(claims: Mapping[str, Any]) -> None:
    """Stricter than PyJWT: NumericDates (RFC 7519 2) are numbers, never strings of digits or booleans."""
    for name in ("exp", "nbf", "iat"):
        value = claims.get(name)
        if name in claims and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise InvalidToken(f"the token's {name!r} claim is not a number")


def signing_key(cache: KeyCache, issuer_name: str, kid: str | None, alg: str) -> Any:
    """The issuer's key for ``kid`` and ``alg``: ``InvalidToken`` when it has none, 503 when unreachable."""
    try:
        return cache.get_key(kid, alg)
    except KeyNotFound as exc:
        raise InvalidToken(str(exc)) from None
    except KeysUnavailable:
        raise Unavailable(
            f"the signing keys of issuer {issuer_name!r} cannot be fetched; retry later",
            retry_after=int(min(30, cache.cooldown)),
        ) from None


def _options(require: list[str], audience: object, issuer: object) -> dict[str, Any]:
    return {"verify_exp": True, "verify_nbf": True, "verify_iat": True, "verify_iss": issuer is not None,
            "verify_aud": audience is not None, "verify_sub": True, "verify_jti": True, "require": require}


class TokenChecker:
    """A JWT's signature, then its claims, in one PyJWT ``decode``: the token is parsed once.

    The claims PyJWT checks: ``exp``, ``nbf``, ``iat``, ``sub``, ``jti``, the required claims, and
    ``iss`` and ``aud`` when given; then whole-number dates. RSA keys under 2048 bits are refused.
    RFC 9864's ``Ed25519``/``Ed448`` go through a PyJWS that knows those names, then the same claims.
    """

    def __init__(self) -> None:
        self._jwt = jwt.PyJWT({"enforce_minimum_key_length": True})
        # PyJWT knows EdDSA but not RFC 9864's names for it, which also fix the curve.
        self._eddsa = jwt.PyJWS(algorithms=[], options={"verify_signature": True, "enforce_minimum_key_length": True})
        for name, public_type in FULLY_SPECIFIED_EDDSA.items():
            self._eddsa.register_algorithm(name, FullySpecifiedEdDSA(public_type))

    def claims(self, token: str, key: Any, alg: str, *, require: list[str], leeway: int,
               audience: str | list[str] | None = None, issuer: str | None = None) -> dict[str, Any]:
        """The claims once the signature (for the one allowed ``alg``) and the claims hold."""
        if alg not in ASYMMETRIC_ALGORITHMS:  # never a shared-secret HMAC, whatever a caller allowed
            raise InvalidToken("the token's signing algorithm is not allowed for its issuer")
        options = _options(require, audience, issuer)
        try:
            if alg in FULLY_SPECIFIED_EDDSA:
                self._eddsa_signature(token, key, alg)
                claims: dict[str, Any] = self._jwt.decode(token, options={**options, "verify_signature": False},
                                                          audience=audience, issuer=issuer, leeway=leeway)
            else:
                claims = self._jwt.decode(token, key=key, algorithms=[alg], options=options, audience=audience,
                                          issuer=issuer, leeway=leeway)
        except (jwt.InvalidSignatureError, jwt.InvalidAlgorithmError, jwt.InvalidKeyError):
            raise InvalidToken("the token's signature is invalid") from None
        except jwt.PyJWTError as exc:
            raise claim_refusal(exc) from None
        whole_dates(claims)
        return claims

    def _eddsa_signature(self, token: str, key: Any, alg: str) -> None:
        try:
            self._eddsa.decode_complete(token, key=key, algorithms=[alg])
        except jwt.PyJWTError:
            raise InvalidToken("the token's signature is invalid") from None
