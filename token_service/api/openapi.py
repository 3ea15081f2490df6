"""``GET /openapi.json``: the OpenAPI 3.1 description of every endpoint, request, response, error.

Built from the settings (the ``platform`` values are the configured push-credential platforms),
so what is documented is exactly what this deployment accepts; ``tests/test_openapi.py`` fuzzes
the running app against it with schemathesis.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, current_app, jsonify

from token_service import __version__
from token_service.settings import Settings

bp = Blueprint("openapi", __name__)

PROBLEM_TYPES = [
    "invalid_request", "invalid_token", "invalid_grant", "access_denied", "invalid_identity",
    "rate_limited", "unavailable", "not_found", "method_not_allowed", "internal_error",
]
REFRESH_TOKEN = {"type": "string", "pattern": r"^rt1\.[A-Za-z0-9_-]{75}$", "description": "An opaque refresh token."}
_STRING = {"schema": {"type": "string"}}
RATE_HEADERS = {
    "RateLimit-Policy": {"description": "Every policy that applied (IETF draft).", **_STRING},
    "RateLimit": {"description": "The policy closest to refusing: remaining and reset.", **_STRING},
}
COMMON_HEADERS = {"X-Request-ID": {"description": "This request's id, as in the logs.", **_STRING}}


def _problem(description: str, **headers: dict[str, Any]) -> dict[str, Any]:
    return {
        "description": description,
        "headers": {**COMMON_HEADERS, **headers},
        "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}},
    }


def _retry_after() -> dict[str, Any]:
    return {"description": "Seconds to wait before retrying.", "schema": {"type": "string", "pattern": "^[0-9]+$"}}


def _limited() -> dict[str, Any]:
    return _problem("A rate limit is used up.", **{"Retry-After": _retry_after()}, **RATE_HEADERS)


def _unavailable() -> dict[str, Any]:
    return _problem("The store or the issuer's keys are unreachable.", **{"Retry-After": _retry_after()})


def _token_ok(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "headers": {**COMMON_HEADERS, **RATE_HEADERS,
                    "Cache-Control": {"schema": {"type": "string", "const": "no-store"}}},
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/TokenResponse"}}},
    }


def _body(schema_ref: str, *, required: bool) -> dict[str, Any]:
    schema = {"$ref": f"#/components/schemas/{schema_ref}"}
    return {
        "required": required,
        "content": {"application/json": {"schema": schema}, "application/x-www-form-urlencoded": {"schema": schema}},
    }


def build_openapi(settings: Settings) -> dict[str, Any]:
    """The whole document for this deployment."""
    platforms = sorted({"ios", "android", "web", *settings.twilio.push_credentials})
    www_authenticate = {"description": "RFC 6750 challenge.", **_STRING}
    bad_request = _problem("The request is malformed.")
    too_large = _problem("The request body is too large.")
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "token-service",
            "version": __version__,
            "description": "Exchanges OpenID Connect proof for Twilio Conversations Access Tokens, with "
            "rotating refresh tokens. Errors are RFC 9457 problem details with a stable `type`.",
        },
        "servers": [{"url": settings.server.public_url}],
        "paths": {
            "/v1/token": {
                "post": {
                    "operationId": "issueToken",
                    "summary": "Exchange an IdP ID token or JWT access token for a Twilio Access Token.",
                    "security": [{"bearer": []}],
                    "requestBody": _body("TokenRequest", required=False),
                    "responses": {
                        "200": _token_ok("A Twilio Access Token and a new refresh-token family."),
                        "400": bad_request,
                        "401": _problem("The bearer token is missing or invalid.",
                                        **{"WWW-Authenticate": www_authenticate}),
                        "403": _problem("Authenticated, but no token for this user (access_denied, "
                                        "invalid_identity)."),
                        "413": too_large,
                        "429": _limited(),
                        "503": _unavailable(),
                    },
                }
            },
            "/v1/token/refresh": {
                "post": {
                    "operationId": "refreshToken",
                    "summary": "Rotate a refresh token: a new access token and a new refresh token.",
                    "requestBody": _body("RefreshRequest", required=True),
                    "responses": {
                        "200": _token_ok("A new Twilio Access Token and the next refresh token."),
                        "400": bad_request,
                        "401": _problem("invalid_grant: spent (the family is now revoked), revoked, expired or "
                                        "unknown."),
                        "413": too_large,
                        "429": _limited(),
                        "503": _unavailable(),
                    },
                }
            },
            "/v1/token/revoke": {
                "post": {
                    "operationId": "revokeToken",
                    "summary": "RFC 7009 revocation: end the refresh token's family.",
                    "requestBody": _body("RevokeRequest", required=True),
                    "responses": {
                        "200": {
                            "description": "Revoked, or the token was not known (RFC 7009 2.2).",
                            "headers": {**COMMON_HEADERS, **RATE_HEADERS},
                            "content": {"application/json": {"schema": {
                                "type": "object", "required": ["revoked"],
                                "properties": {"revoked": {"type": "boolean", "const": True}},
                            }}},
                        },
                        "400": bad_request,
                        "413": too_large,
                        "429": _limited(),
                        "503": _unavailable(),
                    },
                }
            },
            "/healthz": {
                "get": {
                    "operationId": "health",
                    "summary": "Liveness: 200 while the process serves.",
                    "responses": {"200": {
                        "description": "Alive.",
                        "headers": COMMON_HEADERS,
                        "content": {"application/json": {"schema": {
                            "type": "object", "required": ["status"],
                            "properties": {"status": {"const": "ok"}},
                        }}},
                    }},
                }
            },
            "/readyz": {
                "get": {
                    "operationId": "ready",
                    "summary": "Readiness: the store and each issuer's signing keys.",
                    "responses": {
                        code: {
                            "description": text,
                            "headers": COMMON_HEADERS,
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Readiness"}}},
                        }
                        for code, text in (("200", "Ready (possibly degraded)."), ("503", "Not ready."))
                    },
                }
            },
            "/metrics": {
                "get": {
                    "operationId": "metrics",
                    "summary": "Prometheus metrics (restrict to the internal network).",
                    "responses": {"200": {
                        "description": "Prometheus text exposition format.",
                        "headers": COMMON_HEADERS,
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }},
                }
            },
            "/openapi.json": {
                "get": {
                    "operationId": "openapi",
                    "summary": "This document.",
                    "responses": {"200": {
                        "description": "OpenAPI 3.1.",
                        "headers": COMMON_HEADERS,
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    }},
                }
            },
        },
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                           "description": "An ID token or JWT access token (RFC 9068) from a trusted issuer."},
            },
            "schemas": {
                "TokenRequest": {
                    "type": "object",
                    "properties": {"platform": {"type": "string", "enum": platforms,
                                                "description": "Picks the push credential."}},
                },
                "RefreshRequest": {
                    "type": "object",
                    "required": ["refresh_token"],
                    "properties": {
                        "refresh_token": REFRESH_TOKEN,
                        "platform": {"type": "string", "enum": platforms},
                    },
                },
                "RevokeRequest": {
                    "type": "object",
                    "description": "`refresh_token` (JSON) or `token` (RFC 7009 form); unknown tokens are fine.",
                    "properties": {
                        "refresh_token": {"type": "string", "minLength": 1, "maxLength": 512},
                        "token": {"type": "string", "minLength": 1, "maxLength": 512},
                        "token_type_hint": {"type": "string"},
                    },
                    "anyOf": [{"required": ["refresh_token"]}, {"required": ["token"]}],
                },
                "TokenResponse": {
                    "type": "object",
                    "required": ["token", "identity", "role", "role_sid", "expires_in", "expires_at",
                                 "refresh_token", "refresh_expires_at"],
                    "properties": {
                        "token": {"type": "string", "description": "The Twilio Access Token (JWT)."},
                        "identity": {"type": "string"},
                        "role": {"type": "string"},
                        "role_sid": {"type": "string", "pattern": "^RL[0-9a-fA-F]{32}$"},
                        "expires_in": {"type": "integer", "minimum": 180, "maximum": 86400},
                        "expires_at": {"type": "string", "format": "date-time"},
                        "refresh_token": REFRESH_TOKEN,
                        "refresh_expires_at": {"type": "string", "format": "date-time"},
                    },
                },
                "Problem": {
                    "type": "object",
                    "required": ["type", "title", "status", "detail"],
                    "properties": {
                        "type": {"type": "string", "enum": PROBLEM_TYPES},
                        "title": {"type": "string"},
                        "status": {"type": "integer"},
                        "detail": {"type": "string"},
                        "error": {"type": "string", "description": "OAuth error code (same as type)."},
                        "error_description": {"type": "string"},
                    },
                },
                "Readiness": {
                    "type": "object",
                    "required": ["status", "store", "issuers"],
                    "properties": {
                        "status": {"enum": ["ok", "degraded", "unavailable"]},
                        "store": {"type": "object"},
                        "issuers": {"type": "object", "additionalProperties": {"type": "object"}},
                    },
                },
            },
        },
    }


@bp.get("/openapi.json")
def openapi() -> Response:
    return jsonify(current_app.extensions["token_service.openapi"])
