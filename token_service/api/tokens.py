"""``POST /v1/token``, ``/v1/token/refresh`` and ``/v1/token/revoke`` (design section 3)."""

from __future__ import annotations

import json
import time
from functools import partial
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request

from token_service.api.browser import current_session, require_csrf
from token_service.errors import InvalidRequest, InvalidToken, MissingToken
from token_service.issuance import IssuedToken, TokenIssuer
from token_service.ratelimit import rate_limit_headers
from token_service.store.base import LimitDecision

bp = Blueprint("tokens", __name__)
MAX_REFRESH_TOKEN_CHARS = 512


def issuer() -> TokenIssuer:
    return current_app.extensions["token_service.issuer"]  # type: ignore[no-any-return]


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


def request_params() -> dict[str, Any]:
    """The body as a dict: a JSON object, or an HTML form (RFC 7009 clients send forms)."""
    if request.mimetype == "application/x-www-form-urlencoded":
        return request.form.to_dict()
    if not request.get_data(cache=True):
        return {}
    if not request.is_json:
        raise InvalidRequest("the body must be JSON (Content-Type: application/json) or a form")
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise InvalidRequest("the body must be a JSON object")
    return body


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


def _rfc3339(epoch: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def _with_limits(resp: Response, limits: LimitDecision) -> Response:
    resp.headers.update(rate_limit_headers(limits))
    return resp


def token_response(issued: IssuedToken) -> Response:
    minted = issued.access
    body = {
        "token": minted.jwt,
        "identity": issued.mapped.identity,
        "role": issued.mapped.role,
        "role_sid": issued.mapped.role_sid,
        "expires_in": minted.expires_at - minted.issued_at,
        "expires_at": _rfc3339(minted.expires_at),
        "refresh_token": issued.refresh_token,
        "refresh_expires_at": _rfc3339(issued.refresh_expires_at),
    }
    # Built directly rather than with jsonify: this is the hot path, and the body is flat.
    resp = Response(json.dumps(body, separators=(",", ":")), mimetype="application/json")
    resp.headers["Cache-Control"] = "no-store"
    resp.headers["Pragma"] = "no-cache"
    return _with_limits(resp, issued.limits)


@bp.post("/v1/token")
def issue_token() -> Response:
    """Bearer proof; or, without one, a signed-in browser's session cookie plus the CSRF proof."""
    found = current_session() if "Authorization" not in request.headers else None
    if found is not None:
        require_csrf()
        mint = partial(issuer().issue_for_session, *found)
    else:
        mint = partial(issuer().issue_for_bearer, bearer_token())
    platform = optional_string(request_params(), "platform")
    return token_response(mint(platform=platform, client_ip=request.remote_addr))


@bp.post("/v1/token/refresh")
def refresh_token() -> Response:
    body = request_params()
    presented = refresh_token_param(body, "refresh_token")
    platform = optional_string(body, "platform")
    issued = issuer().refresh(presented, platform=platform, client_ip=request.remote_addr)
    return token_response(issued)


@bp.post("/v1/token/revoke")
def revoke_token() -> Response:
    """RFC 7009 2.2: 200 whether or not the token was known, once the request is well-formed."""
    body = request_params()
    presented = refresh_token_param(body, "refresh_token", "token")
    optional_string(body, "token_type_hint")  # RFC 7009: a hint only, but it must be a string
    limits = issuer().revoke(presented, client_ip=request.remote_addr)
    resp = jsonify(revoked=True)
    resp.headers["Cache-Control"] = "no-store"
    return _with_limits(resp, limits)
