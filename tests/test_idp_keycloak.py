"""Keycloak: access tokens with no ``aud`` or only ``account`` (``azp`` names the client), and
client roles under ``resource_access`` for a client id holding dots (a JSON Pointer).

Shapes from Keycloak's tokens: header ``alg``/``typ: JWT``/``kid``; access tokens with ``typ``
``Bearer``, ``azp``, ``aud`` ``account``, ``realm_access``, ``resource_access``, ``scope``,
``sid``, ``preferred_username``, ``email_verified``; ID tokens with ``typ`` ``ID`` and ``aud``
the client id.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.support import problem
from tests.vendor_support import KeyServer, sign, times, vendor_service

pytestmark = pytest.mark.integration

ISSUER = "https://sso.example.com/realms/chat"


def access_token(keys: KeyServer, **claims: Any) -> str:
    body = {**times(), "jti": "d58f5dc8-fd8f-462b-8a19-716f8f83985b", "iss": ISSUER, "aud": "account",
            "sub": "36fa0f91-f94d-4a0c-afed-6b7d952e47da", "typ": "Bearer", "azp": "chat-app",
            "session_state": "2a88c258-f73a-4103-b862-e1fbd8f4e04e", "acr": "1",
            "allowed-origins": ["https://chat.example.com"],
            "realm_access": {"roles": ["offline_access", "default-roles-chat", "uma_authorization"]},
            "resource_access": {"account": {"roles": ["manage-account", "view-profile"]}},
            "scope": "openid email profile", "sid": "2a88c258-f73a-4103-b862-e1fbd8f4e04e", "email_verified": True,
            "name": "Ada Lovelace", "preferred_username": "ada", "given_name": "Ada", "family_name": "Lovelace",
            "email": "ada@example.com", **claims}
    return sign(keys.key, {k: v for k, v in body.items() if v is not None}, {"typ": "JWT"})


def test_access_tokens_through_azp_with_no_audience_or_only_account() -> None:
    with vendor_service("keycloak") as (svc, keys):
        for aud in ("account", None, ["account"]):
            resp = svc.post_token(access_token(keys, aud=aud))
            assert resp.status_code == 200, (aud, resp.text)
            assert resp.json()["identity"] == "ada@example.com"
        id_token = access_token(keys, typ="ID", aud="chat-app", at_hash="x")
        assert svc.post_token(id_token).status_code == 200  # ID tokens: by audience, as usual


@pytest.mark.parametrize(
    ("claims", "detail"),
    [
        ({"azp": "another-app"}, "audience"),
        ({"aud": ["account", "billing-api"]}, "audience"),  # meant for another service as well
        ({"typ": "Refresh"}, "'typ' claim"),
        ({"azp": None}, "audience"),
    ],
)
def test_access_tokens_for_other_clients_or_uses_are_refused(claims: dict[str, Any], detail: str) -> None:
    with vendor_service("keycloak") as (svc, keys):
        resp = svc.post_token(access_token(keys, **claims))
        assert resp.status_code == 401 and detail in problem(resp)["detail"], resp.text


def test_client_roles_of_a_client_id_with_dots_by_json_pointer() -> None:
    with vendor_service("keycloak") as (svc, keys):
        roles = {"account": {"roles": ["view-profile"]}, "chat.example.com": {"roles": ["admin"]}}
        resp = svc.post_token(access_token(keys, resource_access=roles))
        assert resp.json()["role"] == "admin"
        # A top-level claim that merely looks like the dotted path does not count.
        fake = access_token(keys, **{"resource_access.chat.example.com.roles": ["admin"]})
        assert svc.post_token(fake).json()["role"] == "user"
