"""Opaque access tokens, checked at their issuer: RFC 7662 introspection and OIDC Core 5.3 userinfo.

An opaque token names no issuer, and sending it to an IdP that did not issue it would hand that
IdP a live credential. So a token is routed to exactly one issuer: the one whose ``opaque.prefix``
it starts with (Google's ``ya29.``), else the single opaque issuer configured without a prefix.

Introspection (client authenticated by secret or ``private_key_jwt``, RFC 7523, through Authlib)
says whether the token is active and for which client; its ``client_id``/``aud`` must be ours.
Userinfo gives the user's claims, and its ``sub`` must equal introspection's (OIDC Core 5.3.2).
Results are cached briefly under the SHA-256 digest of the token (never the token), in a bounded
LRU, negative answers too; calls to the IdP for tokens not in the cache are limited by a token
bucket per issuer, so a flood of made-up tokens costs the IdP a bounded number of calls (the
same idea as the JWKS cache's unknown-``kid`` rule) and the flood gets ``503`` with Retry-After.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

import requests
from authlib.integrations.requests_client import OAuth2Session
from authlib.oauth2.rfc7523 import PrivateKeyJWT

from token_service.authn.jwks import FetchError, discover
from token_service.errors import ConfigError, InvalidToken, Unavailable
from token_service.metrics import OPAQUE_CHECKS, child
from token_service.settings import IssuerSettings, OpaqueTokenSettings, read_secret

log = logging.getLogger(__name__)

MAX_OPAQUE_BYTES = 4096
MAX_ANSWER_BYTES = 64 * 1024
# RFC 6750 2.1: b64token
_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
_REFRESH_TYPES = frozenset({"refresh_token", "urn:ietf:params:oauth:token-type:refresh_token"})


def token_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


class DigestCache:
    """A bounded LRU of answers by token digest, each with its own expiry."""

    def __init__(self, size: int, clock: Callable[[], float]) -> None:
        self.size = size
        self._clock = clock
        self._entries: OrderedDict[bytes, tuple[float, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, digest: bytes) -> tuple[bool, Any]:
        with self._lock:
            entry = self._entries.get(digest)
            if entry is None:
                return False, None
            if entry[0] <= self._clock():
                del self._entries[digest]
                return False, None
            self._entries.move_to_end(digest)
            return True, entry[1]

    def put(self, digest: bytes, value: Any, ttl: float) -> None:
        if ttl <= 0:
            return
        with self._lock:
            self._entries[digest] = (self._clock() + ttl, value)
            self._entries.move_to_end(digest)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


class TokenBucket:
    """At most ``burst`` calls at once and ``rate`` per second after that."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float]) -> None:
        self.rate, self.burst = rate, burst
        self._clock = clock
        self._tokens, self._last = float(burst), clock()
        self._lock = threading.Lock()

    def take(self) -> bool:
        with self._lock:
            now = self._clock()
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
            self._last = now
            if self._tokens < 1:
                return False
            self._tokens -= 1
            return True


class _Inactive(str):
    """A cached refusal: why the issuer does not vouch for the token."""


class IssuerUnreachable(Exception):
    """The issuer's endpoint did not answer usefully; the message is safe to log."""


