"""Trusted backend clients minting on someone's behalf, within their allow-lists.

``chat-bot`` proves itself with a real client-credentials access token from the oidc-provider;
``console`` and ``desk`` with RFC 7523 JWTs signed by keys of their own (the test's). Every answer
goes over real HTTP; the audit lines are read as the service writes them.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest

from devidp.harness import ES256_CLIENT_ID, DevIdP, client_credentials_token, generate_keys, public_jwks
from tests.support import (
    RL_ADMIN,
    TWILIO_SECRET,
    RunningService,
    config_dict,
    post_refresh,
    private_key,
    problem,
    rsa,
    running,
    settings_for,
)

pytestmark = pytest.mark.integration

BOT_SECRET = "chat-bot-secret-0123456789abcdef"
BACKEND = {"token_endpoint_auth_method": "client_secret_basic", "grant_types": ["client_credentials"],
           "response_types": [], "redirect_uris": []}
CONSOLE_KEYS = generate_keys()
DESK_KEYS = generate_keys()
PUBLIC_URL = "http://127.0.0.1:8000"  # the configured public URL: an RFC 7523 JWT's audience


@pytest.fixture(scope="module")
def cc_idp() -> Iterator[DevIdP]:
    clients = [{"client_id": "chat-bot", "client_secret": BOT_SECRET, **BACKEND}]
    with DevIdP(keys=generate_keys(), extra_clients=clients) as provider:
        yield provider


def clients_config(idp: DevIdP, tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    data = config_dict(idp.issuer)
    files = {}
    for name, keys in (("console", CONSOLE_KEYS), ("desk", DESK_KEYS)):
        files[name] = tmp_path / f"{name}.jwks.json"
        files[name].write_text(json.dumps(public_jwks(keys)))
    data["trusted_clients"] = [
        {"client_id": "chat-bot", "issuer": "test", "identities": ["support-desk"], "identity_patterns": ["bot-*"],
         "roles": ["user"]},
        {"client_id": "console", "jwks_file": str(files["console"]), "identity_patterns": ["agent-*", "*@example.com"],
         "roles": ["user", "admin"], "refresh_tokens": True},
        {"client_id": "desk", "jwks_file": str(files["desk"]), "identities": ["alice@example.com"],
         "roles": ["admin"]},
    ]
    data.update(overrides)
    return data


@pytest.fixture
def service(cc_idp: DevIdP, tmp_path: Path) -> Iterator[RunningService]:
    with running(settings_for(clients_config(cc_idp, tmp_path))) as svc:
        yield svc


def bot_token(idp: DevIdP) -> str:
    """A real client-credentials access token of chat-bot (a JWT for the service's resource)."""
    return client_credentials_token(idp.issuer, "chat-bot", BOT_SECRET)["access_token"]


def assertion(client: str, keys: list[dict[str, Any]], **claims: Any) -> str:
    """An RFC 7523 JWT the client signs with its own key."""
    now = int(time.time())
    body = {"iss": client, "sub": client, "aud": f"{PUBLIC_URL}/v1/token", "iat": now, "exp": now + 60,
            "jti": secrets.token_urlsafe(12), **claims}
    jwk = rsa(keys)
    return jwt.encode({k: v for k, v in body.items() if v is not None}, private_key(jwk), algorithm="RS256",
                      headers={"kid": jwk["kid"]})


def mint(svc: RunningService, credential: str, identity: str, **body: Any):  # type: ignore[no-untyped-def]
    return svc.post_token(credential, json={"identity": identity, **body})


def twilio_grants(token: str) -> dict[str, Any]:
    return jwt.decode(token, TWILIO_SECRET, algorithms=["HS256"])["grants"]


def test_client_credentials_token_mints_inside_its_allow_list(service: RunningService, cc_idp: DevIdP) -> None:
    for identity in ("bot-7", "support-desk"):
        resp = mint(service, bot_token(cc_idp), identity)
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["identity"] == identity and body["role"] == "user"
        assert "refresh_token" not in body and "refresh_expires_at" not in body  # refresh tokens: off by default
        assert twilio_grants(body["token"])["identity"] == identity


def test_outside_the_allow_list_is_403_with_the_reason(service: RunningService, cc_idp: DevIdP) -> None:
    token = bot_token(cc_idp)
    other = mint(service, token, "alice@example.com")
    assert other.status_code == 403 and problem(other)["type"] == "access_denied"
    assert "outside the allow-list of client 'chat-bot'" in problem(other)["detail"]
    role = mint(service, token, "bot-7", role="admin")
    assert role.status_code == 403 and "may grant: user" in problem(role)["detail"]
    spaced = mint(service, token, "bot- 7")
    assert spaced.status_code == 403 and problem(spaced)["type"] == "invalid_identity"
    reserved = mint(service, token, "bot-#7")
    assert reserved.status_code == 403 and "reserved character" in problem(reserved)["detail"]
    not_a_string = mint(service, token, ["bot-7"])
    assert not_a_string.status_code == 400


def test_every_mint_and_refusal_is_audit_logged_with_client_and_identity(
        service: RunningService, cc_idp: DevIdP, caplog: pytest.LogCaptureFixture) -> None:
    token = bot_token(cc_idp)
    with caplog.at_level(logging.INFO, logger="token_service.audit"):
        jti = jwt.decode(mint(service, token, "bot-audit").json()["token"], options={"verify_signature": False})["jti"]
        mint(service, token, "carol@example.com")
    issued = [r for r in caplog.records if getattr(r, "event", None) == "token_issued"]
    refused = [r for r in caplog.records if getattr(r, "event", None) == "client_mint_refused"]
    assert [(r.client_id, r.identity, r.role, r.jti, r.issuer) for r in issued] == [
        ("chat-bot", "bot-audit", "user", jti, "client:chat-bot")]
    assert [(r.client_id, r.identity) for r in refused] == [("chat-bot", "carol@example.com")]
    assert "allow-list" in refused[0].reason


def test_client_rate_limit_applies_and_spares_other_callers(cc_idp: DevIdP, tmp_path: Path) -> None:
    data = clients_config(cc_idp, tmp_path, rate_limits={"enabled": True})
    data["trusted_clients"][0]["rate_limit"] = {"limit": 2, "window": 60}
    with running(settings_for(data)) as svc:
        token = bot_token(cc_idp)
        for identity in ("bot-1", "bot-2"):
            assert mint(svc, token, identity).status_code == 200
        limited = mint(svc, token, "bot-3")
        assert limited.status_code == 429 and problem(limited)["type"] == "rate_limited"
        assert '"client-client";q=2;w=60' in limited.headers["RateLimit-Policy"]
        assert int(limited.headers["Retry-After"]) >= 1
        # The same client IP signing a user in is not the client's budget.
        assert svc.post_token(cc_idp.login("alice")["id_token"]).status_code == 200
        # Another client has its own budget.
        assert mint(svc, assertion("console", CONSOLE_KEYS), "agent-1").status_code == 200


def test_user_token_issued_to_a_trusted_clients_app_cannot_mint_on_behalf(cc_idp: DevIdP, tmp_path: Path) -> None:
    """A user's access token names the app it was issued to (client_id), but its ``sub`` is the user's:
    it never passes as that app's client credential, even when the app is a trusted client."""
    data = clients_config(cc_idp, tmp_path)
    data["trusted_clients"].append({"client_id": ES256_CLIENT_ID, "issuer": "test", "identity_patterns": ["*"],
                                    "roles": ["admin"]})
    with running(settings_for(data)) as svc:
        users_token = cc_idp.login("alice", client_id=ES256_CLIENT_ID, resource="urn:token-service:api")["access_token"]
        claims = jwt.decode(users_token, options={"verify_signature": False})
        assert claims["client_id"] == ES256_CLIENT_ID and claims["sub"] == "alice"
        resp = mint(svc, users_token, "bob@example.com", role="admin")
        assert resp.status_code == 403 and "not the credential of a trusted client" in problem(resp)["detail"]


def test_client_credential_without_an_identity_is_not_a_sign_in(service: RunningService, cc_idp: DevIdP) -> None:
    resp = service.post_token(bot_token(cc_idp))
    assert resp.status_code == 400 and "send the identity" in problem(resp)["detail"]


def test_rfc7523_assertion_mints_with_a_refresh_token_that_keeps_the_role(service: RunningService) -> None:
    resp = mint(service, assertion("console", CONSOLE_KEYS), "agent-7", role="admin")
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["role"] == "admin" and body["refresh_token"].startswith("rt2.")
    refreshed = post_refresh(service.url, body["refresh_token"])
    assert refreshed.status_code == 200 and refreshed.json()["role"] == "admin"
    assert twilio_grants(refreshed.json()["token"])["chat"]["deployment_role_sid"] == RL_ADMIN


@pytest.mark.parametrize(("claims", "reason"), [
    ({"aud": "https://another-service.example"}, "audience"),
    ({"exp": int(time.time()) + 3600}, "lives too long"),
    ({"exp": int(time.time()) - 600}, "expired"),
    ({"sub": "someone-else"}, "'sub' must be the client's own id"),
    ({"jti": None}, "'jti'"),
])
def test_rfc7523_rules(service: RunningService, claims: dict[str, Any], reason: str) -> None:
    resp = mint(service, assertion("console", CONSOLE_KEYS, **claims), "agent-8")
    assert resp.status_code == 401 and reason in problem(resp)["detail"]


def test_rfc7523_assertion_is_single_use_and_bound_to_its_clients_key(service: RunningService) -> None:
    once = assertion("console", CONSOLE_KEYS)
    assert mint(service, once, "agent-9").status_code == 200
    replay = mint(service, once, "agent-9")
    assert replay.status_code == 401 and "already used" in problem(replay)["detail"]
    borrowed = mint(service, assertion("console", DESK_KEYS), "agent-9")  # desk's key, console's name
    assert borrowed.status_code == 401


def test_client_mint_never_changes_the_role_a_sign_in_set(service: RunningService, cc_idp: DevIdP,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    signed_in = service.post_token(cc_idp.login("alice")["id_token"]).json()
    assert signed_in["role"] == "user"
    # desk (no refresh tokens) may mint alice as admin: that token only.
    desk = mint(service, assertion("desk", DESK_KEYS), "alice@example.com")
    assert desk.status_code == 200 and desk.json()["role"] == "admin" and "refresh_token" not in desk.json()
    refreshed = post_refresh(service.url, signed_in["refresh_token"])
    assert refreshed.json()["role"] == "user"  # the current role is still the sign-in's
    # console's mints carry refresh tokens: a family of alice mints her current role, so no other.
    with caplog.at_level(logging.INFO, logger="token_service.audit"):
        refused = mint(service, assertion("console", CONSOLE_KEYS), "alice@example.com", role="admin")
    assert refused.status_code == 403 and "set by its sign-ins" in problem(refused)["detail"]
    (line,) = [r for r in caplog.records if getattr(r, "event", None) == "client_mint_refused"]
    assert (line.client_id, line.identity, line.role) == ("console", "alice@example.com", "admin")
    same = mint(service, assertion("console", CONSOLE_KEYS), "alice@example.com", role="user")
    assert same.status_code == 200 and same.json()["refresh_token"]
    assert post_refresh(service.url, same.json()["refresh_token"]).json()["role"] == "user"
