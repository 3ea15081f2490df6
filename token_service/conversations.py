"""Conversations REST sync (design 2.7): make sure the User exists with the mapped role.

Twilio bills a User as "active" for the month whenever it is created or updated over REST (seed 001,
"Active Users in Conversations"), so this module writes as little as it can: it creates a missing User,
updates only ``RoleSid`` and only when it differs, and remembers what it synced in the store (with a TTL) so
a repeat login makes no REST call at all. Reads (fetch) do not make a User active.

The REST calls go through the ``twilio`` helper library (Users resource of seed 004); its HTTP client is
:class:`RewritingHttpClient`, so the Conversations endpoint is configurable (a proxy, or the test stand-in).

Identities travel in the URL path (``/Users/{Sid}`` accepts the identity) and the library puts them there
unescaped, so this module percent-encodes them itself (``/``, ``?``, ``#``, ``%``, spaces, non-ASCII ...);
the identities ``.`` and ``..`` cannot be addressed by path at all (URL normalisation removes them) and are
refused with :class:`UnaddressableIdentity`.
"""

from __future__ import annotations

import hashlib
import logging
import math
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any, Literal, NoReturn, TypeVar
from urllib.parse import quote, urlsplit, urlunsplit

import requests
from prometheus_client import Counter
from twilio.base.exceptions import TwilioException, TwilioRestException
from twilio.http.http_client import TwilioHttpClient
from twilio.http.response import Response
from twilio.rest import Client

from .errors import InvalidIdentity, Unavailable
from .store.base import Store, StoreUnavailable

log = logging.getLogger(__name__)

T = TypeVar("T")

CONVERSATIONS_ORIGIN = "https://conversations.twilio.com"
DEFAULT_RETRY_AFTER = 5  # seconds, told to callers when Twilio gave no Retry-After
BACKOFF_BASE = 0.2  # seconds before the 2nd attempt after a 429 without Retry-After; doubles each time
LOCK_POLL = 0.05  # seconds between looks at the cache while another worker syncs the same identity

Outcome = Literal["cached", "created", "updated", "unchanged", "deferred"]
FailureMode = Literal["fail_open", "fail_closed"]

SYNC_TOTAL = Counter(
    "token_service_conversations_sync_total",
    "Conversations User syncs by outcome (cached, created, updated, unchanged, deferred, unavailable).",
    ["outcome"],
)
REST_CALLS = Counter(
    "token_service_conversations_rest_calls_total",
    "HTTP requests to the Conversations Users API, by method and status (a code, 'timeout' or 'error').",
    ["method", "status"],
)

_PATH_SAFE = "!$&'()*+,;=:@"  # RFC 3986 pchar sub-delims, ':' and '@': legal in a path segment as they are


# -- the HTTP client: the real twilio client, pointed at a configurable base URL ---------------------------------


def _split_base(url: str, what: str) -> tuple[str, str, str]:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise ValueError(f"{what} must be an absolute http(s) URL without query or fragment, got {url!r}")
    return parts.scheme, parts.netloc.lower(), parts.path.rstrip("/")


