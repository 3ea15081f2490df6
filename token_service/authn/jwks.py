"""Per-issuer signing-key cache (design 2.1, "JWKS cache").

Keys are fetched from the issuer (OIDC discovery, a configured ``jwks_uri``, or a static file for
air-gapped setups) and kept for ``ttl``. When they age past ``ttl`` one background refresh runs
while callers keep using the cached set; if the IdP stays unreachable the set keeps serving until
it is ``max_stale`` old. A token naming an unknown ``kid`` triggers at most one fetch per
``cooldown`` across all threads (single flight), and kids still unknown after a fetch are
remembered, so a flood of random kids cannot flood the IdP.

RSA keys shorter than 2048 bits (RFC 7518 3.3) are refused when the set is loaded: logged, listed
under ``refused_keys`` in readiness, and never used, so a token signed with one gets ``401``.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import jwt
import requests

from token_service.metrics import JWKS_FETCHES

log = logging.getLogger(__name__)

MAX_JWKS_BYTES = 512 * 1024
MAX_BAD_KIDS = 1024
MIN_RSA_BITS = 2048  # RFC 7518 3.3: "A key of size 2048 bits or larger MUST be used"

# Which key type (and curve) each allowed algorithm needs.
_KEY_TYPES: dict[str, tuple[str, str | None]] = {
    **{f"{p}{n}": ("RSA", None) for p in ("RS", "PS") for n in (256, 384, 512)},
    "ES256": ("EC", "P-256"),
    "ES384": ("EC", "P-384"),
    "ES512": ("EC", "P-521"),
    "EdDSA": ("OKP", None),
    "Ed25519": ("OKP", "Ed25519"),  # RFC 9864: fully-specified EdDSA
    "Ed448": ("OKP", "Ed448"),
}
# PyJWK needs an algorithm it knows to parse a key; the name only picks the parser.
_PARSE_AS = {"RSA": "RS256", "EC": {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}, "OKP": "EdDSA"}
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

    def fits(self, alg: str) -> bool:
        """RFC 7517 4.4: a key's own ``alg`` binds it; ``EdDSA`` keys fit the fully-specified names."""
        kty, crv = _KEY_TYPES[alg]
        if self.kty != kty or (crv and self.crv != crv):
            return False
        return self.alg is None or self.alg == alg or (self.alg == "EdDSA" and alg in {"Ed25519", "Ed448"})


@dataclass(frozen=True)
class KeySet:
    """What a JWKS document gave: the usable keys by ``kid``, and why others were refused."""

    keys: dict[str | None, CachedKey]
    refused: dict[str, str]  # kid -> reason


def _parse_key(entry: dict[str, Any]) -> Any:
    kty, crv = entry.get("kty"), entry.get("crv")
    parse_as = _PARSE_AS[kty] if kty != "EC" else _PARSE_AS["EC"].get(crv)  # type: ignore[union-attr]
    public = {k: v for k, v in entry.items() if k not in _PRIVATE_MEMBERS and k != "alg"}
    return jwt.PyJWK(public, algorithm=parse_as).key


def _parse_jwks(document: Any) -> KeySet:
    """Public signature keys by ``kid``; unusable entries (encryption keys, junk) are skipped."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise FetchError("the JWKS document has no 'keys' list")
    keys: dict[str | None, CachedKey] = {}
    refused: dict[str, str] = {}
    for entry in document["keys"]:
        if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
            continue
        if entry.get("kty") not in _ASYMMETRIC_KEY_TYPES:
            continue  # symmetric ("oct") or unknown keys never verify an IdP token
        try:
            key = _parse_key(entry)
        except (jwt.PyJWKError, jwt.InvalidKeyError, KeyError, ValueError, TypeError):
            continue
        kid = entry.get("kid") if isinstance(entry.get("kid"), str) else None
        if entry["kty"] == "RSA" and key.key_size < MIN_RSA_BITS:
            refused[kid or "(no kid)"] = f"RSA key of {key.key_size} bits; at least {MIN_RSA_BITS} are required"
            continue
        alg = entry.get("alg") if isinstance(entry.get("alg"), str) else None
        keys[kid] = CachedKey(kid, entry["kty"], entry.get("crv"), alg, key)
    if not keys:
        detail = f" (refused: {'; '.join(f'{k}: {r}' for k, r in refused.items())})" if refused else ""
        raise FetchError(f"the JWKS document holds no usable signature key{detail}")
    return KeySet(keys, refused)


class KeyCache(Protocol):
    """What verification and readiness need of an issuer's keys, however they are fetched."""

    name: str
    ttl: float
    cooldown: float
    max_stale: float

    def get_key(self, kid: str | None, alg: str) -> Any:
        """The public key for ``kid`` and ``alg``; ``KeyNotFound`` or ``KeysUnavailable`` otherwise."""

    def status(self) -> dict[str, Any]:
        """The readiness report of these keys."""

    def ensure_loaded(self) -> None:
        """Load keys ahead of the first token, where that is possible."""


