"""Per-issuer signing-key cache (design 2.1, "JWKS cache").

Keys are fetched from the issuer (OIDC discovery, a configured ``jwks_uri``, or a static file for
air-gapped setups) and kept for ``ttl``. When they age past ``ttl`` one background refresh runs
while callers keep using the cached set; if the IdP stays unreachable the set keeps serving until
it is ``max_stale`` old. A token naming an unknown ``kid`` triggers at most one fetch per
``cooldown`` across all threads (single flight), and kids still unknown after a fetch are
remembered, so a flood of random kids cannot flood the IdP.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import requests

from token_service.metrics import JWKS_FETCHES

log = logging.getLogger(__name__)

MAX_JWKS_BYTES = 512 * 1024
MAX_BAD_KIDS = 1024

# Which key type (and curve) each allowed algorithm needs.
_KEY_TYPES: dict[str, tuple[str, str | None]] = {
    **{f"{p}{n}": ("RSA", None) for p in ("RS", "PS") for n in (256, 384, 512)},
    "ES256": ("EC", "P-256"),
    "ES384": ("EC", "P-384"),
    "ES512": ("EC", "P-521"),
    "EdDSA": ("OKP", None),
}
_ASYMMETRIC_KEY_TYPES = frozenset({"RSA", "EC", "OKP"})
_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})


class KeyNotFound(Exception):
    """The token names a key this issuer does not publish (or one unfit for its algorithm)."""


class KeysUnavailable(Exception):
    """No usable key set: never fetched, or older than ``max_stale`` and the IdP is unreachable."""


class FetchError(Exception):
    """Fetching or parsing the key set failed; the message is safe to log and show in readiness."""


@dataclass(frozen=True)
class CachedKey:
    kid: str | None
    kty: str
    crv: str | None
    alg: str | None
    key: Any  # a cryptography public key object


def _parse_jwks(document: Any) -> dict[str | None, CachedKey]:
    """Public signature keys by ``kid``; unusable entries (encryption keys, junk) are skipped."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise FetchError("the JWKS document has no 'keys' list")
    keys: dict[str | None, CachedKey] = {}
    for entry in document["keys"]:
        if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
            continue
        if entry.get("kty") not in _ASYMMETRIC_KEY_TYPES:
            continue  # symmetric ("oct") or unknown keys never verify an IdP token
        public = {k: v for k, v in entry.items() if k not in _PRIVATE_MEMBERS}
        try:
            parsed = jwt.PyJWK(public)
        except (jwt.PyJWKError, jwt.InvalidKeyError, KeyError, ValueError, TypeError):
            continue
        kid = entry.get("kid") if isinstance(entry.get("kid"), str) else None
        keys[kid] = CachedKey(kid, entry.get("kty", ""), entry.get("crv"), entry.get("alg"),
                              parsed.key)
    if not keys:
        raise FetchError("the JWKS document holds no usable signature key")
    return keys


class KeySource:
    """Where an issuer's keys come from; ``fetch`` returns the parsed JWKS JSON."""

    describe: str = ""

    def fetch(self) -> Any:  # pragma: no cover - interface
        raise NotImplementedError


class HttpKeySource(KeySource):
    """``jwks_uri`` given, or found by OIDC discovery (whose ``issuer`` must match exactly)."""

    def __init__(self, issuer: str, jwks_uri: str | None, timeout: float) -> None:
        self.issuer = issuer
        self.jwks_uri = jwks_uri
        self.timeout = timeout
        self.describe = jwks_uri or issuer.rstrip("/") + "/.well-known/openid-configuration"
        self._session = requests.Session()

    def _get_json(self, url: str) -> Any:
        try:
            with self._session.get(url, timeout=self.timeout, stream=True,
                                   allow_redirects=False,
                                   headers={"Accept": "application/json"}) as resp:
                if resp.status_code != 200:
                    raise FetchError(f"GET {url} answered HTTP {resp.status_code}")
                body = resp.raw.read(MAX_JWKS_BYTES + 1, decode_content=True)
        except requests.RequestException as exc:
            raise FetchError(f"GET {url} failed: {type(exc).__name__}") from None
        if len(body) > MAX_JWKS_BYTES:
            raise FetchError(f"GET {url} answered more than {MAX_JWKS_BYTES} bytes")
        try:
            return json.loads(body)
        except ValueError:
            raise FetchError(f"GET {url} did not answer JSON") from None

    def fetch(self) -> Any:
        uri = self.jwks_uri
        if uri is None:
            discovery = self._get_json(self.describe)
            if not isinstance(discovery, dict) or discovery.get("issuer") != self.issuer:
                raise FetchError("the discovery document names a different issuer")
            uri = discovery.get("jwks_uri")
            if not isinstance(uri, str) or not uri.startswith(("https://", "http://")):
                raise FetchError("the discovery document has no usable jwks_uri")
        return self._get_json(uri)


