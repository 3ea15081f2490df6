"""``POST /v1/token`` happy paths over real HTTP with tokens from the real oidc-provider."""

from __future__ import annotations

import json
import time

import jwt
import pytest
import requests

from devidp.harness import DevIdP
from tests.support import (
    ACCOUNT_SID,
    API_KEY_SID,
    CR_IOS,
    RL_ADMIN,
    RL_USER,
    SERVICE_SID,
    TWILIO_SECRET,
    RunningService,
    post_refresh,
    post_revoke,
    problem,
)

pytestmark = pytest.mark.integration


def decode_twilio(token: str) -> dict:
    return jwt.decode(token, TWILIO_SECRET, algorithms=["HS256"])


def test_rs256_id_token_gets_a_twilio_token(idp: DevIdP, service: RunningService) -> None:
    id_token = idp.login("alice")["id_token"]
    assert jwt.get_unverified_header(id_token)["alg"] == "RS256"
    resp = service.post_token(id_token)
    assert resp.status_code == 200, resp.text
    assert resp.headers["Cache-Control"] == "no-store"
    body = resp.json()
    assert set(body) == {
        "token", "identity", "role", "role_sid", "expires_in", "expires_at", "refresh_token", "refresh_expires_at",
    }
    assert body["refresh_token"].startswith("rt2.")
    assert (body["identity"], body["role"], body["role_sid"]) == ("alice@example.com", "user", RL_USER)
    assert body["expires_in"] == 900
    claims = decode_twilio(body["token"])
    assert claims["iss"] == API_KEY_SID and claims["sub"] == ACCOUNT_SID
    assert claims["grants"] == {
        "identity": "alice@example.com",
        "chat": {"service_sid": SERVICE_SID, "deployment_role_sid": RL_USER},
    }
    assert claims["exp"] - claims["iat"] == 900
    assert abs(claims["iat"] - time.time()) < 30
    assert time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(claims["exp"])) == body["expires_at"]


def test_es256_id_token_and_admin_role(idp: DevIdP, service: RunningService) -> None:
    id_token = idp.login("bob", client_id="token-service-es256")["id_token"]
    assert jwt.get_unverified_header(id_token)["alg"] == "ES256"
    resp = service.post_token(id_token)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert (body["identity"], body["role"], body["role_sid"]) == ("bob@example.com", "admin", RL_ADMIN)
    assert decode_twilio(body["token"])["grants"]["chat"]["deployment_role_sid"] == RL_ADMIN


def test_jwt_access_token_from_resource_indicators(idp: DevIdP, service: RunningService) -> None:
    tokens = idp.login("bob", resource=idp.resource)
    access_token = tokens["access_token"]
    assert jwt.get_unverified_header(access_token)["typ"] == "at+jwt"
    resp = service.post_token(access_token)
    assert resp.status_code == 200, resp.text
    assert resp.json()["identity"] == "bob@example.com"
    assert resp.json()["role"] == "admin"


def test_platform_selects_the_push_credential(idp: DevIdP, service: RunningService) -> None:
    id_token = idp.login("alice")["id_token"]
    ios = service.post_token(id_token, json={"platform": "ios"})
    assert ios.status_code == 200, ios.text
    assert decode_twilio(ios.json()["token"])["grants"]["chat"]["push_credential_sid"] == CR_IOS
    android = service.post_token(id_token, json={"platform": "android"})
    assert "push_credential_sid" not in decode_twilio(android.json()["token"])["grants"]["chat"]
    bad = service.post_token(id_token, json={"platform": "blackberry"})
    assert bad.status_code == 400 and problem(bad)["type"] == "invalid_request"


def test_every_token_has_a_unique_jti(idp: DevIdP, service: RunningService) -> None:
    id_token = idp.login("alice")["id_token"]
    jtis = {decode_twilio(service.post_token(id_token).json()["token"])["jti"] for _ in range(5)}
    assert len(jtis) == 5
    assert all(j.startswith(API_KEY_SID + "-") for j in jtis)


