"""``POST /v1/token``, ``/v1/token/refresh`` and ``/v1/token/revoke`` (design section 3), as plain WSGI.

Why not Flask views: these endpoints are the service's hot path, and Flask's per-request machinery
(request and app contexts, hooks, werkzeug's ``Request``, ``Response`` and ``Headers`` objects) cost
more CPU than the token work itself. ``bench/ab.py`` measured it under gunicorn: the refresh
endpoint as a Flask view took 1,859 µs of server CPU per request, against 1,041 µs answered here
(README, "Hand-written code that stays"). ``TokenApi`` answers these three paths straight from the
WSGI environ and hands every other request to the Flask app behind it. It does for its requests
what the Flask hooks do for theirs, with the same helpers: request id and metrics
(``api/observability.py``), problem+json errors (``api/errors.py``), CORS (``api/cors.py``), the
body rules (``api/body.py``). The work itself is ``issuance.TokenIssuer``'s.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from functools import lru_cache, partial
from http import HTTPStatus
from typing import Any

import orjson
from werkzeug.http import parse_cookie

from token_service.api.body import parse_params, read_body
from token_service.api.browser import BrowserSessions, check_csrf, session_for
from token_service.api.cors import CorsPolicy
from token_service.api.errors import as_service_error, problem
from token_service.api.observability import observe, record_denial, request_id_for
from token_service.authn.gateway import tcp_peer
from token_service.authn.sessions import BrowserSession
from token_service.errors import InvalidRequest, InvalidToken, MethodNotAllowed, MissingToken
from token_service.issuance import IssuedToken, TokenIssuer
from token_service.logs import request_id_var
from token_service.ratelimit import rate_limit_headers
from token_service.store.base import LimitDecision

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
Answer = tuple[int, list[tuple[str, str]], bytes]

PATHS = frozenset({"/v1/token", "/v1/token/refresh", "/v1/token/revoke"})
MAX_REFRESH_TOKEN_CHARS = 512
ALLOW = "POST, OPTIONS"
_STATUS_LINES = {s.value: f"{s.value} {s.phrase}" for s in HTTPStatus}
_NO_STORE = [("Cache-Control", "no-store"), ("Pragma", "no-cache")]


class Request:
    """The few things the token endpoints read from one WSGI environ."""

    __slots__ = ("environ", "path", "client_ip")

    def __init__(self, environ: dict[str, Any]) -> None:
        self.environ = environ
        self.path: str = environ["PATH_INFO"]
        self.client_ip: str | None = environ.get("REMOTE_ADDR")

    def header(self, name: str) -> str | None:
        return self.environ.get("HTTP_" + name.upper().replace("-", "_"))  # type: ignore[no-any-return]

    def params(self, max_bytes: int) -> dict[str, Any]:
        mimetype = self.environ.get("CONTENT_TYPE", "").partition(";")[0].strip().lower()
        return parse_params(read_body(self.environ, max_bytes), mimetype)

    def bearer_token(self) -> str:
        """The credentials of ``Authorization: Bearer ...`` (RFC 6750 2.1)."""
        header = self.header("Authorization")
        if header is None:
            raise MissingToken("send the IdP token as 'Authorization: Bearer <token>'")
        scheme, _, credentials = header.strip().partition(" ")
        if scheme.lower() != "bearer":
            raise InvalidRequest("the Authorization header must use the Bearer scheme")
        credentials = credentials.strip()
        if not credentials:
            raise InvalidToken("the Bearer credentials are empty")
        return credentials


def optional_string(body: dict[str, Any], name: str) -> str | None:
    """``body[name]`` when present, which must then be a string (``null`` is not)."""
    if name not in body:
        return None
    value = body[name]
    if not isinstance(value, str):
        raise InvalidRequest(f"'{name}' must be a string")
    return value


def refresh_token_param(body: dict[str, Any], *names: str) -> str:
    """The first of ``names`` present; every one present must be a plausible token string."""
    found = []
    for name in names:
        value = optional_string(body, name)
        if value is None:
            continue
        if not value or len(value) > MAX_REFRESH_TOKEN_CHARS:
            raise InvalidRequest(f"'{name}' must be 1 to {MAX_REFRESH_TOKEN_CHARS} characters")
        found.append(value)
    if not found:
        raise InvalidRequest(f"send the refresh token as '{names[0]}'")
    return found[0]


@lru_cache(maxsize=1024)
def _rfc3339(epoch: int) -> str:
    """Cached: within a second, every answer names the same expiry times."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def _json(body: dict[str, Any], limits: LimitDecision) -> Answer:
    headers = [("Content-Type", "application/json"), *_NO_STORE, *rate_limit_headers(limits).items()]
    return 200, headers, orjson.dumps(body)


def token_answer(issued: IssuedToken) -> Answer:
    minted = issued.access
    body = {
        "token": minted.jwt,
        "identity": issued.mapped.identity,
        "role": issued.mapped.role,
        "role_sid": issued.mapped.role_sid,
        "expires_in": minted.expires_at - minted.issued_at,
        "expires_at": _rfc3339(minted.expires_at),
    }
    if issued.refresh_token:  # a trusted client's mint without refresh tokens has none
        body.update(refresh_token=issued.refresh_token, refresh_expires_at=_rfc3339(issued.refresh_expires_at))
    return _json(body, issued.limits)