class OpaqueTokenChecker:
    """One issuer's opaque-token check: cache, flood limit, introspection and/or userinfo."""

    def __init__(self, issuer: IssuerSettings, credential: str | None, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        assert issuer.opaque is not None
        self.issuer = issuer
        self.settings: OpaqueTokenSettings = issuer.opaque
        self.cache = DigestCache(self.settings.cache_size, clock)
        self.bucket = TokenBucket(self.settings.lookup_rate, self.settings.lookup_burst, clock)
        self._http = requests.Session()
        self._client = self._introspection_client(credential) if "introspection" in self.settings.checks else None
        self._endpoints: dict[str, str] = {}
        self._endpoints_lock = threading.Lock()

    def _introspection_client(self, credential: str | None) -> OAuth2Session:
        opaque = self.settings
        client = OAuth2Session(opaque.client_id, client_secret=credential,
                               token_endpoint_auth_method=opaque.client_auth)
        if opaque.client_auth == "private_key_jwt":
            client.register_client_auth_method(PrivateKeyJWT())  # aud: the introspection endpoint
        return client

    # -- the check ---------------------------------------------------------------------------
    def check(self, token: str) -> dict[str, Any]:
        """The claims the issuer vouches for, or ``InvalidToken`` / ``Unavailable``."""
        digest = token_digest(token)
        found, answer = self.cache.get(digest)
        if found:
            self._count("cached_inactive" if isinstance(answer, _Inactive) else "cached_active")
        else:
            if not self.bucket.take():
                self._count("throttled")
                raise Unavailable("too many unknown tokens are being checked at the identity provider; retry shortly",
                                  retry_after=max(1, math.ceil(1 / self.settings.lookup_rate)))
            try:
                answer, ttl = self._lookup(token)
            except IssuerUnreachable as exc:
                self._count("error")
                log.warning("opaque token check failed", extra={
                    "event": "opaque_check_failed", "issuer": self.issuer.name, "error": str(exc),
                    "token_digest": digest.hex()[:16]})
                raise Unavailable(f"the identity provider of issuer {self.issuer.name!r} cannot check the "
                                  "token right now; retry shortly", retry_after=5) from None
            self.cache.put(digest, answer, ttl)
            self._count("inactive" if isinstance(answer, _Inactive) else "active")
        if isinstance(answer, _Inactive):
            raise InvalidToken(str(answer))
        return dict(answer)

    def _count(self, result: str) -> None:
        child(OPAQUE_CHECKS, self.issuer.name, result).inc()

    def _lookup(self, token: str) -> tuple[dict[str, Any] | _Inactive, float]:
        negative = float(self.settings.cache_ttl)
        claims: dict[str, Any] = {}
        if self._client is not None:
            answer = self._introspect(token)
            refusal = self._refusal(answer)
            if refusal:
                return _Inactive(refusal), negative
            claims.update(answer)
        if "userinfo" in self.settings.checks:
            info = self._userinfo(token)
            if info is None:
                return _Inactive("the token is not active at its issuer (expired, revoked or unknown)"), negative
            if "sub" in claims and info.get("sub") != claims["sub"]:
                return _Inactive("the issuer's userinfo and introspection disagree about the token's subject"), negative
            claims = {**info, **claims}
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub:
            return _Inactive("the issuer names no subject ('sub') for the token"), negative
        ttl = float(self.settings.cache_ttl)
        exp = claims.get("exp")
        if isinstance(exp, int | float) and not isinstance(exp, bool):
            ttl = min(ttl, exp - time.time())
        return claims, ttl

    def _refusal(self, answer: dict[str, Any]) -> str | None:
        """Why an introspection answer does not let the token in (RFC 7662 2.2), or None."""
        if answer.get("active") is not True:
            return "the token is not active at its issuer (expired, revoked or unknown)"
        if str(answer.get("token_type", "")).lower() in _REFRESH_TYPES:
            return "a refresh token is not a bearer proof; send the access token"
        if "iss" in answer and answer["iss"] not in self.issuer.issuer_patterns:
            return "the introspection answer names another issuer"
        exp = answer.get("exp")
        if isinstance(exp, int | float) and not isinstance(exp, bool) and exp <= time.time() - self.issuer.leeway:
            return "the token has expired"
        aud = answer.get("aud")
        auds = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
        if any(a in self.issuer.audiences for a in auds if isinstance(a, str)):
            return None
        if answer.get("client_id") in self.issuer.client_ids:
            return None
        if self.settings.any_client:
            return None
        return "the token was issued to another client or audience"

    # -- the issuer's endpoints --------------------------------------------------------------
    def _endpoint(self, name: str) -> str:
        configured = getattr(self.settings, name)
        if configured:
            return str(configured)
        with self._endpoints_lock:
            if name not in self._endpoints:
                try:
                    document = discover(self._http, self.issuer.issuer, self.issuer.discovery_document_url,
                                        self.issuer.http_timeout)
                except FetchError as exc:
                    raise IssuerUnreachable(str(exc)) from None
                for key in ("introspection_endpoint", "userinfo_endpoint"):
                    if isinstance(document.get(key), str) and document[key].startswith(("https://", "http://")):
                        self._endpoints[key] = document[key]
            if name not in self._endpoints:
                raise IssuerUnreachable(f"the discovery document names no {name}")
            return self._endpoints[name]

    def _introspect(self, token: str) -> dict[str, Any]:
        assert self._client is not None
        url = self._endpoint("introspection_endpoint")
        try:
            resp = self._client.introspect_token(url, token=token, token_type_hint="access_token",
                                                 timeout=self.issuer.http_timeout, allow_redirects=False,
                                                 headers={"Accept": "application/json"})
        except (requests.RequestException, ValueError) as exc:
            raise IssuerUnreachable(f"POST {url} failed: {type(exc).__name__}") from None
        if resp.status_code != 200:
            raise IssuerUnreachable(f"POST {url} answered HTTP {resp.status_code} (is the introspection "
                                    "client's id and credential right?)")
        return self._json_object(resp, url)

    def _userinfo(self, token: str) -> dict[str, Any] | None:
        url = self._endpoint("userinfo_endpoint")
        try:
            resp = self._http.get(url, timeout=self.issuer.http_timeout, allow_redirects=False,
                                  headers={"Authorization": f"Bearer {token}", "Accept": "application/json"})
        except requests.RequestException as exc:
            raise IssuerUnreachable(f"GET {url} failed: {type(exc).__name__}") from None
        if resp.status_code in (401, 403):
            return None
        if resp.status_code != 200:
            raise IssuerUnreachable(f"GET {url} answered HTTP {resp.status_code}")
        return self._json_object(resp, url)

    @staticmethod
    def _json_object(resp: requests.Response, url: str) -> dict[str, Any]:
        if len(resp.content) > MAX_ANSWER_BYTES:
            raise IssuerUnreachable(f"{url} answered more than {MAX_ANSWER_BYTES} bytes")
        try:
            body = resp.json()
        except ValueError:
            raise IssuerUnreachable(f"{url} did not answer JSON") from None
        if not isinstance(body, dict):
            raise IssuerUnreachable(f"{url} did not answer a JSON object")
        return body


def _credential(issuer: IssuerSettings) -> str | None:
    """The introspection client's secret or private key, from ``credential_env`` (or ``_FILE``)."""
    opaque = issuer.opaque
    if opaque is None or opaque.credential_env is None:
        return None
    value = read_secret(opaque.credential_env)
    if value is None:
        raise ConfigError([f"issuers[{issuer.name}].opaque.credential_env: {opaque.credential_env!r}: neither "
                           f"{opaque.credential_env} nor {opaque.credential_env}_FILE is set"])
    return value


class OpaqueTokens:
    """Routes a bearer that is not a JWT to the one issuer that may see it."""

    def __init__(self, issuers: Iterable[IssuerSettings]) -> None:
        checkers = [OpaqueTokenChecker(i, _credential(i)) for i in issuers if i.opaque is not None]
        self._prefixed = [(c.settings.prefix, c) for c in checkers if c.settings.prefix]
        self._default = next((c for c in checkers if not c.settings.prefix), None)
        self.checkers = {c.issuer.name: c for c in checkers}

    def route(self, token: str) -> OpaqueTokenChecker | None:
        for prefix, checker in self._prefixed:
            if token.startswith(prefix):  # type: ignore[arg-type]
                return checker
        return self._default

    def check(self, token: str) -> tuple[IssuerSettings, dict[str, Any]] | None:
        """The issuer and the claims it vouches for; None when no issuer takes opaque tokens."""
        checker = self.route(token)
        if checker is None:
            return None
        if len(token) > MAX_OPAQUE_BYTES or not _B64TOKEN.fullmatch(token):
            raise InvalidToken("the token is malformed (not a JWT, and not an opaque token's characters)")
        return checker.issuer, checker.check(token)