class RewritingHttpClient(TwilioHttpClient):
    """A ``TwilioHttpClient`` that sends requests for some Twilio base URLs to other base URLs.

    Hook: ``twilio.rest.Client`` hands every request - including the absolute ``next_page_url`` of list pages -
    as a fully qualified URL to its ``http_client`` (``Client(..., http_client=...)``, the library's supported
    injection point). This class overrides ``request`` only to swap the origin, then defers to
    ``TwilioHttpClient.request`` unchanged, so the library's headers, auth, form encoding, logging and error
    handling run as they would against Twilio.

    ``base_urls`` maps a Twilio base URL (``https://conversations.twilio.com``, optionally with a path) to the
    replacement (``http://127.0.0.1:8080``, ``https://proxy.internal/twilio-conversations``); the rest of the
    URL (path below the base, query) is kept. A URL matching no key raises ``TwilioException`` unless
    ``passthrough=True`` - nothing reaches a Twilio host nobody configured.

    ``timeout`` (seconds) applies to connect and to each read. There are no automatic retries: ``requests``'
    default adapters do not retry, and the https adapter ``TwilioHttpClient`` mounts is only given retries when
    ``max_retries`` is passed, which this class never does. Credentials travel as the ``auth`` tuple, which the
    library never logs (its request log prints method, URL, query parameters and non-Authorization headers).

    ``last_response`` is the last ``twilio.http.response.Response`` received on the calling thread, e.g. to read
    ``Retry-After`` after a ``TwilioRestException`` with status 429 (the exception does not carry headers).
    """

    def __init__(
        self,
        base_urls: Mapping[str, str],
        timeout: float,
        *,
        passthrough: bool = False,
        trust_env: bool = True,
        logger: logging.Logger | None = None,
    ):
        if timeout is None or timeout <= 0:
            raise ValueError("timeout must be a positive number of seconds")
        kwargs: dict[str, Any] = {"timeout": timeout, "pool_connections": True}
        if logger is not None:
            kwargs["logger"] = logger
        super().__init__(**kwargs)
        assert self.session is not None
        self.session.trust_env = trust_env  # False: ignore *_PROXY variables and .netrc
        rules = []
        for source, target in base_urls.items():
            rules.append((_split_base(source, "base_urls key"), _split_base(target, "base_urls value")))
        # longest source path first, so https://x/v1 wins over https://x
        rules.sort(key=lambda rule: len(rule[0][2]), reverse=True)
        self._rules = rules
        self.passthrough = passthrough
        self._local = threading.local()

    def rewrite(self, url: str) -> str:
        parts = urlsplit(url)
        scheme, netloc, path = parts.scheme.lower(), parts.netloc.lower(), parts.path
        for (src_scheme, src_netloc, src_path), (dst_scheme, dst_netloc, dst_path) in self._rules:
            if (scheme, netloc) != (src_scheme, src_netloc):
                continue
            if path != src_path and not path.startswith(src_path + "/"):
                continue
            return urlunsplit((dst_scheme, dst_netloc, dst_path + path[len(src_path) :], parts.query, ""))
        if self.passthrough:
            return url
        raise TwilioException(f"refusing to send a request to {scheme}://{netloc}: no base URL configured for it")

    def request(
        self,
        method: str,
        url: str,
        params: dict[str, object] | None = None,
        data: dict[str, object] | None = None,
        headers: dict[str, str] | None = None,
        auth: tuple[str, str] | None = None,
        timeout: float | None = None,
        allow_redirects: bool = False,
    ) -> Response:
        self._local.last_response = None
        response = super().request(
            method,
            self.rewrite(url),
            params=params,
            data=data,
            headers=headers,
            auth=auth,
            timeout=timeout,
            allow_redirects=allow_redirects,
        )
        self._local.last_response = response
        return response

    @property
    def last_response(self) -> Response | None:
        return getattr(self._local, "last_response", None)

    def close(self) -> None:
        if self.session is not None:
            self.session.close()

    def __enter__(self) -> RewritingHttpClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        targets = ", ".join(f"{s[0]}://{s[1]}{s[2]} -> {d[0]}://{d[1]}{d[2]}" for s, d in self._rules)
        return f"<RewritingHttpClient {targets} timeout={self.timeout}>"


def twilio_client(
    base_url: str,
    account_sid: str,
    api_key_sid: str,
    api_key_secret: str,
    timeout: float = 5.0,
    *,
    trust_env: bool = True,
) -> Client:
    """A real ``twilio.rest.Client`` authenticating with an API key, whose Conversations traffic goes to
    ``base_url``. Close it with ``client.http_client.close()``."""
    http_client = RewritingHttpClient({CONVERSATIONS_ORIGIN: base_url}, timeout, trust_env=trust_env)
    return Client(
        api_key_sid,
        api_key_secret,
        account_sid,
        http_client=http_client,
        # not os.environ: an ambient TWILIO_EDGE / TWILIO_REGION would rename the host before it is rewritten
        environment={"TWILIO_EDGE": "", "TWILIO_REGION": ""},
    )


