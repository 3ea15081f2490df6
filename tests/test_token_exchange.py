"""``POST /oauth2/token`` driven by a real OAuth client library (Authlib's ``OAuth2Session``).

The client finds the token endpoint through the RFC 8414 metadata, exchanges a real ID token and a
real access token from the oidc-provider (RFC 8693), refreshes, and meets every error answer as
Authlib reports it (RFC 6749 5.2). The service runs over real HTTP.
"""

from __future__ import annotations

from collections.abc import Iterator

import jwt
import pytest
import requests
from authlib.integrations.requests_client import OAuth2Session, OAuthError

from devidp.harness import DevIdP
from tests.support import (
    RL_ADMIN,
    TWILIO_SECRET,
    RunningService,
    config_dict,
    forge,
    id_claims,
    running,
    settings_for,
)
from token_service.api.oauth import ACCESS_TOKEN, ID_TOKEN, JWT, TOKEN_EXCHANGE, TWILIO_ACCESS_TOKEN

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def exchange_service(idp: DevIdP) -> Iterator[RunningService]:
    with running(settings_for(config_dict(idp.issuer))) as svc:
        yield svc


@pytest.fixture
def client() -> Iterator[OAuth2Session]:
    """A public client, as a single-page or mobile app would configure Authlib."""
    with OAuth2Session(client_id="chat-app", token_endpoint_auth_method="none") as session:
        yield session


def token_endpoint(svc: RunningService) -> str:
    metadata = requests.get(f"{svc.url}/.well-known/oauth-authorization-server", timeout=10).json()
    assert metadata["issuer"] == svc.settings.server.public_url.rstrip("/")
    assert TOKEN_EXCHANGE in metadata["grant_types_supported"] and "refresh_token" in metadata["grant_types_supported"]
    # The configured public URL names the endpoint; this test reaches it on its own port.
    assert metadata["token_endpoint"].endswith("/oauth2/token")
    return f"{svc.url}/oauth2/token"


def twilio_claims(access_token: str) -> dict:
    return jwt.decode(access_token, TWILIO_SECRET, algorithms=["HS256"])


def exchange(client: OAuth2Session, url: str, subject_token: str, subject_type: str = ID_TOKEN, **params: str) -> dict:
    return dict(client.fetch_token(url, grant_type=TOKEN_EXCHANGE, subject_token=subject_token,
                                   subject_token_type=subject_type, **params))


def test_exchange_an_id_token_then_refresh(exchange_service: RunningService, idp: DevIdP,
                                           client: OAuth2Session) -> None:
    url = token_endpoint(exchange_service)
    token = exchange(client, url, idp.login("bob")["id_token"])
    assert token["issued_token_type"] == TWILIO_ACCESS_TOKEN
    assert token["token_type"] == "N_A"
    assert 180 <= token["expires_in"] <= 86400
    assert token["refresh_token"].startswith("rt2.")
    grants = twilio_claims(token["access_token"])["grants"]
    assert grants["identity"] == "bob@example.com" and grants["chat"]["deployment_role_sid"] == RL_ADMIN

    refreshed = dict(client.refresh_token(url, refresh_token=token["refresh_token"]))
    assert refreshed["refresh_token"] != token["refresh_token"]
    assert twilio_claims(refreshed["access_token"])["grants"]["identity"] == "bob@example.com"
    assert refreshed["token_type"] == "N_A"


def test_exchange_a_jwt_access_token(exchange_service: RunningService, idp: DevIdP, client: OAuth2Session) -> None:
    access_token = idp.login("alice", resource="urn:token-service:api")["access_token"]
    for subject_type in (ACCESS_TOKEN, JWT):
        token = exchange(client, token_endpoint(exchange_service), access_token, subject_type,
                         requested_token_type=JWT, platform="ios")
        assert token["issued_token_type"] == JWT
        chat = twilio_claims(token["access_token"])["grants"]["chat"]
        assert chat["push_credential_sid"].startswith("CR")


def oauth_error(call) -> OAuthError:  # type: ignore[no-untyped-def]
    with pytest.raises(OAuthError) as caught:
        call()
    return caught.value


