"""Opaque access tokens against the real oidc-provider: RFC 7662 introspection and OIDC userinfo.

A login without a ``resource`` gets an opaque access token from oidc-provider; the service asks
the provider's introspection endpoint (as a confidential client: secret or ``private_key_jwt``)
and its userinfo endpoint. Calls are counted at the IdP (``/_devidp/stats``).
"""

from __future__ import annotations

import json
import secrets
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from devidp.harness import DevIdP, generate_keys, public_jwks
from tests.support import TWILIO_SECRET, config_dict, problem, rsa, running
from token_service.settings import Settings, settings_from_dict

pytestmark = pytest.mark.integration

SECRET_CLIENT = "token-service-introspect"
SECRET = "introspection-secret-0123456789abcdef"
KEY_CLIENT = "token-service-introspect-pkjwt"
CREDENTIAL_ENV = "TS_TEST_INTROSPECTION_CREDENTIAL"
_KEYS = generate_keys()  # the private_key_jwt client's RSA key
_RESOURCE_SERVER = {"grant_types": [], "response_types": [], "redirect_uris": []}


def _pem() -> str:
    from cryptography.hazmat.primitives import serialization

    from tests.support import private_key

    key = private_key(rsa(_KEYS))
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


@pytest.fixture(scope="module")
def opaque_idp() -> Iterator[DevIdP]:
    extra = [
        {"client_id": SECRET_CLIENT, "client_secret": SECRET, "token_endpoint_auth_method": "client_secret_basic",
         **_RESOURCE_SERVER},
        {"client_id": KEY_CLIENT, "token_endpoint_auth_method": "private_key_jwt",
         "jwks": public_jwks([rsa(_KEYS)]), **_RESOURCE_SERVER},
    ]
    with DevIdP(keys=generate_keys(), extra_clients=extra) as provider:
        yield provider


def opaque_config(idp: DevIdP, **opaque: Any) -> dict[str, Any]:
    data = config_dict(idp.issuer, client_ids=["token-service-dev"])
    data["issuers"][0]["opaque"] = {"checks": ["introspection", "userinfo"], "client_id": SECRET_CLIENT,
                                    "credential_env": CREDENTIAL_ENV, **opaque}
    return data


def settings_with(data: dict[str, Any], monkeypatch: pytest.MonkeyPatch, credential: str = SECRET) -> Settings:
    """Settings whose introspection credential is in the environment, as an operator sets it."""
    monkeypatch.setenv(CREDENTIAL_ENV, credential)
    return settings_from_dict(data, environ={"TWILIO_API_KEY_SECRET": TWILIO_SECRET, CREDENTIAL_ENV: credential})


def opaque_token(idp: DevIdP, user: str = "alice", **login: Any) -> str:
    token = idp.login(user, **login)["access_token"]
    assert token.count(".") != 2, "oidc-provider should issue an opaque access token without a resource"
    return token


def calls(idp: DevIdP) -> tuple[int, int]:
    stats = idp.stats()
    return stats["introspection_requests"], stats["userinfo_requests"]