def key_report(age: float | None, cache: KeyCache, *, source: str, keys: int, refused: list[dict[str, str]],
               fetches: int, failures: int, last_error: str | None, before_first: str = "not_loaded") -> dict[str, Any]:
    """One issuer's key state for ``/readyz``, by the age of its keys: ``fresh`` within ``ttl``, ``stale``
    (still serving) within ``max_stale``, then ``expired``; ``before_first`` while none was fetched."""
    if age is None:
        state = before_first
    else:
        state = "fresh" if age <= cache.ttl else "stale" if age <= cache.max_stale else "expired"
    return {
        "state": state,
        # Keys fetched on demand (an ALB's) are usable before the first, unless fetching failed.
        "usable": state in {"fresh", "stale"} or (state == "on_demand" and last_error is None),
        "source": source,
        "keys": keys,
        "refused_keys": refused,
        "age_seconds": None if age is None else round(age, 1),
        "ttl_seconds": cache.ttl,
        "max_stale_seconds": cache.max_stale,
        "fetches": fetches,
        "fetch_failures": failures,
        "last_error": last_error,
    }


class KeySource:
    """Where an issuer's keys come from; ``fetch`` returns the parsed JWKS JSON."""

    describe: str = ""

    def fetch(self) -> Any:  # pragma: no cover - interface
        raise NotImplementedError


def get_json(session: requests.Session, url: str, timeout: float) -> Any:
    """GET a JSON document of at most ``MAX_JWKS_BYTES`` without following redirects."""
    try:
        with session.get(url, timeout=timeout, stream=True, allow_redirects=False,
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


def discover(session: requests.Session, issuer: str, url: str, timeout: float) -> dict[str, Any]:
    """The OIDC discovery document at ``url``, whose ``issuer`` must be ``issuer`` exactly."""
    discovery = get_json(session, url, timeout)
    if not isinstance(discovery, dict) or discovery.get("issuer") != issuer:
        raise FetchError("the discovery document names a different issuer")
    return discovery


class HttpKeySource(KeySource):
    """``jwks_uri`` given, or found by OIDC discovery (whose ``issuer`` must match exactly)."""

    def __init__(self, issuer: str, jwks_uri: str | None, timeout: float, discovery_url: str | None = None) -> None:
        self.issuer = issuer
        self.jwks_uri = jwks_uri
        self.timeout = timeout
        self.describe = jwks_uri or discovery_url or issuer.rstrip("/") + "/.well-known/openid-configuration"
        self._session = requests.Session()

    def fetch(self) -> Any:
        uri = self.jwks_uri
        if uri is None:
            discovery = discover(self._session, self.issuer, self.describe, self.timeout)
            uri = discovery.get("jwks_uri")
            if not isinstance(uri, str) or not uri.startswith(("https://", "http://")):
                raise FetchError("the discovery document has no usable jwks_uri")
        return get_json(self._session, uri, self.timeout)


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
        self._refused: dict[str, str] = {}
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
            key_set = _parse_jwks(self.source.fetch())
        except FetchError as exc:
            self._failures += 1
            self._last_error = str(exc)
            JWKS_FETCHES.labels(self.name, "error").inc()
            log.warning("jwks fetch failed", extra={"event": "jwks_fetch_failed", "issuer": self.name,
                                                    "error": self._last_error})
            return
        JWKS_FETCHES.labels(self.name, "ok").inc()
        for kid, reason in key_set.refused.items():
            if kid not in self._refused:
                log.warning("jwks key refused", extra={"event": "jwks_key_refused", "issuer": self.name,
                                                       "kid": kid, "error": reason})
        self._keys, self._refused = key_set.keys, key_set.refused
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

        if kid is not None and kid in self._refused:
            raise KeyNotFound(f"the token's signing key was refused by this service ({self._refused[kid]})")
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
            if kid is not None and kid in self._refused:
                raise KeyNotFound(f"the token's signing key was refused by this service ({self._refused[kid]})")
            raise KeyNotFound("the token's signing key is not published by its issuer")
        if not found.fits(alg):
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
        age = None if self._fetched_at is None else self._clock() - self._fetched_at
        return key_report(
            age, self, source=self.source.describe, keys=len(self._keys),
            refused=[{"kid": kid, "reason": reason} for kid, reason in self._refused.items()],
            fetches=self._fetches, failures=self._failures, last_error=self._last_error,
        )

    def ensure_loaded(self) -> None:
        """Readiness probes load keys that were never fetched (within the cooldown)."""
        if self._fetched_at is None or not self._usable(self._clock()):
            self.refresh()