def test_error_answers_as_a_client_library_sees_them(exchange_service: RunningService, idp: DevIdP,
                                                     client: OAuth2Session) -> None:
    url = token_endpoint(exchange_service)
    forged = forge({**idp.keys[0], "kid": "attacker"}, id_claims(idp.issuer))
    bad = oauth_error(lambda: exchange(client, url, forged))
    assert bad.error == "invalid_request"  # RFC 8693 2.2.2: an invalid subject token
    unverified = oauth_error(lambda: exchange(client, url, idp.login("carol")["id_token"]))
    assert unverified.error == "invalid_request" and "not verified" in unverified.description
    wrong_type = oauth_error(lambda: exchange(client, url, "opaque-token", ID_TOKEN))
    assert wrong_type.error == "invalid_request" and "not a JWT" in wrong_type.description
    saml = oauth_error(lambda: exchange(client, url, "x.y.z", "urn:ietf:params:oauth:token-type:saml2"))
    assert saml.error == "invalid_request" and "subject_token_type" in saml.description
    missing = oauth_error(lambda: client.fetch_token(url, grant_type=TOKEN_EXCHANGE, subject_token_type=ID_TOKEN))
    assert missing.error == "invalid_request" and "subject_token" in missing.description
    grant = oauth_error(lambda: client.fetch_token(url, grant_type="password", username="a", password="b"))
    assert grant.error == "unsupported_grant_type"
    spent = exchange(client, url, idp.login("alice")["id_token"])["refresh_token"]
    client.refresh_token(url, refresh_token=spent)
    client.refresh_token(url, refresh_token=client.token["refresh_token"])  # the successor is used
    reused = oauth_error(lambda: client.refresh_token(url, refresh_token=spent))
    assert reused.error == "invalid_grant"
    made_up = oauth_error(lambda: client.refresh_token(url, refresh_token="rt2." + "A" * 80))
    assert made_up.error == "invalid_grant"


def test_malformed_requests_get_rfc6749_errors_without_echo(exchange_service: RunningService, idp: DevIdP) -> None:
    url = f"{exchange_service.url}/oauth2/token"
    id_token = idp.login("alice")["id_token"]
    answers = [
        requests.post(url, json={"grant_type": TOKEN_EXCHANGE, "subject_token": id_token,
                                 "subject_token_type": ID_TOKEN}, timeout=10),  # JSON, not a form
        requests.post(url, data=[("grant_type", TOKEN_EXCHANGE), ("subject_token", id_token),
                                 ("subject_token", id_token), ("subject_token_type", ID_TOKEN)], timeout=10),
        requests.post(url, data={"grant_type": TOKEN_EXCHANGE, "subject_token": id_token,
                                 "subject_token_type": ID_TOKEN, "actor_token": id_token,
                                 "actor_token_type": ID_TOKEN}, timeout=10),
        requests.post(url, data={}, timeout=10),
        requests.post(url, data={"grant_type": TOKEN_EXCHANGE, "subject_token": id_token[:-4] + "AAAA",
                                 "subject_token_type": ID_TOKEN}, timeout=10),
    ]
    for resp in answers:
        assert resp.status_code == 400, resp.text
        assert resp.headers["Content-Type"] == "application/json"
        assert resp.headers["Cache-Control"] == "no-store"
        body = resp.json()
        assert set(body) == {"error", "error_description"} and body["error"] == "invalid_request"
        assert id_token.split(".")[1] not in resp.text
    too_large = requests.post(url, data={"grant_type": TOKEN_EXCHANGE, "subject_token": "x" * 70_000}, timeout=10)
    assert too_large.status_code == 413 and too_large.json()["error"] == "invalid_request"


def test_rate_limit_and_outage_keep_their_status_and_retry_after(idp: DevIdP, client: OAuth2Session) -> None:
    data = config_dict(idp.issuer)
    data["rate_limits"] = {"policies": [{"endpoint": "token", "key": "identity", "limit": 1, "window": 60}]}
    with running(settings_for(data)) as svc:
        url = token_endpoint(svc)
        id_token = idp.login("dave")["id_token"]
        exchange(client, url, id_token)
        resp = requests.post(url, data={"grant_type": TOKEN_EXCHANGE, "subject_token": id_token,
                                        "subject_token_type": ID_TOKEN}, timeout=10)
        assert resp.status_code == 429 and resp.json()["error"] == "temporarily_unavailable"
        assert int(resp.headers["Retry-After"]) >= 1 and "token-identity" in resp.headers["RateLimit-Policy"]