def test_unverified_email_is_refused(idp: DevIdP, service: RunningService) -> None:
    resp = service.post_token(idp.login("carol")["id_token"])
    assert resp.status_code == 403
    body = problem(resp)
    assert body["type"] == "invalid_identity" and "not verified" in body["detail"]


def test_health_and_readiness(service: RunningService, idp: DevIdP) -> None:
    assert service.get("/healthz").json() == {"status": "ok"}
    ready = service.get("/readyz")
    assert ready.status_code == 200
    state = ready.json()
    assert state["status"] == "ok"
    assert state["issuers"]["test"]["state"] == "fresh"
    assert state["issuers"]["test"]["keys"] == len(idp.keys)
    assert state["issuers"]["test"]["age_seconds"] >= 0


def test_unknown_paths_and_methods_are_problems(service: RunningService) -> None:
    missing = service.get("/nope")
    assert missing.status_code == 404 and problem(missing)["type"] == "not_found"
    wrong = service.get("/v1/token")
    assert wrong.status_code == 405 and problem(wrong)["type"] == "method_not_allowed"
    assert "POST" in wrong.headers["Allow"]


def test_plain_options_lists_the_methods(service: RunningService) -> None:
    resp = requests.options(f"{service.url}/v1/token/refresh", timeout=10)
    assert resp.status_code == 204 and resp.content == b""
    assert resp.headers["Allow"] == "POST, OPTIONS"
    assert resp.headers["X-Request-ID"]


def test_chunked_bodies_are_read_and_bounded(idp: DevIdP, service: RunningService) -> None:
    """No Content-Length (Transfer-Encoding: chunked): read to the end, and refused past the limit."""
    first = service.post_token(idp.login("alice")["id_token"]).json()

    def chunks(data: bytes):  # type: ignore[no-untyped-def]
        yield from (data[i:i + 7] for i in range(0, len(data), 7))

    body = json.dumps({"refresh_token": first["refresh_token"]}).encode()
    ok = requests.post(f"{service.url}/v1/token/refresh", data=chunks(body), timeout=10,
                       headers={"Content-Type": "application/json"})
    assert ok.status_code == 200, ok.text
    assert "Content-Length" not in ok.request.headers
    huge = requests.post(f"{service.url}/v1/token/refresh", data=chunks(b" " * 70000 + body), timeout=10,
                         headers={"Content-Type": "application/json"})
    assert huge.status_code == 413 and problem(huge)["type"] == "invalid_request"


def _assert_complete(resp: requests.Response, content_type: str) -> None:
    """What every answer of the WSGI handler carries, as Flask's answers do."""
    assert resp.headers["Content-Type"] == content_type
    assert int(resp.headers["Content-Length"]) == len(resp.content)
    assert resp.headers["Cache-Control"] == "no-store"
    assert len(resp.headers["X-Request-ID"]) == 32
    assert resp.headers["Vary"] == "Origin"


def test_every_answer_of_the_token_endpoints_is_complete(idp: DevIdP, service: RunningService) -> None:
    """Answers and problems of all three endpoints: type, length, no-store, request id, Vary."""
    issued = service.post_token(idp.login("alice")["id_token"])
    assert issued.status_code == 200, issued.text
    _assert_complete(issued, "application/json")
    refreshed = post_refresh(service.url, issued.json()["refresh_token"])
    assert refreshed.status_code == 200, refreshed.text
    _assert_complete(refreshed, "application/json")
    revoked = post_revoke(service.url, refreshed.json()["refresh_token"])
    assert revoked.status_code == 200, revoked.text
    _assert_complete(revoked, "application/json")
    # The body is read before the bearer token is verified (the cheap check first): 400 everywhere.
    for path in ("/v1/token", "/v1/token/refresh", "/v1/token/revoke"):
        resp = requests.post(f"{service.url}{path}", data=b"{not json", timeout=10,
                             headers={"Content-Type": "application/json", "Authorization": "Bearer x.y.z"})
        assert (resp.status_code, problem(resp)["type"]) == (400, "invalid_request"), path
        _assert_complete(resp, "application/problem+json")
    unverified = service.post_token("x.y.z")
    assert (unverified.status_code, problem(unverified)["type"]) == (401, "invalid_token")
    _assert_complete(unverified, "application/problem+json")
