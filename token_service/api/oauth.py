"""An OAuth-shaped token endpoint, so standard OAuth client libraries work unchanged (design 2.1, 3).

- ``POST /oauth2/token`` is an RFC 6749 token endpoint with two grants: RFC 8693 token exchange
  (an IdP token in as ``subject_token``, a Twilio Access Token out) and ``refresh_token`` (the
  service's own rotating refresh tokens). Requests are ``application/x-www-form-urlencoded`` with
  no repeated parameter (RFC 6749 3.2); answers are ``{access_token, issued_token_type,
  token_type: "N_A", expires_in, refresh_token}`` (RFC 8693 2.2.1: a Twilio token is not an OAuth
  access token for this server, so its ``token_type`` is ``N_A``), with ``Cache-Control: no-store``.
- Errors are RFC 6749 5.2 JSON (``error``, ``error_description``), rendered here and only here:
  an unacceptable subject token is ``invalid_request`` (RFC 8693 2.2.2 requires it, whatever the
  reason), a refresh token that cannot be used is ``invalid_grant``; limits and outages keep their
  status (429, 503) and ``Retry-After``, with ``temporarily_unavailable``.
- ``GET /.well-known/oauth-authorization-server`` is the RFC 8414 metadata of that endpoint.

The work itself is ``TokenIssuer``'s, the same as ``/v1/token``: the same proofs, mapping, limits,
refresh families and audit lines.
"""

from __future__ import annotations

from typing import Any

import orjson
from flask import Blueprint, Response, current_app, jsonify, request
from werkzeug.exceptions import RequestEntityTooLarge

from token_service.api.body import FORM, request_body
from token_service.api.errors import as_service_error
from token_service.api.observability import record_denial
from token_service.authn.jws import MAX_TOKEN_BYTES
from token_service.errors import InvalidGrant, InvalidRequest, LoginRequired, PayloadTooLarge, ServiceError
from token_service.issuance import IssuedToken, TokenIssuer
from token_service.ratelimit import rate_limit_headers
from token_service.settings import Settings

bp = Blueprint("oauth", __name__)

TOKEN_PATH = "/oauth2/token"
METADATA_PATH = "/.well-known/oauth-authorization-server"
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
REFRESH_TOKEN = "refresh_token"
# RFC 8693 3: the subject token types accepted; a JWT access token may be sent as either of the last two.
ID_TOKEN = "urn:ietf:params:oauth:token-type:id_token"
JWT = "urn:ietf:params:oauth:token-type:jwt"
ACCESS_TOKEN = "urn:ietf:params:oauth:token-type:access_token"
SUBJECT_TOKEN_TYPES = (ID_TOKEN, JWT, ACCESS_TOKEN)
# The type of what this endpoint issues. This service's own URN (not an IANA-registered one); a
# Twilio Access Token is a JWT, so ``requested_token_type`` may also ask for ``JWT``.
TWILIO_ACCESS_TOKEN = "urn:x-token-service:token-type:twilio-access-token"
ISSUED_TOKEN_TYPES = (TWILIO_ACCESS_TOKEN, JWT)
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


class OAuthError(Exception):
    """An RFC 6749 5.2 error this endpoint itself finds (the rest come from ``ServiceError``)."""

    def __init__(self, error: str, description: str) -> None:
        super().__init__(description)
        self.error = error
        self.description = description


def _issuer() -> TokenIssuer:
    return current_app.extensions["token_service.issuer"]  # type: ignore[no-any-return]


def _settings() -> Settings:
    return current_app.extensions["token_service.settings"]  # type: ignore[no-any-return]


def form_parameters() -> dict[str, str]:
    """The request's form parameters: RFC 6749 3.2's encoding, each parameter at most once (3.1)."""
    if request_body() and request.mimetype != FORM:
        raise OAuthError("invalid_request", "send the parameters as application/x-www-form-urlencoded "
                                            "(RFC 6749 3.2)")
    params: dict[str, str] = {}
    for name, values in request.form.lists():
        if len(values) > 1:
            raise OAuthError("invalid_request", f"the parameter {name!r} is repeated (RFC 6749 3.1)")
        if len(values[0]) > MAX_TOKEN_BYTES:
            raise OAuthError("invalid_request", f"the parameter {name!r} is too long")
        params[name] = values[0]
    return params


def _required(params: dict[str, str], name: str) -> str:
    value = params.get(name)
    if not value:
        raise OAuthError("invalid_request", f"the {name!r} parameter is required")
    return value


def _one_of(params: dict[str, str], name: str, accepted: tuple[str, ...], *, default: str | None = None) -> str:
    value = params.get(name) or default
    if value not in accepted:
        raise OAuthError("invalid_request", f"{name} must be one of: {', '.join(accepted)}")
    return value