# -- settings, results, errors ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class SyncSettings:
    """``[conversations.sync]``. ``timeout`` bounds each REST call; a 429 is retried ``max_attempts`` times in
    all, waiting what ``Retry-After`` asks when that is at most ``retry_after_cap`` seconds (else giving up at
    once, rather than calling Twilio back before it said to)."""

    service_sid: str
    account_sid: str
    api_key_sid: str
    api_key_secret: str = field(repr=False)
    base_url: str = CONVERSATIONS_ORIGIN
    failure_mode: FailureMode = "fail_open"
    timeout: float = 2.0
    cache_ttl: int = 86400
    friendly_name_claim: str | None = None
    max_attempts: int = 3
    retry_after_cap: float = 2.0

    def __post_init__(self) -> None:
        if self.failure_mode not in ("fail_open", "fail_closed"):
            raise ValueError(f"failure_mode must be fail_open or fail_closed, got {self.failure_mode!r}")
        if not 0 < self.timeout <= 30:
            raise ValueError(f"timeout must be in (0, 30] seconds, got {self.timeout!r}")
        if self.cache_ttl < 1 or self.max_attempts < 1 or self.retry_after_cap < 0:
            raise ValueError("cache_ttl and max_attempts must be >= 1, retry_after_cap >= 0")

    @property
    def lock_ttl(self) -> int:
        """Long enough for one fetch + one write, short enough that a crashed worker blocks nobody for long."""
        return max(2, math.ceil(2 * self.timeout + 1))


@dataclass(frozen=True)
class SyncResult:
    """What ``ensure``/``sync`` did: ``deferred`` = failed under fail_open (nothing cached, retried next time)."""

    outcome: Outcome
    rest_calls: int


class ConversationsUnavailable(Unavailable):
    """The Conversations API (or the store) failed; 503 with ``Retry-After`` (fail_closed, CLI)."""


class UnaddressableIdentity(InvalidIdentity):
    """An identity the Users API cannot be asked about by path (empty, ``.`` or ``..``): 403, permanent."""


class _SyncFailure(Exception):
    """Internal: a REST call or the store failed; ``reason`` is safe to log (no secrets).

    ``in_flight``: a write was sent and its answer never came (a read timeout), so it may still land
    at Twilio; the per-identity lock is then kept until it expires, and nobody writes meanwhile.
    """

    def __init__(self, reason: str, retry_after: int = DEFAULT_RETRY_AFTER, *, in_flight: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after
        self.in_flight = in_flight


@dataclass
class _Tally:
    """REST requests made by one ``ensure``/``sync``/``show`` (per call, so a shared UserSync stays thread-safe)."""

    calls: int = 0


# -- helpers -----------------------------------------------------------------------------------------------------


def path_segment(identity: str) -> str:
    """The identity as one URL path segment: the twilio library formats it into the path unescaped, so a ``/``
    would add a segment, ``?``/``#`` would start a query/fragment and ``%`` would be decoded by the server."""
    if identity in ("", ".", ".."):
        raise UnaddressableIdentity(f"identity {identity!r} cannot be addressed in a Users API path")
    return quote(identity, safe=_PATH_SAFE)


def identity_digest(identity: str) -> str:
    return hashlib.sha256(identity.encode("utf-8")).hexdigest()


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or HTTP-date), or None when absent or unreadable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _status_of(http_client: object) -> str:
    response = getattr(http_client, "last_response", None)
    return str(response.status_code) if response is not None else "2xx"


