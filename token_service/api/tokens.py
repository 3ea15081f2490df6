"""``POST /v1/token``: bearer proof in, Twilio Access Token out (design section 3)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request

from token_service.errors import InvalidRequest, InvalidToken, MissingToken
from token_service.issuance import IssuedToken, TokenIssuer

bp = Blueprint("tokens", __name__)


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


def json_body() -> dict[str, Any]:
    """The optional JSON object body; an empty body is an empty object."""
    if not request.get_data(cache=True):
        return {}
    if not request.is_json:
        raise InvalidRequest("the body must be JSON (Content-Type: application/json)")
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise InvalidRequest("the body must be a JSON object")
    return body


def optional_string(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is not None and not isinstance(value, str):
        raise InvalidRequest(f"'{name}' must be a string")
    return value


def token_response(issued: IssuedToken) -> Response:
    minted = issued.access
    expires_at = datetime.fromtimestamp(minted.expires_at, UTC).isoformat().replace("+00:00", "Z")
    resp = jsonify(
        token=minted.jwt,
        identity=issued.mapped.identity,
        role=issued.mapped.role,
        role_sid=issued.mapped.role_sid,
        expires_in=minted.expires_at - minted.issued_at,
        expires_at=expires_at,
    )
    resp.headers["Cache-Control"] = "no-store"
    resp.headers["Pragma"] = "no-cache"
    return resp


@bp.post("/v1/token")
def issue_token() -> Response:
    token = bearer_token()
    platform = optional_string(json_body(), "platform")
    issuer: TokenIssuer = current_app.extensions["token_service.issuer"]
    issued = issuer.issue_for_bearer(token, platform=platform, client_ip=request.remote_addr)
    return token_response(issued)
