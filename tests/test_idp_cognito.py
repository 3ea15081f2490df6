"""Amazon Cognito user pools: ID tokens (``aud``) and access tokens (``client_id`` + ``token_use``).

Shapes from Cognito's "Understanding the ID token" / "Understanding the access token": header
``kid``/``alg`` (no ``typ``); ID tokens with ``aud``, ``token_use: id``, ``cognito:username``,
``cognito:groups``, ``email_verified``; access tokens with no ``aud``, ``client_id``,
``token_use: access``, ``scope``, ``username``, ``version``.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.support import problem
from tests.vendor_support import KeyServer, sign, times, vendor_service

pytestmark = pytest.mark.integration

ISSUER = "https://cognito-idp.us-east-1.amazonaws.com/us-east-1_EXAMPLE1"
CLIENT = "3example4app5client6id7"
SUB = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"


def id_token(keys: KeyServer, **claims: Any) -> str:
    body = {"sub": SUB, "cognito:groups": ["chat-admins"], "email_verified": True, "iss": ISSUER,
            "cognito:username": "my-test-user", "origin_jti": "bbbbbbbb-cccc-dddd-eeee-ffffffffffff",
            "aud": CLIENT, "event_id": "cccccccc-dddd-eeee-ffff-aaaaaaaaaaaa", "token_use": "id",
            "auth_time": 1672438392, **times(), "jti": "dddddddd-eeee-ffff-aaaa-bbbbbbbbbbbb",
            "email": "my-test-user@example.com", **claims}
    return sign(keys.key, body, {"typ": None})


def access_token(keys: KeyServer, **claims: Any) -> str:
    body = {"sub": SUB, "device_key": "us-east-1_aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee",
            "cognito:groups": ["chat-users"], "iss": ISSUER, "version": 2, "client_id": CLIENT,
            "origin_jti": "bbbbbbbb-cccc-dddd-eeee-ffffffffffff", "event_id": "cccccccc-dddd-eeee-ffff-aaaaaaaaaaaa",
            "token_use": "access", "scope": "openid profile email aws.cognito.signin.user.admin",
            "auth_time": 1672438392, **times(), "jti": "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee",
            "username": "my-test-user", **claims}
    return sign(keys.key, {k: v for k, v in body.items() if v is not None}, {"typ": None})


def test_id_and_access_tokens() -> None:
    with vendor_service("cognito") as (svc, keys):
        by_id = svc.post_token(id_token(keys))
        by_access = svc.post_token(access_token(keys))
        assert by_id.status_code == 200 and by_access.status_code == 200, (by_id.text, by_access.text)
        assert by_id.json()["identity"] == by_access.json()["identity"] == SUB
        assert (by_id.json()["role"], by_access.json()["role"]) == ("admin", "user")


@pytest.mark.parametrize(
    ("claims", "detail"),
    [
        ({"client_id": "another-app-client"}, "audience"),
        ({"token_use": "id"}, "'token_use' claim"),  # an ID token's use, without an aud for us
        ({"client_id": None}, "audience"),
        ({"aud": "another-app-client"}, "audience"),
    ],
)
def test_access_tokens_of_other_clients_or_uses_are_refused(claims: dict[str, Any], detail: str) -> None:
    with vendor_service("cognito") as (svc, keys):
        resp = svc.post_token(access_token(keys, **claims))
        assert resp.status_code == 401 and detail in problem(resp)["detail"], resp.text