def _jsonable(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


# -- the sync ----------------------------------------------------------------------------------------------------


class UserSync:
    """Makes sure a Conversations User exists with the mapped role, writing to Twilio only when needed.

    Thread-safe; one instance per process. With a shared (Redis) store, several processes cooperate: the cache
    saves REST calls across all of them and a per-identity lock keeps two first logins from both creating.
    """

    def __init__(self, settings: SyncSettings, store: Store, client: Client | None = None,
                 newest_role_sid: Callable[[str], str | None] | None = None) -> None:
        self.settings = settings
        self.store = store
        # The identity's current role as the newest sign-in set it: a login that raced a newer one
        # must not write its older role to Twilio.
        self.newest_role_sid = newest_role_sid
        self._owns_client = client is None
        self.client = client if client is not None else self._build_client(settings)
        self._users = self.client.conversations.v1.services(settings.service_sid).users

    @staticmethod
    def _build_client(settings: SyncSettings) -> Client:
        return twilio_client(
            settings.base_url, settings.account_sid, settings.api_key_sid, settings.api_key_secret, settings.timeout
        )

    def close(self) -> None:
        """Close the HTTP connections, if this instance built the client."""
        if self._owns_client:
            close = getattr(self.client.http_client, "close", None)
            if close is not None:
                close()

    def __enter__(self) -> UserSync:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- public API -------------------------------------------------------------------------------------------

    def ensure(self, identity: str, role_sid: str, friendly_name: str | None = None) -> SyncResult:
        """The token path: no REST call when the store remembers this role; failures per ``failure_mode``."""
        tally = _Tally()
        try:
            outcome = self._run(identity, role_sid, friendly_name, tally, use_cache=True)
        except UnaddressableIdentity as exc:
            if self.settings.failure_mode == "fail_closed":
                raise  # permanent: 403 says so, a 503 would invite retries
            return self._defer(identity, _SyncFailure(exc.detail), tally)
        except _SyncFailure as failure:
            if self.settings.failure_mode == "fail_closed":
                self._unavailable(identity, failure, tally)
            return self._defer(identity, failure, tally)
        return self._done(outcome, tally)

    def sync(self, identity: str, role_sid: str, friendly_name: str | None = None) -> SyncResult:
        """``token-service sync-user``: always asks Twilio (ignores the cache, then refreshes it); raises
        :class:`ConversationsUnavailable` on failure whatever the failure mode, so an operator sees it."""
        tally = _Tally()
        try:
            outcome = self._run(identity, role_sid, friendly_name, tally, use_cache=False)
        except _SyncFailure as failure:
            self._unavailable(identity, failure, tally)
        return self._done(outcome, tally)

    def show(self, identity: str) -> dict[str, Any] | None:
        """``token-service show-user``: the User's fields (dates as ISO 8601), or None if it does not exist.

        Raises :class:`ConversationsUnavailable` when Twilio cannot be asked."""
        tally = _Tally()
        try:
            user = self._fetch(identity, tally)
        except _SyncFailure as failure:
            raise ConversationsUnavailable(
                f"Conversations API: {failure.reason}", retry_after=failure.retry_after
            ) from None
        if user is None:
            return None
        fields = ("sid", "account_sid", "chat_service_sid", "role_sid", "identity", "friendly_name", "attributes",
                  "is_online", "is_notifiable", "date_created", "date_updated", "url")
        return {name: _jsonable(getattr(user, name, None)) for name in fields}

    def cache_key(self, identity: str) -> str:
        return f"sync:{self.settings.service_sid}:{identity_digest(identity)}"

    def lock_key(self, identity: str) -> str:
        return f"synclock:{self.settings.service_sid}:{identity_digest(identity)}"

    def pause_key(self) -> str:
        """Set while Twilio asked (429 + Retry-After) to be left alone: logins defer instead of calling."""
        return f"syncpause:{self.settings.service_sid}"

    # -- the flow ---------------------------------------------------------------------------------------------

    def _run(
        self, identity: str, role_sid: str, friendly_name: str | None, tally: _Tally, *, use_cache: bool
    ) -> Outcome:
        path_segment(identity)  # refuse unaddressable identities before touching anything
        locked = self._acquire(identity, role_sid, use_cache)
        if locked is None:
            return "cached"
        release = True
        try:
            if use_cache and self.newest_role_sid is not None:
                role_sid = self.newest_role_sid(identity) or role_sid
            outcome = self._reconcile(identity, role_sid, friendly_name, tally)
            self._remember(identity, role_sid)  # before letting go: waiters then find it cached
        except _SyncFailure as failure:
            release = not failure.in_flight
            raise
        finally:
            if release:
                self._release(identity)
        return outcome

    def _acquire(self, identity: str, role_sid: str, use_cache: bool) -> bool | None:
        """Take the per-identity lock. None: the cache already holds ``role_sid`` (nothing to do).

        A login that cannot take the lock within ``timeout`` never goes ahead without it (that would
        send a second create): it fails, which ``fail_open`` turns into a deferred sync.
        """
        deadline = time.monotonic() + self.settings.timeout
        try:
            while True:
                if use_cache and self.store.get(self.cache_key(identity)) == role_sid:
                    return None
                if self.store.get(self.pause_key()) is not None:
                    raise _SyncFailure("Twilio asked to wait (429 Retry-After)")
                if self.store.add_once(self.lock_key(identity), self.settings.lock_ttl):
                    if use_cache and self.store.get(self.cache_key(identity)) == role_sid:
                        self._release(identity)  # synced by the worker that just let go
                        return None
                    return True
                if time.monotonic() >= deadline:
                    raise _SyncFailure("another sign-in is syncing this user and did not finish in time")
                time.sleep(LOCK_POLL)
        except StoreUnavailable as exc:
            raise _SyncFailure(f"store unavailable ({exc})") from None

    def _release(self, identity: str) -> None:
        try:
            self.store.delete(self.lock_key(identity))
        except StoreUnavailable:
            pass  # the lock expires on its own after lock_ttl

    def _remember(self, identity: str, role_sid: str) -> None:
        """Cache the synced role. A store failure here is logged, not a sync failure: Twilio is right already."""
        try:
            self.store.put(self.cache_key(identity), role_sid, self.settings.cache_ttl)
        except StoreUnavailable:
            log.warning(
                "conversations sync done but not remembered: store unavailable",
                extra={"event": "conversations_sync_not_cached", "identity": identity},
            )

    def _reconcile(self, identity: str, role_sid: str, friendly_name: str | None, tally: _Tally) -> Outcome:
        """Fetch, then create or update only what differs."""
        user = self._fetch(identity, tally)
        if user is None:
            created = self._create(identity, role_sid, friendly_name, tally)
            if created:
                return "created"
            user = self._fetch(identity, tally)  # 409: created meanwhile by someone else
            if user is None:
                raise _SyncFailure("create answered 409 but the user cannot be fetched")
        if user.role_sid == role_sid:
            return "unchanged"
        self._call("POST", lambda: self._users(user.sid).update(role_sid=role_sid), tally)
        return "updated"

    def _fetch(self, identity: str, tally: _Tally) -> Any:
        segment = path_segment(identity)
        try:
            return self._call("GET", lambda: self._users(segment).fetch(), tally, expected=(404,))
        except _Expected:
            return None

    def _create(self, identity: str, role_sid: str, friendly_name: str | None, tally: _Tally) -> bool:
        """True if created, False if it already existed (409)."""
        kwargs: dict[str, Any] = {"identity": identity, "role_sid": role_sid}
        if friendly_name:
            kwargs["friendly_name"] = friendly_name
        try:
            self._call("POST", lambda: self._users.create(**kwargs), tally, expected=(409,))
        except _Expected:
            return False
        return True

    # -- one REST call, with 429 handling ------------------------------------------------------------------------

    def _call(self, method: str, request: Callable[[], T], tally: _Tally, expected: tuple[int, ...] = ()) -> T:
        """Run one library call; ``expected`` statuses raise ``_Expected``, other failures ``_SyncFailure``."""
        attempts = self.settings.max_attempts
        for attempt in range(1, attempts + 1):
            tally.calls += 1
            try:
                result = request()
            except TwilioRestException as exc:
                REST_CALLS.labels(method, str(exc.status)).inc()
                if exc.status in expected:
                    raise _Expected(exc.status) from None
                wait = self._throttled_wait(exc, attempt)
                if wait is not None:
                    time.sleep(wait)
                    continue
                raise self._translate(method, exc) from None
            except requests.Timeout as exc:
                REST_CALLS.labels(method, "timeout").inc()
                in_flight = method != "GET" and not isinstance(exc, requests.ConnectTimeout)
                raise _SyncFailure(f"{method} timed out after {self.settings.timeout}s", in_flight=in_flight) from None
            except (requests.RequestException, TwilioException) as exc:
                REST_CALLS.labels(method, "error").inc()
                raise _SyncFailure(f"{method} failed: {type(exc).__name__}") from None
            REST_CALLS.labels(method, _status_of(self.client.http_client)).inc()
            return result
        raise AssertionError("unreachable")  # the last attempt returns or raises

    def _retry_after(self) -> float | None:
        response = getattr(self.client.http_client, "last_response", None)
        headers = getattr(response, "headers", None) or {}
        return parse_retry_after(headers.get("Retry-After"))

    def _throttled_wait(self, exc: TwilioRestException, attempt: int) -> float | None:
        """Seconds to wait before retrying a 429, or None to give up (not a 429, attempts used up, or Twilio
        asked for a longer pause than we may spend on a login)."""
        if exc.status != 429 or attempt >= self.settings.max_attempts:
            return None
        asked = self._retry_after()
        if asked is not None and asked > self.settings.retry_after_cap:
            return None
        backoff = BACKOFF_BASE * 2 ** (attempt - 1) * (0.5 + random.random() / 2)
        return min(self.settings.retry_after_cap, max(asked or 0.0, backoff))

    def _translate(self, method: str, exc: TwilioRestException) -> _SyncFailure:
        reason = f"{method} answered {exc.status} (Twilio error {exc.code})"
        if exc.status == 429:
            asked = self._retry_after()
            retry_after = math.ceil(asked) if asked is not None else DEFAULT_RETRY_AFTER
            if asked:
                self._pause(math.ceil(asked))
            return _SyncFailure(f"{reason} after {self.settings.max_attempts} attempt(s)", max(1, retry_after))
        if exc.status == 404:
            reason += f": does the Conversation Service {self.settings.service_sid} exist?"
        return _SyncFailure(reason)

    def _pause(self, seconds: int) -> None:
        """Every worker leaves Twilio alone for as long as it asked."""
        try:
            self.store.put(self.pause_key(), "1", seconds)
        except StoreUnavailable:
            pass  # each worker then learns it from its own 429

    # -- outcomes -----------------------------------------------------------------------------------------------

    def _done(self, outcome: Outcome, tally: _Tally) -> SyncResult:
        SYNC_TOTAL.labels(outcome).inc()
        return SyncResult(outcome, tally.calls)

    def _unavailable(self, identity: str, failure: _SyncFailure, tally: _Tally) -> NoReturn:
        """fail_closed (and the CLI): no token for a user Twilio has not confirmed."""
        SYNC_TOTAL.labels("unavailable").inc()
        log.warning(
            "conversations sync failed: %s", failure.reason,
            extra={"event": "conversations_sync_failed", "identity": identity, "rest_calls": tally.calls},
        )
        raise ConversationsUnavailable(
            f"the Conversations API did not confirm the user ({failure.reason}); retry later",
            retry_after=failure.retry_after,
        )

    def _defer(self, identity: str, failure: _SyncFailure, tally: _Tally) -> SyncResult:
        """fail_open: the token is issued anyway; nothing is cached, so the next login tries again."""
        SYNC_TOTAL.labels("deferred").inc()
        log.warning(
            "conversations sync deferred: %s", failure.reason,
            extra={"event": "conversations_sync_deferred", "identity": identity, "rest_calls": tally.calls},
        )
        return SyncResult("deferred", tally.calls)


class _Expected(Exception):
    """Internal: an answer the caller handles (404 on fetch: missing; 409 on create: exists already)."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status
