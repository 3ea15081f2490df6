"""Bearer proof: an ID token, a JWT access token (RFC 9068), or an opaque access token (design 2.1).

A JWT fails closed, in this order: size and shape (strict, canonical base64url); header (``alg``
on the issuer's asymmetric allow-list, no ``crit`` we do not understand, a token ``typ`` we
accept); the issuer, matched by ``iss`` (exact, alias, or tenant template, see ``issuers.py``)
only to choose which keys to verify with; the signature, checked by PyJWT's ``PyJWS`` with a key
from that issuer's own JWKS (``jku``, ``x5u`` and ``jwk`` headers are never followed; RSA keys
under 2048 bits refused); then the claims by PyJWT's ``decode`` with the issuer's leeway (``iss``,
``exp``, ``nbf``, ``iat``, required claims, and ``aud`` in ``audiences``), and after it the rules
PyJWT has no option for: whole-number dates, the tenant's ``tid``, access tokens accepted through
a client-id claim, and ``azp`` when ``aud`` has several values (OIDC Core 3.1.3.7). No claim is
used before the signature holds.

A bearer that is not a JWT goes to ``introspection.py``, only to the issuer it is routed to.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import jwt
import orjson
from cryptography.hazmat.primitives.asymmetric import ed448, ed25519
from jwt.algorithms import OKPAlgorithm

from token_service.authn.introspection import OpaqueTokens
from token_service.authn.issuers import IssuerDirectory, IssuerMatch, check_tenant
from token_service.authn.jwks import (
    FileKeySource,
    HttpKeySource,
    JwksCache,
    KeyNotFound,
    KeysUnavailable,
)
from token_service.b64url import b64url_decode
from token_service.errors import InvalidToken, Unavailable
from token_service.mapping import condition_holds
from token_service.settings import ASYMMETRIC_ALGORITHMS, IssuerSettings

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


def signature_checker() -> jwt.PyJWS:
    """PyJWS for the service's asymmetric algorithms, refusing RSA keys under 2048 bits."""
    jws = jwt.PyJWS(algorithms=[a for a in ASYMMETRIC_ALGORITHMS if a not in {"Ed25519", "Ed448"}],
                    options={"verify_signature": True, "enforce_minimum_key_length": True})
    jws.register_algorithm("Ed25519", FullySpecifiedEdDSA(ed25519.Ed25519PublicKey))
    jws.register_algorithm("Ed448", FullySpecifiedEdDSA(ed448.Ed448PublicKey))
    return jws


@dataclass(frozen=True)
class _Compact:
    """A compact JWS taken apart: decoded header and (still unverified) payload."""

    header: dict[str, Any]
    payload: dict[str, Any]


def _split(token: str) -> _Compact:
    """Take a compact JWS apart, or raise ``InvalidToken``; nothing here is trusted yet.

    Stricter than PyJWT: canonical base64url, and orjson, which refuses ``NaN``, ``Infinity``
    and lone surrogates.
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
    return _Compact(header, payload)


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


_CLAIM_ERRORS: list[tuple[type[jwt.PyJWTError], str]] = [
    (jwt.ExpiredSignatureError, "the token has expired"),
    (jwt.ImmatureSignatureError, "the token is not valid yet (nbf or iat is in the future)"),
    (jwt.InvalidIssuerError, "the token's issuer is not trusted"),
    (jwt.InvalidAudienceError, "the token's audience is not accepted by this service"),
]


def _claim_refusal(exc: jwt.PyJWTError) -> InvalidToken:
    """PyJWT's reason, told as the caller's fix (never echoing the token)."""
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return InvalidToken(f"the token lacks the required {exc.claim!r} claim")
    for kind, message in _CLAIM_ERRORS:
        if isinstance(exc, kind):
            return InvalidToken(message)
    return InvalidToken("the token's registered claims are malformed (exp, nbf, iat, sub or jti)")


def _whole_dates(claims: Mapping[str, Any]) -> None:
    """Stricter than PyJWT: NumericDates (RFC 7519 2) are numbers, never strings of digits or booleans."""
    for name in ("exp", "nbf", "iat"):
        value = claims.get(name)
        if name in claims and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise InvalidToken(f"the token's {name!r} claim is not a number")


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


def cache_for(issuer: IssuerSettings) -> JwksCache:
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
        self.caches: dict[str, JwksCache] = {i.name: cache_for(i) for i in issuers}
        self.opaque = OpaqueTokens(issuers)
        self._jws = signature_checker()

    def verify(self, token: str) -> VerifiedToken:
        """A bearer proof: an ID token or access token for one of our audiences or clients."""
        if token.count(".") != 2:
            checked = self.opaque.check(token)
            if checked is not None:
                issuer, claims = checked
                return VerifiedToken(issuer=issuer, claims=claims)
        return self._verify(token)

    def verify_logout_token(self, token: str, issuer_name: str, client_id: str) -> VerifiedToken:
        """An OIDC Back-Channel Logout token (typ ``logout+jwt``) from ``issuer_name`` for us."""
        return self._verify(token, types=LOGOUT_TYPES, audience=client_id, required=LOGOUT_REQUIRED,
                            only_issuer=issuer_name)

    def _key(self, match: IssuerMatch, header: Mapping[str, Any], alg: str) -> Any:
        cache = self.caches[match.issuer.name]
        try:
            return cache.get_key(header.get("kid"), alg)
        except KeyNotFound as exc:
            raise InvalidToken(str(exc)) from None
        except KeysUnavailable:
            raise Unavailable(
                f"the signing keys of issuer {match.issuer.name!r} cannot be fetched; retry later",
                retry_after=int(min(30, cache.cooldown)),
            ) from None

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
        match = self.directory.match(parts.payload.get("iss"))
        if match is None or (only_issuer is not None and match.issuer.name != only_issuer):
            raise InvalidToken("the token's issuer is not trusted by this service")
        issuer = match.issuer
        alg = _check_header(parts.header, issuer.algorithms, types)
        key = self._key(match, parts.header, alg)
        try:
            self._jws.decode_complete(token, key=key, algorithms=[alg])
        except jwt.PyJWTError:
            raise InvalidToken("the token's signature is invalid") from None
        by_client = audience is None and issuer.client_id_claim is not None
        try:
            claims = jwt.decode(
                token,
                options={"verify_signature": False, "verify_exp": True, "verify_nbf": True, "verify_iat": True,
                         "verify_iss": True, "verify_aud": not by_client, "verify_sub": True, "verify_jti": True,
                         "require": [c for c in required if not (by_client and c == "aud")]},
                audience=audience or issuer.audiences,
                issuer=match.iss,
                leeway=issuer.leeway,
            )
        except jwt.PyJWTError as exc:
            raise _claim_refusal(exc) from None
        _whole_dates(claims)
        check_tenant(claims, match)
        if by_client:
            check_client(claims, issuer)
        if audience is None:
            check_authorized_party(claims, issuer)
        if "sub" in required and not claims["sub"]:
            raise InvalidToken("the token's 'sub' claim is not a non-empty string")
        return VerifiedToken(issuer=issuer, claims=claims)
