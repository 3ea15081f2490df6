"""The OpenAPI description, fuzzed against the app in-process with schemathesis (all checks).

The app gets a static JWKS and a forged-but-valid bearer token, so the fuzzer reaches the 200
paths too, not only the refusals.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
import schemathesis
from flask import Flask
from hypothesis import HealthCheck, settings

from devidp.harness import generate_keys, public_jwks
from tests.support import SERVICE_ENV, config_dict, forge, id_claims, rsa, settings_for
from token_service.api.token_api import PATHS as TOKEN_PATHS
from token_service.app import create_app

pytestmark = pytest.mark.integration
ISSUER = "https://idp.schemathesis.example"
KEYS = generate_keys()


JWKS_DIR = tempfile.TemporaryDirectory(prefix="token-service-openapi-")
JWKS = Path(JWKS_DIR.name) / "jwks.json"
JWKS.write_text(json.dumps(public_jwks(KEYS)))
APP = create_app(settings_for(config_dict(ISSUER, jwks_file=str(JWKS))))
schema = schemathesis.openapi.from_wsgi("/openapi.json", APP)


@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_conforms_to_its_openapi_description(case: schemathesis.Case) -> None:
    from schemathesis.specs.openapi.checks import positive_data_acceptance

    headers = {}
    if "Authorization" not in (case.headers or {}):  # a valid proof, so the 200 paths are fuzzed too
        headers["Authorization"] = "Bearer " + forge(rsa(KEYS), id_claims(ISSUER))
    # RFC 6749 5.2 (and RFC 8693 2.2.2) answer 400 to a grant refused for what no schema can say (a
    # subject token's signature, a spent refresh token): a schema-valid guess is rightly a 400 there.
    excluded = [positive_data_acceptance] if case.path == "/oauth2/token" else []
    case.call_and_validate(headers=headers, excluded_checks=excluded)


def test_document_lists_every_route() -> None:
    raw = schema.raw_schema
    assert raw["openapi"] == "3.1.0"
    assert set(raw["paths"]) == {
        "/v1/token", "/v1/token/refresh", "/v1/token/revoke", "/healthz", "/readyz", "/metrics", "/openapi.json",
        "/oauth2/token", "/.well-known/oauth-authorization-server",
    }
    assert raw["components"]["schemas"]["TokenRequest"]["properties"]["platform"]["enum"] == ["android", "ios", "web"]


def served_paths(app: Flask) -> set[str]:
    """Every path the app answers: the token endpoints in front of Flask (api/token_api.py), the rest Flask's."""
    return {rule.rule for rule in app.url_map.iter_rules() if rule.endpoint != "static"} | TOKEN_PATHS


def test_every_flask_route_is_documented(tmp_path: Path) -> None:
    app = create_app(settings_for(config_dict(ISSUER)))
    assert served_paths(app) == set(app.extensions["token_service.openapi"]["paths"])


LOGIN_ISSUER = "http://127.0.0.1:9"  # nothing listens: discovery fails fast, and /login answers 503


def _login_app():  # type: ignore[no-untyped-def]
    from token_service.settings import settings_from_dict

    data = config_dict(LOGIN_ISSUER, jwks_file=str(JWKS))
    data["server"] = {"public_url": "http://127.0.0.1:8000", "dev_mode": True}
    data["login"] = {"enabled": True, "issuer": "test", "client_id": "token-service-dev",
                     "redirect_uri": "http://127.0.0.1:8000/callback", "demo_page": True}
    return create_app(settings_from_dict(data, environ=SERVICE_ENV))


LOGIN_APP = _login_app()
browser_schema = schemathesis.openapi.from_wsgi("/openapi.json", LOGIN_APP).include(
    path_regex="^/(login|callback|logout|backchannel-logout|demo/)$"
)


@browser_schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_browser_endpoints_conform_to_the_description(case: schemathesis.Case) -> None:
    # Two checks cannot hold here, by design: the IdP is deliberately unreachable, so /login's
    # documented 503 is the right answer; and what these endpoints accept is one-time, server-issued
    # (a login state and code, a signed logout token), so a fuzzer's schema-valid guess is rightly
    # refused with 400. Every other check runs, and a 500 still fails.
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import positive_data_acceptance

    response = case.call_and_validate(excluded_checks=[not_a_server_error, positive_data_acceptance])
    assert response.status_code != 500


def test_browser_routes_are_documented_when_login_is_on() -> None:
    assert served_paths(LOGIN_APP) == set(LOGIN_APP.extensions["token_service.openapi"]["paths"])
