"""``POST /v1/token``, ``/v1/token/refresh`` and ``/v1/token/revoke`` (design section 3).

Flask views, in the one request pipeline every endpoint shares: request ids, metrics and the access
log (``api/observability.py``), CORS (``api/cors.py``), problem+json errors (``api/errors.py``), the
body limit (``MAX_CONTENT_LENGTH``). The work itself is ``issuance.TokenIssuer``'s.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import lru_cache, partial
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request

from token_service.api.body import request_params
from token_service.api.browser import BrowserSessions, check_csrf, session_for
from token_service.authn.gateway import tcp_peer
from token_service.errors import InvalidRequest, InvalidToken, MissingToken
from token_service.issuance import IssuedToken, TokenIssuer
from token_service.ratelimit import rate_limit_headers
from token_service.store.base import LimitDecision

bp = Blueprint("tokens", __name__)
PATHS = ("/v1/token", "/v1/token/refresh", "/v1/token/revoke")
MAX_REFRESH_TOKEN_CHARS = 512
ALLOW = "POST, OPTIONS"
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def _issuer() -> TokenIssuer:
    return current_app.extensions["token_service.issuer"]  # type: ignore[no-any-return]


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


def bearer_token() -> str:
    """The credentials of ``Authorization: Bearer ...`` (RFC 6750 2.1)."""
    header = request.headers.get("Authorization")
    if header is None:
        raise MissingToken("send the IdP token as 'Authorization: Bearer <token>'")
    scheme, _, credentials = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        raise InvalidRequest("the Authorization header must use the Bearer scheme")
    credentials = credentials.strip()
    if not credentials:
        raise InvalidToken("the Bearer credentials are empty")
    return credentials


@lru_cache(maxsize=1024)
def _rfc3339(epoch: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def _json(body: dict[str, Any], limits: LimitDecision) -> Response:
    resp = jsonify(body)
    resp.headers.update(_NO_STORE)
    resp.headers.update(rate_limit_headers(limits))
    return resp


def token_answer(issued: IssuedToken) -> Response:
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


def _options() -> Response:
    """A plain OPTIONS (a CORS preflight is answered by ``api/cors.py`` before it gets here)."""
    return Response(status=204, headers={"Allow": ALLOW})


def _post_view(view: Callable[[], Response]) -> Callable[[], Response]:
    def handle() -> Response:
        return _options() if request.method == "OPTIONS" else view()

    handle.__name__ = view.__name__
    handle.__doc__ = view.__doc__
    return handle


@bp.route("/v1/token", methods=["POST", "OPTIONS"], provide_automatic_options=False)
@_post_view
def issue_token() -> Response:
    """Bearer proof; a gateway's assertion from a trusted proxy; or a signed-in browser's session cookie
    plus the CSRF proof. A trusted backend client's bearer may name the identity to mint for."""
    issuer = _issuer()
    browser: BrowserSessions | None = current_app.extensions.get("token_service.browser")
    bare = "Authorization" not in request.headers
    gateway = issuer.gateway_assertion(request.headers.get, tcp_peer(request.environ)) if bare else None
    found = None
    if browser is not None and bare and gateway is None:
        found = session_for(request.cookies.get(browser.cookie_name), browser.sessions)
    if gateway is not None:
        mint = partial(issuer.issue_for_gateway, gateway)
    elif found is not None:
        assert browser is not None
        check_csrf(request.headers.get, browser.allowed_origins)
        mint = partial(issuer.issue_for_session, *found)
    else:
        mint = partial(issuer.issue_for_bearer, bearer_token())
    body = request_params()
    identity = optional_string(body, "identity")
    if identity is not None:  # a trusted backend client names whom the token is for
        mint = partial(issuer.issue_for_client, bearer_token(), identity, optional_string(body, "role"))
    platform = optional_string(body, "platform")
    return token_answer(mint(platform=platform, client_ip=request.remote_addr))


@bp.route("/v1/token/refresh", methods=["POST", "OPTIONS"], provide_automatic_options=False)
@_post_view
def refresh_token() -> Response:
    body = request_params()
    presented = refresh_token_param(body, "refresh_token")
    platform = optional_string(body, "platform")
    return token_answer(_issuer().refresh(presented, platform=platform, client_ip=request.remote_addr))


@bp.route("/v1/token/revoke", methods=["POST", "OPTIONS"], provide_automatic_options=False)
@_post_view
def revoke_token() -> Response:
    """RFC 7009 2.2: 200 whether or not the token was known, once the request is well-formed."""
    body = request_params()
    presented = refresh_token_param(body, "refresh_token", "token")
    optional_string(body, "token_type_hint")  # RFC 7009: a hint only, but it must be a string
    limits = _issuer().revoke(presented, client_ip=request.remote_addr)
    return _json({"revoked": True}, limits)
