"""AWS Application Load Balancer user claims: the ``x-amzn-oidc-data`` assertion (design 2.1, "Gateway assertions").

An ALB with an ``authenticate-oidc`` (or Cognito) rule signs the user in and forwards their claims
(what the IdP's userinfo endpoint returned) as a JWT signed with ES256. As AWS documents it, the JWT
is not an ID token and differs from one in three ways, all handled here:

- its protection lives in the JWS header, not the payload: ``signer`` (the load balancer's ARN, which
  must be one of ours), ``iss`` (the IdP), ``client`` (the OIDC client the ALB signs in with) and
  ``exp``;
- the signing key is not in a JWKS: it is fetched by ``kid`` from the region's public-key endpoint
  (``https://public-keys.auth.elb.<region>.amazonaws.com/<kid>``) as a PEM document. ``AlbKeyCache``
  keeps those keys like ``JwksCache`` keeps a JWKS: ``ttl``, a background refetch past it, stale
  serving up to ``max_stale`` while AWS is unreachable, unknown kids remembered, and a small budget
  of fetches for kids not seen before, so made-up kids cannot flood the endpoint;
- its base64url segments carry ``=`` padding, and the signature covers them as sent: the token is
  parsed with padding allowed and verified exactly as received.
"""

from __future__ import annotations

import hmac
import logging
import re
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from token_service.authn.introspection import TokenBucket
from token_service.authn.jwks import MAX_BAD_KIDS, KeyNotFound, KeysUnavailable, key_report
from token_service.authn.jws import (
    TokenChecker,
    check_header,
    signing_key,
    split_jws,
)
from token_service.errors import InvalidToken
from token_service.metrics import JWKS_FETCHES
from token_service.settings import IssuerSettings

log = logging.getLogger(__name__)

ALB_ALGORITHM = "ES256"
MAX_PEM_BYTES = 4096
NEW_KIDS_PER_COOLDOWN = 4  # fetches of kids not seen before, per refetch cooldown
_KID = re.compile(r"[A-Za-z0-9_-]{1,128}")  # ALB kids are UUIDs; nothing that could change the URL


class AlbKeyCache:
    """An ALB region's signing keys, fetched one by one by ``kid`` as PEM, cached like a JWKS."""

    def __init__(self, url_template: str, *, name: str, ttl: float, cooldown: float, max_stale: float,
                 timeout: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.url_template = url_template
        self.name = name
        self.ttl = ttl
        self.cooldown = cooldown
        self.max_stale = max_stale
        self.timeout = timeout
        self._clock = clock
        self._keys: dict[str, tuple[float, ec.EllipticCurvePublicKey]] = {}  # kid -> (fetched at, key)
        self._bad_kids: set[str] = set()
        self._new_kids = TokenBucket(NEW_KIDS_PER_COOLDOWN / cooldown, NEW_KIDS_PER_COOLDOWN, clock)
        self._fetch_lock = threading.Lock()  # one fetch at a time, across threads
        self._http = requests.Session()
        self._fetches = 0
        self._failures = 0
        self._last_error: str | None = None

    # -- lookup -----------------------------------------------------------------------------
    def get_key(self, kid: str | None, alg: str) -> Any:
        """The P-256 key AWS publishes as ``kid``; fetched only as the rules above allow."""
        if alg != ALB_ALGORITHM:
            raise KeyNotFound("the token's signing key does not fit its algorithm")
        if kid is None or not _KID.fullmatch(kid):
            raise KeyNotFound("the assertion names no usable key id")
        cached = self._fresh_enough(kid)
        if cached is not None:
            return cached
        with self._fetch_lock:
            cached = self._fresh_enough(kid)  # another thread may have fetched it meanwhile
            if cached is not None:
                return cached
            if kid in self._bad_kids:
                raise KeyNotFound("the token's signing key is not published by its issuer")
            if kid not in self._keys and not self._new_kids.take():
                raise KeysUnavailable("too many unknown key ids at once")
            return self._fetch_locked(kid)

    def _fresh_enough(self, kid: str) -> Any:
        """A cached key younger than ``max_stale`` (refetched in the background past ``ttl``), or None."""
        found = self._keys.get(kid)
        if found is None:
            return None
        age = self._clock() - found[0]
        if age > self.max_stale:
            return None
        if age > self.ttl:
            self._refresh_in_background(kid)
        return found[1]

    # -- fetching ---------------------------------------------------------------------------
    def _fetch_locked(self, kid: str) -> ec.EllipticCurvePublicKey:
        """GET the PEM for ``kid``; caller holds ``_fetch_lock``. A failure keeps a stale key."""
        url = self.url_template.replace("{kid}", kid)
        self._fetches += 1
        try:
            with self._http.get(url, timeout=self.timeout, stream=True, allow_redirects=False) as resp:
                status = resp.status_code
                body = resp.raw.read(MAX_PEM_BYTES + 1, decode_content=True) if status == 200 else b""
        except requests.RequestException as exc:
            return self._failed(kid, f"GET {url} failed: {type(exc).__name__}")
        if status in (403, 404):  # not published (S3-style endpoints answer 403 for a missing object)
            self._forget(kid, f"GET {url} answered HTTP {status}")
            raise KeyNotFound("the token's signing key is not published by its issuer")
        if status != 200:
            return self._failed(kid, f"GET {url} answered HTTP {status}")
        key = _p256_key(body)
        if key is None:
            self._forget(kid, f"GET {url} did not answer a P-256 public key (PEM)")
            raise KeyNotFound("the token's signing key is not a P-256 public key")
        self._keys[kid] = (self._clock(), key)
        self._last_error = None
        JWKS_FETCHES.labels(self.name, "ok").inc()
        return key

    def _failed(self, kid: str, error: str) -> ec.EllipticCurvePublicKey:
        """AWS did not answer usefully: a key younger than ``max_stale`` keeps serving, else 503."""
        self._failures += 1
        self._last_error = error
        JWKS_FETCHES.labels(self.name, "error").inc()
        log.warning("alb key fetch failed", extra={"event": "jwks_fetch_failed", "issuer": self.name,
                                                   "kid": kid, "error": error})
        found = self._keys.get(kid)
        if found is not None and self._clock() - found[0] <= self.max_stale:
            return found[1]
        raise KeysUnavailable(error)

    def _forget(self, kid: str, error: str) -> None:
        """A kid AWS does not publish (or not as a P-256 key): refused until a restart, within a bound."""
        JWKS_FETCHES.labels(self.name, "error").inc()
        log.warning("alb key refused", extra={"event": "jwks_key_refused", "issuer": self.name, "kid": kid,
                                              "error": error})
        self._keys.pop(kid, None)
        if len(self._bad_kids) < MAX_BAD_KIDS:
            self._bad_kids.add(kid)

    def _refresh_in_background(self, kid: str) -> None:
        if not self._fetch_lock.acquire(blocking=False):
            return  # a fetch is already running

        def run() -> None:
            try:
                self._fetch_locked(kid)
            except (KeyNotFound, KeysUnavailable):
                pass  # logged; the key was dropped or keeps serving while it may
            finally:
                self._fetch_lock.release()

        threading.Thread(target=run, name="alb-key-refresh", daemon=True).start()

    # -- readiness --------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """``on_demand`` until a first key is fetched (kids are only known from assertions); then the
        youngest key's age gives ``fresh``, ``stale`` or ``expired``, as for a JWKS."""
        now = self._clock()
        age = min((now - fetched for fetched, _ in self._keys.values()), default=None)
        refused = [{"kid": kid, "reason": "not published as a P-256 key"} for kid in sorted(self._bad_kids)[:20]]
        return key_report(age, self, source=self.url_template, keys=len(self._keys), refused=refused,
                          fetches=self._fetches, failures=self._failures, last_error=self._last_error,
                          before_first="on_demand")

    def ensure_loaded(self) -> None:
        """Nothing to load ahead: ALB keys are fetched by the kid an assertion names."""


def _p256_key(pem: bytes) -> ec.EllipticCurvePublicKey | None:
    if len(pem) > MAX_PEM_BYTES:
        return None
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError):
        return None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        return None
    return key