class TokenApi:
    """WSGI middleware: the token endpoints here, every other request to ``fallback`` (Flask)."""

    def __init__(self, fallback: WsgiApp, issuer: TokenIssuer, cors: CorsPolicy,
                 browser: BrowserSessions | None = None) -> None:
        settings = issuer.settings
        self.fallback = fallback
        self.issuer = issuer
        self.cors = cors
        self.browser = browser
        self.max_body_bytes = settings.server.max_body_bytes
        self.trusted_proxies = settings.server.trusted_proxies > 0
        self.access_log = settings.logging.access_log
        self.store_retry_after = settings.store.retry_after
        self.routes: dict[str, Callable[[Request], Answer]] = {
            "/v1/token": self.issue_token,
            "/v1/token/refresh": self.refresh_token,
            "/v1/token/revoke": self.revoke_token,
        }

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        handler = self.routes.get(environ.get("PATH_INFO", ""))
        if handler is None:
            return self.fallback(environ, start_response)
        started = time.perf_counter()
        request = Request(environ)
        request_id = request_id_for(request.header("X-Request-ID"), self.trusted_proxies)
        context = request_id_var.set(request_id)
        try:
            status, headers, body = self._answer(handler, request)
            observe(request.path, environ["REQUEST_METHOD"], request.path, status,
                    time.perf_counter() - started, request.client_ip, self.access_log)
        finally:
            request_id_var.reset(context)
        headers += self.cors.response_headers(request.header("Origin"))
        headers.append(("Content-Length", str(len(body))))
        headers.append(("X-Request-ID", request_id))
        start_response(_STATUS_LINES[status], headers)
        return [body]

    def _answer(self, handler: Callable[[Request], Answer], request: Request) -> Answer:
        """The handler's answer, or the problem document of whatever it raised (never a trace)."""
        try:
            method = request.environ["REQUEST_METHOD"]
            if method == "POST":
                return handler(request)
            if method == "OPTIONS":
                return self.options(request)
            raise MethodNotAllowed("this endpoint does not accept that method")
        except Exception as exc:  # noqa: BLE001 - every failure leaves as a problem document
            err = as_service_error(exc, store_retry_after=self.store_retry_after)
            record_denial(request.path, err, request.client_ip)
            body, headers = problem(err)
            if isinstance(err, MethodNotAllowed):
                headers.append(("Allow", ALLOW))
            return err.status, headers, body

    def options(self, request: Request) -> Answer:
        """A CORS preflight from an allowed origin, or a plain OPTIONS: 204 either way."""
        if request.header("Access-Control-Request-Method") is None:
            return 204, [("Allow", ALLOW)], b""
        return 204, list(self.cors.preflight(request.header("Origin"))), b""

    # -- endpoints --------------------------------------------------------------------------
    def issue_token(self, request: Request) -> Answer:
        """Bearer proof; a gateway's assertion from a trusted proxy; or a signed-in browser's session
        cookie plus the CSRF proof. A trusted backend client's bearer may name the identity to mint for."""
        issuer = self.issuer
        bare = request.header("Authorization") is None
        gateway = issuer.gateway_assertion(request.header, tcp_peer(request.environ)) if bare else None
        found = self._session(request) if bare and gateway is None else None
        if gateway is not None:
            mint = partial(issuer.issue_for_gateway, gateway)
        elif found is not None:
            assert self.browser is not None  # a session is only found when login is on
            check_csrf(request.header, self.browser.allowed_origins)
            mint = partial(issuer.issue_for_session, *found)
        else:
            mint = partial(issuer.issue_for_bearer, request.bearer_token())
        body = request.params(self.max_body_bytes)
        identity = optional_string(body, "identity")
        if identity is not None:  # a trusted backend client names whom the token is for
            mint = partial(issuer.issue_for_client, request.bearer_token(), identity, optional_string(body, "role"))
        platform = optional_string(body, "platform")
        return token_answer(mint(platform=platform, client_ip=request.client_ip))

    def refresh_token(self, request: Request) -> Answer:
        body = request.params(self.max_body_bytes)
        presented = refresh_token_param(body, "refresh_token")
        platform = optional_string(body, "platform")
        return token_answer(self.issuer.refresh(presented, platform=platform, client_ip=request.client_ip))

    def revoke_token(self, request: Request) -> Answer:
        """RFC 7009 2.2: 200 whether or not the token was known, once the request is well-formed."""
        body = request.params(self.max_body_bytes)
        presented = refresh_token_param(body, "refresh_token", "token")
        optional_string(body, "token_type_hint")  # RFC 7009: a hint only, but it must be a string
        limits = self.issuer.revoke(presented, client_ip=request.client_ip)
        return _json({"revoked": True}, limits)

    def _session(self, request: Request) -> tuple[str, BrowserSession] | None:
        if self.browser is None:
            return None
        cookies = parse_cookie(request.environ)
        return session_for(cookies.get(self.browser.cookie_name), self.browser.sessions)
