"""Okta: the org authorization server's ID token, and a custom server's ID and access tokens.

Shapes from Okta's "Tokens" reference: header ``kid``/``alg`` only; ID tokens with ``ver``,
``jti`` ``ID.…``, ``sub`` the user id (``00u…``), ``amr``, ``idp``, ``auth_time``; custom-server
access tokens with ``jti`` ``AT.…``, ``cid`` (client id), ``uid`` (user id), ``scp`` (a list), and
``sub`` the login.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.support import problem
from tests.vendor_support import KeyServer, sign, times, vendor_service

pytestmark = pytest.mark.integration

CLIENT = "0oa1example2client3id4"
USER_ID = "00uid4BxXw6I6TV4m0g3"


def id_token(keys: KeyServer, issuer: str, **claims: Any) -> str:
    body = {"sub": USER_ID, "name": "John Doe", "email": "john.doe@example.com", "ver": 1, "iss": issuer,
            "aud": CLIENT, **times(), "jti": "ID.4eAWJOCMB3SX8XewDfVR", "amr": ["pwd"],
            "idp": "00ok1u7AsAkrwdZL3z0g3", "nonce": "n-0S6_WzA2Mj", "preferred_username": "john.doe@example.com",
            "auth_time": 1467172278, "at_hash": "preHSdMRaf0qLk_fCtQJQw", **claims}
    return sign(keys.key, body, {"typ": None})


def access_token(keys: KeyServer, issuer: str, **claims: Any) -> str:
    body = {"ver": 1, "jti": "AT.0mP4JKAZX1iACIT4vbEDF7LpvDVjxypPMf0D7uX39RE", "iss": issuer,
            "aud": "api://chat-tokens", "sub": "john.doe@example.com", **times(), "cid": CLIENT, "uid": USER_ID,
            "scp": ["openid", "email"], "auth_time": 1467172278, **claims}
    return sign(keys.key, body, {"typ": None})


def test_org_server_id_token() -> None:
    issuer = "https://dev-123456.okta.com"
    with vendor_service("okta-org") as (svc, keys):
        resp = svc.post_token(id_token(keys, issuer, groups=["Everyone", "chat-admins"]))
        assert resp.status_code == 200, resp.text
        assert (resp.json()["identity"], resp.json()["role"]) == (USER_ID, "admin")
        # An org-server access token is for Okta's own APIs: its audience is the org, not this service.
        org_access = access_token(keys, issuer, aud=issuer)
        assert svc.post_token(org_access).status_code == 401


def test_custom_server_id_and_access_tokens_give_one_identity() -> None:
    """Okta puts the login in an access token's `sub` and the user id in `uid`: `uid`, else `sub`."""
    issuer = "https://dev-123456.okta.com/oauth2/aus1chat2tokens3"
    with vendor_service("okta-custom-server") as (svc, keys):
        by_id = svc.post_token(id_token(keys, issuer))
        by_access = svc.post_token(access_token(keys, issuer, groups=["chat-admins"]))
        assert by_id.status_code == 200 and by_access.status_code == 200, (by_id.text, by_access.text)
        assert by_id.json()["identity"] == by_access.json()["identity"] == USER_ID
        assert by_access.json()["role"] == "admin"
        # Another authorization server of the same org is another issuer.
        other = access_token(keys, "https://dev-123456.okta.com/oauth2/default")
        assert problem(svc.post_token(other))["type"] == "invalid_token"


def test_non_string_identity_claim_is_refused_not_stringified() -> None:
    """A number in the identity claim once became the identity "12345"."""
    issuer = "https://dev-123456.okta.com/oauth2/aus1chat2tokens3"
    with vendor_service("okta-custom-server") as (svc, keys):
        resp = svc.post_token(access_token(keys, issuer, uid=12345))
        assert resp.status_code == 403
        body = problem(resp)
        assert body["type"] == "invalid_identity" and "'uid' claim is not a string" in body["detail"]