def dead_url() -> str:
    """A loopback URL where nothing listens: an IdP that is down."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def test_active_opaque_token_gets_a_twilio_token_and_is_cached(opaque_idp: DevIdP, monkeypatch) -> None:
    with running(settings_with(opaque_config(opaque_idp), monkeypatch)) as svc:
        token = opaque_token(opaque_idp, "bob")
        before = calls(opaque_idp)
        resp = svc.post_token(token)
        assert resp.status_code == 200, resp.text
        assert (resp.json()["identity"], resp.json()["role"]) == ("bob@example.com", "admin")  # groups from userinfo
        assert calls(opaque_idp) == (before[0] + 1, before[1] + 1)
        assert svc.post_token(token).status_code == 200
        assert calls(opaque_idp) == (before[0] + 1, before[1] + 1)  # answered from the cache


def test_made_up_token_is_401_and_asked_once(opaque_idp: DevIdP, monkeypatch) -> None:
    with running(settings_with(opaque_config(opaque_idp), monkeypatch)) as svc:
        made_up = secrets.token_urlsafe(32)
        before = calls(opaque_idp)
        for _ in range(3):
            resp = svc.post_token(made_up)
            assert resp.status_code == 401 and problem(resp)["type"] == "invalid_token"
            assert "not active" in problem(resp)["detail"] and made_up not in resp.text
        assert calls(opaque_idp) == (before[0] + 1, before[1])  # inactive: cached, userinfo never asked


def test_token_revoked_at_the_idp_is_refused_once_the_cache_entry_ends(opaque_idp: DevIdP, monkeypatch) -> None:
    with running(settings_with(opaque_config(opaque_idp, cache_ttl=1), monkeypatch)) as svc:
        token = opaque_token(opaque_idp)
        assert svc.post_token(token).status_code == 200
        revoked = requests.post(opaque_idp.discovery()["revocation_endpoint"],
                                data={"token": token, "client_id": "token-service-dev"}, timeout=10)
        assert revoked.status_code == 200
        time.sleep(1.2)  # the cached answer lives cache_ttl seconds
        resp = svc.post_token(token)
        assert resp.status_code == 401 and "not active" in problem(resp)["detail"]
        never_seen = opaque_token(opaque_idp)
        requests.post(opaque_idp.discovery()["revocation_endpoint"],
                      data={"token": never_seen, "client_id": "token-service-dev"}, timeout=10)
        assert svc.post_token(never_seen).status_code == 401


def test_idp_down_is_503_with_retry_after(opaque_idp: DevIdP, monkeypatch, caplog) -> None:
    down = dead_url()
    data = opaque_config(opaque_idp, introspection_endpoint=f"{down}/introspect", userinfo_endpoint=f"{down}/me")
    with running(settings_with(data, monkeypatch)) as svc:
        token = opaque_token(opaque_idp)
        resp = svc.post_token(token)
        assert resp.status_code == 503 and problem(resp)["type"] == "unavailable"
        assert int(resp.headers["Retry-After"]) >= 1
        logged = " ".join(str(record.__dict__) for record in caplog.records)
        assert "opaque_check_failed" in logged and token not in logged
        assert svc.post_token(token).status_code == 503  # a failure is never cached as an answer


def test_flood_of_made_up_tokens_costs_the_idp_a_bounded_number_of_calls(opaque_idp: DevIdP, monkeypatch) -> None:
    data = opaque_config(opaque_idp, lookup_rate=1, lookup_burst=5)
    with running(settings_with(data, monkeypatch)) as svc:
        real = opaque_token(opaque_idp)
        assert svc.post_token(real).status_code == 200
        before = calls(opaque_idp)[0]
        started = time.monotonic()
        statuses = [svc.post_token(secrets.token_urlsafe(32)).status_code for _ in range(60)]
        elapsed = time.monotonic() - started
        made = calls(opaque_idp)[0] - before
        assert set(statuses) <= {401, 503} and statuses.count(503) > 0
        assert made <= 5 + int(elapsed * 1) + 1, (made, elapsed)
        assert statuses.count(401) == made
        throttled = next(r for r in (svc.post_token(secrets.token_urlsafe(32)) for _ in range(10))
                         if r.status_code == 503)
        assert int(throttled.headers["Retry-After"]) >= 1 and problem(throttled)["type"] == "unavailable"
        assert svc.post_token(real).status_code == 200  # a user whose token is cached is not held up


def test_private_key_jwt_client_authentication(opaque_idp: DevIdP, monkeypatch) -> None:
    data = opaque_config(opaque_idp, client_id=KEY_CLIENT, client_auth="private_key_jwt")
    with running(settings_with(data, monkeypatch, credential=_pem())) as svc:
        resp = svc.post_token(opaque_token(opaque_idp))
        assert resp.status_code == 200, resp.text
        assert resp.json()["identity"] == "alice@example.com"


def test_wrong_introspection_credential_is_503_not_a_refusal_of_the_user(opaque_idp: DevIdP, monkeypatch) -> None:
    with running(settings_with(opaque_config(opaque_idp), monkeypatch, credential="not-the-secret")) as svc:
        resp = svc.post_token(opaque_token(opaque_idp))
        assert resp.status_code == 503 and problem(resp)["type"] == "unavailable"


def test_token_issued_to_another_client_is_refused(opaque_idp: DevIdP, monkeypatch) -> None:
    with running(settings_with(opaque_config(opaque_idp), monkeypatch)) as svc:
        token = opaque_token(opaque_idp, client_id="token-service-es256")
        resp = svc.post_token(token)
        assert resp.status_code == 401 and "another client" in problem(resp)["detail"]


def test_userinfo_alone_when_every_client_is_ours(opaque_idp: DevIdP, monkeypatch) -> None:
    data = opaque_config(opaque_idp, checks=["userinfo"], any_client=True)
    del data["issuers"][0]["opaque"]["client_id"], data["issuers"][0]["opaque"]["credential_env"]
    with running(settings_with(data, monkeypatch)) as svc:
        before = calls(opaque_idp)
        assert svc.post_token(opaque_token(opaque_idp, "bob")).json()["role"] == "admin"
        assert svc.post_token(secrets.token_urlsafe(32)).status_code == 401
        assert calls(opaque_idp) == (before[0], before[1] + 2)


def test_a_token_goes_only_to_the_issuer_its_prefix_names(opaque_idp: DevIdP, monkeypatch, tmp_path) -> None:
    """Never send a token to an IdP that did not issue it: that would hand the IdP a credential."""
    down = dead_url()
    jwks = tmp_path / "google.json"
    jwks.write_text(json.dumps(public_jwks(generate_keys())))
    data = opaque_config(opaque_idp)
    data["issuers"].append({
        "name": "google", "issuer": "https://accounts.google.com", "audiences": ["chat.apps.googleusercontent.com"],
        "jwks_file": str(jwks), "identity_claim": "email",
        "opaque": {"checks": ["userinfo"], "any_client": True, "prefix": "ya29.", "userinfo_endpoint": f"{down}/me"},
    })
    with running(settings_with(data, monkeypatch)) as svc:
        before = calls(opaque_idp)
        google_like = "ya29." + secrets.token_urlsafe(40)
        assert svc.post_token(google_like).status_code == 503  # its own issuer is down
        assert calls(opaque_idp) == before  # and the other issuer never saw it
        assert svc.post_token(secrets.token_urlsafe(32)).status_code == 401
        assert calls(opaque_idp)[0] == before[0] + 1


def test_bearers_that_are_not_tokens_never_reach_the_idp(opaque_idp: DevIdP, monkeypatch) -> None:
    with running(settings_with(opaque_config(opaque_idp), monkeypatch)) as svc:
        before = calls(opaque_idp)
        for junk in ["a b", "tok\u00e9n", "x" * 5000, "a.b.c.d.e!"]:
            resp = svc.post_token(None, headers={"Authorization": f"Bearer {junk}".encode()})
            assert resp.status_code in (400, 401), resp.text
        assert calls(opaque_idp) == before