def _one_of(value: Any, accepted: list[str]) -> bool:
    """``value`` is a string equal to one of ``accepted`` (compared in constant time, all of them)."""
    if not isinstance(value, str):
        return False
    found = False
    for candidate in accepted:
        found |= hmac.compare_digest(value.encode(), candidate.encode())
    return found


class AlbAssertions:
    """Verifies one ALB issuer's ``x-amzn-oidc-data``: header first, then key, signature, claims."""

    def __init__(self, issuer: IssuerSettings, keys: AlbKeyCache,
                 clock: Callable[[], float] = time.time) -> None:
        assert issuer.gateway is not None and issuer.gateway.kind == "aws_alb"
        self.issuer = issuer
        self.keys = keys
        self._signers = list(issuer.gateway.load_balancer_arns)
        self._clock = clock
        self._checker = TokenChecker()

    def verify(self, token: str) -> dict[str, Any]:
        """The user's claims, once the ALB's signature and its header's rules hold."""
        parts = split_jws(token)  # padding allowed: AWS pads each segment
        header = parts.header
        alg = check_header(header, self.issuer.algorithms)
        # AWS's first step: only an assertion naming one of our load balancers makes us fetch a key.
        if not _one_of(header.get("signer"), self._signers):
            raise InvalidToken("the assertion was not signed by a configured load balancer (signer)")
        key = signing_key(self.keys, self.issuer.name, header.get("kid"), alg)
        claims = self._checker.claims(token, key, alg, require=["sub"], leeway=self.issuer.leeway)
        self._check_protected_header(header)
        if "iss" in claims and claims["iss"] != header["iss"]:
            raise InvalidToken("the assertion's payload names another issuer than its header")
        if not isinstance(claims["sub"], str) or not claims["sub"]:
            raise InvalidToken("the assertion's 'sub' claim is not a non-empty string")
        return claims

    def _check_protected_header(self, header: Mapping[str, Any]) -> None:
        """AWS's own rules, on the header the signature covers: issuer, client, expiry."""
        if header.get("iss") not in self.issuer.issuer_patterns:
            raise InvalidToken("the assertion's issuer is not this gateway's identity provider")
        if not _one_of(header.get("client"), self.issuer.client_ids):
            raise InvalidToken("the assertion was made for another OIDC client")
        exp = header.get("exp")
        if isinstance(exp, bool) or not isinstance(exp, int | float):
            raise InvalidToken("the assertion's header lacks a numeric 'exp'")
        if exp <= self._clock() - self.issuer.leeway:
            raise InvalidToken("the token has expired")