class FileKeySource(KeySource):
    """Static keys from a JWKS file: for air-gapped setups; re-read at every refresh."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.describe = f"file {path}"

    def fetch(self) -> Any:
        try:
            return json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise FetchError(f"cannot read {self.path}: {type(exc).__name__}") from None


class JwksCache:
    """One issuer's keys with TTL, stale serving, refetch cooldown and a bad-kid memory."""

    def __init__(
        self,
        source: KeySource,
        *,
        name: str = "",
        ttl: float,
        cooldown: float,
        max_stale: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.source = source
        self.name = name
        self.ttl = ttl
        self.cooldown = cooldown
        self.max_stale = max_stale
        self._clock = clock
        self._keys: dict[str | None, CachedKey] = {}
        self._fetched_at: float | None = None
        self._attempted_at: float | None = None
        self._last_error: str | None = None
        self._fetches = 0
        self._failures = 0
        self._bad_kids: set[str] = set()
        self._generation = 0  # successful fetches; tells a waiting thread that keys changed
        self._fetch_lock = threading.Lock()

    # -- fetching ---------------------------------------------------------------------------
    def _cooling_down(self, now: float) -> bool:
        return self._attempted_at is not None and now - self._attempted_at < self.cooldown

    def _fetch_locked(self) -> None:
        """Fetch now; caller holds ``_fetch_lock``. Failures keep the old keys."""
        self._attempted_at = self._clock()
        self._fetches += 1
        try:
            keys = _parse_jwks(self.source.fetch())
        except FetchError as exc:
            self._failures += 1
            self._last_error = str(exc)
            JWKS_FETCHES.labels(self.name, "error").inc()
            log.warning("jwks fetch failed", extra={"event": "jwks_fetch_failed", "issuer": self.name,
                                                    "error": self._last_error})
            return
        JWKS_FETCHES.labels(self.name, "ok").inc()
        self._keys = keys
        self._fetched_at = self._clock()
        self._last_error = None
        self._bad_kids.clear()
        self._generation += 1

    def refresh(self, *, respect_cooldown: bool = True) -> None:
        """Single-flight fetch: a thread that waited for another's fetch does not fetch again."""
        with self._fetch_lock:
            if respect_cooldown and self._cooling_down(self._clock()):
                return
            self._fetch_locked()

    def _refresh_in_background(self) -> None:
        if not self._fetch_lock.acquire(blocking=False):
            return  # a refresh is already running

        def run() -> None:
            try:
                if not self._cooling_down(self._clock()):
                    self._fetch_locked()
            finally:
                self._fetch_lock.release()

        threading.Thread(target=run, name="jwks-refresh", daemon=True).start()

    def _usable(self, now: float) -> bool:
        return self._fetched_at is not None and now - self._fetched_at <= self.max_stale

    # -- lookup -----------------------------------------------------------------------------
    def get_key(self, kid: str | None, alg: str) -> Any:
        """The public key for ``kid`` that fits ``alg``; fetches only as the rules above allow."""
        now = self._clock()
        if not self._usable(now):
            self.refresh()
        elif now - self._fetched_at > self.ttl and not self._cooling_down(now):  # type: ignore[operator]
            self._refresh_in_background()
        if not self._usable(self._clock()):
            raise KeysUnavailable(self._last_error or "signing keys are too old to trust")

        found = self._lookup(kid)
        if found is None and kid is not None and kid not in self._bad_kids:
            generation = self._generation
            self.refresh()
            found = self._lookup(kid)
            # Remember the kid as bad only if a fresh key set has really been consulted.
            if found is None and self._generation != generation:
                if len(self._bad_kids) < MAX_BAD_KIDS:
                    self._bad_kids.add(kid)
        if found is None:
            raise KeyNotFound("the token's signing key is not published by its issuer")
        kty, crv = _KEY_TYPES[alg]
        if found.kty != kty or (crv and found.crv != crv) or (found.alg and found.alg != alg):
            raise KeyNotFound("the token's signing key does not fit its algorithm")
        return found.key

    def _lookup(self, kid: str | None) -> CachedKey | None:
        keys = self._keys
        if kid is not None:
            return keys.get(kid)
        # No kid: acceptable only when the issuer publishes exactly one key.
        return next(iter(keys.values())) if len(keys) == 1 else None

    # -- readiness --------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """Key state for ``/readyz``: fresh, stale (serving past ttl), expired, or not loaded."""
        now = self._clock()
        if self._fetched_at is None:
            state, age = "not_loaded", None
        else:
            age = now - self._fetched_at
            state = "fresh" if age <= self.ttl else "stale" if age <= self.max_stale else "expired"
        return {
            "state": state,
            "usable": state in {"fresh", "stale"},
            "source": self.source.describe,
            "keys": len(self._keys),
            "age_seconds": None if age is None else round(age, 1),
            "ttl_seconds": self.ttl,
            "max_stale_seconds": self.max_stale,
            "fetches": self._fetches,
            "fetch_failures": self._failures,
            "last_error": self._last_error,
        }

    def ensure_loaded(self) -> None:
        """Readiness probes load keys that were never fetched (within the cooldown)."""
        if self._fetched_at is None or not self._usable(self._clock()):
            self.refresh()