def exchange(params: dict[str, str], issuer: TokenIssuer) -> tuple[IssuedToken, str]:
    """RFC 8693: the subject token is the proof, as a bearer token is on ``/v1/token``."""
    subject_token = _required(params, "subject_token")
    subject_type = _one_of(params, "subject_token_type", SUBJECT_TOKEN_TYPES)
    issued_type = _one_of(params, "requested_token_type", ISSUED_TOKEN_TYPES, default=TWILIO_ACCESS_TOKEN)
    if "actor_token" in params or "actor_token_type" in params:
        raise OAuthError("invalid_request", "delegation (actor_token) is not supported: send only the subject token")
    if subject_type != ACCESS_TOKEN and subject_token.count(".") != 2:
        raise OAuthError("invalid_request", "the subject_token is not a JWT, as its subject_token_type says")
    issued = issuer.issue_for_bearer(subject_token, platform=params.get("platform"), client_ip=request.remote_addr)
    return issued, issued_type


def refresh(params: dict[str, str], issuer: TokenIssuer) -> tuple[IssuedToken, str]:
    """RFC 6749 6: rotate the service's own refresh token, as ``/v1/token/refresh`` does."""
    presented = _required(params, "refresh_token")
    issued = issuer.refresh(presented, platform=params.get("platform"), client_ip=request.remote_addr)
    return issued, TWILIO_ACCESS_TOKEN


GRANTS = {TOKEN_EXCHANGE: exchange, REFRESH_TOKEN: refresh}


def _answer(issued: IssuedToken, issued_type: str) -> Response:
    minted = issued.access
    body: dict[str, Any] = {
        "access_token": minted.jwt,
        "issued_token_type": issued_type,
        "token_type": "N_A",
        "expires_in": minted.expires_at - minted.issued_at,
    }
    if issued.refresh_token:
        body["refresh_token"] = issued.refresh_token
    headers = {**_NO_STORE, **rate_limit_headers(issued.limits)}
    return Response(orjson.dumps(body), status=200, mimetype="application/json", headers=headers)


def _error_code(err: ServiceError, grant: str) -> str:
    """The RFC 6749 5.2 ``error`` for what the service refused, by grant."""
    if err.status >= 500 and err.type != "unavailable":
        return "server_error"
    if err.status in (429, 503):
        return "temporarily_unavailable"
    if grant == REFRESH_TOKEN and isinstance(err, InvalidGrant | LoginRequired):
        return "invalid_grant"
    return "invalid_request"  # RFC 8693 2.2.2: a subject token invalid, or unacceptable by policy


def _ascii(text: str) -> str:
    """RFC 6749 5.2: ``error_description`` is printable ASCII without ``"`` and ``\\``."""
    return "".join(c if " " <= c <= "~" and c not in '"\\' else "'" for c in text)


def error_response(exc: Exception, grant: str) -> Response:
    """Every failure of ``/oauth2/token``: RFC 6749 5.2 JSON, never a trace, never an echoed token."""
    if isinstance(exc, RequestEntityTooLarge):
        exc = PayloadTooLarge("the request body is too large")
    if isinstance(exc, OAuthError):
        err: ServiceError = InvalidRequest(exc.description)
        code, status, description = exc.error, 400, exc.description
    else:
        err = as_service_error(exc, store_retry_after=_settings().store.retry_after)
        code, status, description = _error_code(err, grant), err.status, err.detail
        if status in (401, 403):
            status = 400  # RFC 6749 5.2: 401 belongs to client authentication, which this endpoint has none of
    record_denial(TOKEN_PATH, err, request.remote_addr)
    headers = {**_NO_STORE, **{k: v for k, v in err.headers.items() if k != "WWW-Authenticate"}}
    body = orjson.dumps({"error": code, "error_description": _ascii(description)})
    return Response(body, status=status, mimetype="application/json", headers=headers)


@bp.post(TOKEN_PATH)
def token() -> Response:
    grant = ""
    try:
        params = form_parameters()
        grant = _required(params, "grant_type")
        handler = GRANTS.get(grant)
        if handler is None:
            raise OAuthError("unsupported_grant_type", f"grant_type must be one of: {', '.join(GRANTS)}")
        return _answer(*handler(params, _issuer()))
    except Exception as exc:  # noqa: BLE001 - every failure leaves as an RFC 6749 error
        return error_response(exc, grant)


def metadata_document(public_url: str) -> dict[str, Any]:
    """RFC 8414 2: what a client needs to find and use the token endpoint."""
    base = public_url.rstrip("/")
    return {
        "issuer": base,
        "token_endpoint": base + TOKEN_PATH,
        "grant_types_supported": list(GRANTS),
        "token_endpoint_auth_methods_supported": ["none"],
        "response_types_supported": [],
        "revocation_endpoint": base + "/v1/token/revoke",
        "revocation_endpoint_auth_methods_supported": ["none"],
        "service_documentation": base + "/openapi.json",
    }


@bp.get(METADATA_PATH)
def metadata() -> Response:
    return jsonify(metadata_document(_settings().server.public_url))
