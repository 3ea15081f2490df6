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
from hypothesis import HealthCheck, settings

from devidp.harness import generate_keys, public_jwks
from tests.support import config_dict, forge, id_claims, rsa, settings_for
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
    headers = {}
    if "Authorization" not in (case.headers or {}):  # a valid proof, so the 200 paths are fuzzed too
        headers["Authorization"] = "Bearer " + forge(rsa(KEYS), id_claims(ISSUER))
    case.call_and_validate(headers=headers)


def test_document_lists_every_route() -> None:
    raw = schema.raw_schema
    assert raw["openapi"] == "3.1.0"
    assert set(raw["paths"]) == {
        "/v1/token", "/v1/token/refresh", "/v1/token/revoke", "/healthz", "/readyz", "/metrics", "/openapi.json",
    }
    assert raw["components"]["schemas"]["TokenRequest"]["properties"]["platform"]["enum"] == ["android", "ios", "web"]


def test_every_flask_route_is_documented(tmp_path: Path) -> None:
    app = create_app(settings_for(config_dict(ISSUER)))
    routes = {rule.rule for rule in app.url_map.iter_rules() if rule.endpoint != "static"}
    documented = set(app.extensions["token_service.openapi"]["paths"])
    assert routes == documented
