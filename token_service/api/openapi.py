"""``GET /openapi.json``: the OpenAPI 3.1 description of every endpoint, request, response, error.

Built from the settings (the ``platform`` values are the configured push-credential platforms),
so what is documented is exactly what this deployment accepts; ``tests/test_openapi.py`` fuzzes
the running app against it with schemathesis.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, current_app, jsonify

from token_service import __version__
from token_service.api import oauth
from token_service.authn.browser import return_to_pattern
from token_service.errors import problem_types
from token_service.settings import Settings
from token_service.tokens import refresh

bp = Blueprint("openapi", __name__)

REFRESH_TOKEN = {"type": "string", "pattern": refresh.PATTERN, "description": "An opaque refresh token."}
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


def _browser_paths(settings: Settings) -> dict[str, Any]:
    """``/login`` and friends, present only when browser sign-in is enabled."""
    if not settings.login.enabled:
        return {}
    location = {"Location": {"description": "Where the browser goes next.", **_STRING}}
    paths: dict[str, Any] = {
        "/login": {"get": {
            "operationId": "login",
            "summary": "Start browser sign-in: redirect to the IdP (code flow, PKCE S256, state, nonce).",
            "parameters": [{"name": "return_to", "in": "query", "required": False,
                            "schema": {"type": "string", "pattern": return_to_pattern(settings)},
                            "description": "A path here, or a URL on an allowed origin, to land on afterwards."}],
            "responses": {
                "302": {"description": "To the IdP's authorization endpoint.",
                        "headers": {**COMMON_HEADERS, **location}},
                "400": _problem("return_to is not acceptable (open redirect refused)."),
                "503": _unavailable(),
            },
        }},
        "/callback": {"get": {
            "operationId": "callback",
            "summary": "Finish sign-in: check state, redeem the code with the PKCE verifier, verify the ID token.",
            "parameters": [
                {"name": name, "in": "query", "required": False, "schema": {"type": "string"}}
                for name in ("code", "state", "iss", "error", "error_description", "session_state")
            ],
            "responses": {
                "303": {"description": "Signed in: the session cookie is set.",
                        "headers": {**COMMON_HEADERS, **location,
                                    "Set-Cookie": {"description": "The session cookie.", **_STRING}}},
                "400": _problem("Unknown or expired state, refused or replayed code, nonce mismatch."),
                "401": _problem("The ID token is invalid."),
                "403": _problem("Signed in at the IdP, but no token for this user."),
                "503": _unavailable(),
            },
        }},
        "/logout": {"post": {
            "operationId": "logout",
            "summary": "End the browser session and its refresh families; offer the IdP's end-session URL.",
            "parameters": [
                {"name": "X-Requested-With", "in": "header", "required": True, "schema": {"type": "string"},
                 "description": "CSRF proof: any value; a cross-site form cannot send it."},
            ],
            "responses": {
                "200": {
                    "description": "Signed out.",
                    "headers": COMMON_HEADERS,
                    "content": {"application/json": {"schema": {
                        "type": "object", "required": ["signed_out", "families_revoked", "end_session_url"],
                        "properties": {
                            "signed_out": {"const": True},
                            "families_revoked": {"type": "integer", "minimum": 0},
                            "end_session_url": {"type": ["string", "null"]},
                        },
                    }}},
                },
                "403": _problem("CSRF check failed: missing header or Origin not allowed."),
                "503": _unavailable(),
            },
        }},
        "/backchannel-logout": {"post": {
            "operationId": "backchannelLogout",
            "summary": "OpenID Connect Back-Channel Logout 1.0: the IdP ends a session (sid) or a user (sub).",
            "requestBody": {"required": True, "content": {"application/x-www-form-urlencoded": {"schema": {
                "type": "object", "required": ["logout_token"],
                "properties": {"logout_token": {"type": "string"}},
            }}}},
            "responses": {
                "200": {"description": "The sessions and refresh families of that sid or sub are ended.",
                        "headers": COMMON_HEADERS},
                "400": _problem("The logout token is invalid, or was already used (jti)."),
                "503": _unavailable(),
            },
        }},
    }
    if settings.login.demo_page:
        paths["/demo/"] = {"get": {
            "operationId": "demo",
            "summary": "A demo page: sign in, see identity and role, automatic refresh, sign out.",
            "responses": {"200": {"description": "HTML.", "headers": COMMON_HEADERS,
                                  "content": {"text/html": {"schema": {"type": "string"}}}}},
        }}
    return paths


def _oauth_error(description: str, **headers: dict[str, Any]) -> dict[str, Any]:
    return {
        "description": description,
        "headers": {**COMMON_HEADERS, **headers},
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/OAuthError"}}},
    }


def _oauth_paths(platforms: list[str]) -> dict[str, Any]:
    """``/oauth2/token`` (RFC 6749, RFC 8693) and its RFC 8414 metadata."""
    platform = {"type": "string", "enum": platforms, "description": "Picks the push credential."}
    form = {"oneOf": [
        {
            "title": "RFC 8693 token exchange",
            "type": "object",
            "required": ["grant_type", "subject_token", "subject_token_type"],
            "properties": {
                "grant_type": {"const": oauth.TOKEN_EXCHANGE},
                "subject_token": {"type": "string", "minLength": 1, "description": "The IdP token: the proof."},
                "subject_token_type": {"type": "string", "enum": list(oauth.SUBJECT_TOKEN_TYPES)},
                "requested_token_type": {"type": "string", "enum": list(oauth.ISSUED_TOKEN_TYPES)},
                "platform": platform,
            },
        },
        {
            "title": "RFC 6749 refresh",
            "type": "object",
            "required": ["grant_type", "refresh_token"],
            "properties": {
                "grant_type": {"const": oauth.REFRESH_TOKEN},
                "refresh_token": REFRESH_TOKEN,
                "platform": platform,
            },
        },
    ]}
    retry = {"Retry-After": _retry_after()}
    return {
        oauth.TOKEN_PATH: {"post": {
            "operationId": "oauthToken",
            "summary": "OAuth token endpoint: RFC 8693 token exchange (an IdP token in, a Twilio Access Token out) "
                       "and the refresh_token grant. Errors follow RFC 6749 5.2.",
            "requestBody": {"required": True, "content": {"application/x-www-form-urlencoded": {"schema": form}}},
            "responses": {
                "200": {
                    "description": "The Twilio Access Token (token_type N_A, RFC 8693 2.2.1) and a refresh token.",
                    "headers": {**COMMON_HEADERS, **RATE_HEADERS,
                                "Cache-Control": {"schema": {"type": "string", "const": "no-store"}}},
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/OAuthTokenResponse"}}},
                },
                "400": _oauth_error("invalid_request (a missing or repeated parameter, or a subject token that is "
                                    "invalid or refused by policy: RFC 8693 2.2.2), invalid_grant (the refresh token "
                                    "is spent, revoked, expired or unknown, or the user must sign in again), "
                                    "unsupported_grant_type."),
                "413": _oauth_error("The request body is too large."),
                "429": _oauth_error("temporarily_unavailable: a rate limit is used up.", **retry, **RATE_HEADERS),
                "503": _oauth_error("temporarily_unavailable: the store or the issuer's keys are unreachable.",
                                    **retry),
            },
        }},
        oauth.METADATA_PATH: {"get": {
            "operationId": "oauthMetadata",
            "summary": "RFC 8414 authorization server metadata, for OAuth client libraries.",
            "responses": {"200": {
                "description": "The metadata of the token endpoint.",
                "headers": COMMON_HEADERS,
                "content": {"application/json": {"schema": {
                    "type": "object",
                    "required": ["issuer", "token_endpoint", "grant_types_supported", "response_types_supported"],
                    "properties": {
                        "issuer": {"type": "string"},
                        "token_endpoint": {"type": "string"},
                        "grant_types_supported": {"type": "array", "items": {"type": "string"}},
                        "token_endpoint_auth_methods_supported": {"type": "array", "items": {"type": "string"}},
                        "response_types_supported": {"type": "array", "items": {"type": "string"}},
                    },
                }}},
            }},
        }},
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
                    "summary": "Exchange an IdP ID token or access token (JWT or opaque) for a Twilio Access Token.",
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
                    "parameters": [{
                        "name": "exclude", "in": "query", "style": "form", "explode": True,
                        "description": "Checks to leave out (Kubernetes' readiness probe leaves out both: "
                                       "they are shared by every replica).",
                        "schema": {"type": "array", "items": {"enum": ["store", "issuers"]}},
                    }],
                    "responses": {
                        **{
                            code: {
                                "description": text,
                                "headers": COMMON_HEADERS,
                                "content": {"application/json": {
                                    "schema": {"$ref": "#/components/schemas/Readiness"}}},
                            }
                            for code, text in (("200", "Ready (possibly degraded)."), ("503", "Not ready."))
                        },
                        "400": _problem("An unknown check in exclude."),
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
            **_oauth_paths(platforms),
            **_browser_paths(settings),
        },
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                           "description": "An ID token, a JWT access token (RFC 9068), or an opaque access "
                                          "token checked at its issuer (RFC 7662 introspection, userinfo)."},
            },
            "schemas": {
                "TokenRequest": {
                    "type": "object",
                    "properties": {
                        "platform": {"type": "string", "enum": platforms, "description": "Picks the push credential."},
                        "identity": {"type": "string", "description": "Only for a trusted backend client, whose "
                                     "credential is the bearer: the identity to mint for (within its allow-list)."},
                        "role": {"type": "string", "description": "With identity: the role to grant (one the "
                                 "client may grant; default: its default_role)."},
                    },
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
                    "description": "refresh_token and refresh_expires_at are absent only for a trusted client's "
                                   "mint without refresh tokens.",
                    "required": ["token", "identity", "role", "role_sid", "expires_in", "expires_at"],
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
                "OAuthTokenResponse": {
                    "type": "object",
                    "required": ["access_token", "issued_token_type", "token_type", "expires_in"],
                    "properties": {
                        "access_token": {"type": "string", "description": "The Twilio Access Token (JWT)."},
                        "issued_token_type": {"type": "string", "enum": list(oauth.ISSUED_TOKEN_TYPES)},
                        "token_type": {"const": "N_A"},
                        "expires_in": {"type": "integer", "minimum": 180, "maximum": 86400},
                        "refresh_token": REFRESH_TOKEN,
                    },
                },
                "OAuthError": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {
                        "error": {"type": "string", "enum": ["invalid_request", "invalid_grant",
                                                             "unsupported_grant_type", "temporarily_unavailable",
                                                             "server_error"]},
                        "error_description": {"type": "string"},
                    },
                },
                "Problem": {
                    "type": "object",
                    "required": ["type", "title", "status", "detail"],
                    "properties": {
                        "type": {"type": "string", "enum": problem_types()},
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
                        "excluded": {"type": "array", "items": {"enum": ["store", "issuers"]}},
                    },
                },
            },
        },
    }


@bp.get("/openapi.json")
def openapi() -> Response:
    return jsonify(current_app.extensions["token_service.openapi"])
