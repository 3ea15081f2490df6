"""Auth0: ID tokens, access tokens for an API (two audiences and ``azp``), namespaced claims.

Shapes from Auth0's "ID Token Structure" and "Access Token Profiles": ``iss`` with a trailing
slash, ``sub`` ``auth0|…``, access tokens whose ``aud`` lists the API identifier and
``https://<tenant>/userinfo`` with ``azp`` the client id and a space-separated ``scope``; custom
claims namespaced by a URL (``https://chat.example.com/roles``).
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.support import problem
from tests.vendor_support import KeyServer, sign, times, vendor_service

pytestmark = pytest.mark.integration

ISSUER = "https://chat-example.us.auth0.com/"
CLIENT = "kR9dM3example2ClientId"
SUB = "auth0|64f1c2d3e4f5a6b7c8d9e0f1"
NS = "https://chat.example.com/"


def id_token(keys: KeyServer, **claims: Any) -> str:
    body = {"given_name": "Jane", "family_name": "Doe", "nickname": "jane", "name": "Jane Doe",
            "picture": "https://s.gravatar.com/avatar/x.png", "updated_at": "2026-11-01T10:00:00.000Z",
            "email": "jane@example.com", "email_verified": True, "iss": ISSUER, "aud": CLIENT, **times(),
            "sub": SUB, "sid": "Gb7ZcT3Jh1PqExample", "nonce": "abc123", **claims}
    return sign(keys.key, body, {"typ": "JWT"})


def access_token(keys: KeyServer, **claims: Any) -> str:
    body = {"iss": ISSUER, "sub": SUB, "aud": ["https://chat-api.example.com", f"{ISSUER}userinfo"], **times(),
            "scope": "openid profile email", "azp": CLIENT, **claims}
    return sign(keys.key, {k: v for k, v in body.items() if v is not None}, {"typ": "JWT"})


def test_id_and_access_tokens_with_namespaced_roles() -> None:
    with vendor_service("auth0") as (svc, keys):
        by_id = svc.post_token(id_token(keys))
        by_access = svc.post_token(access_token(keys, **{f"{NS}roles": ["chat-admin"]}))
        assert by_id.status_code == 200 and by_access.status_code == 200, (by_id.text, by_access.text)
        assert by_id.json()["identity"] == by_access.json()["identity"] == SUB
        assert (by_id.json()["role"], by_access.json()["role"]) == ("user", "admin")


def test_azp_mismatch_with_several_audiences_is_refused() -> None:
    """OIDC Core 3.1.3.7: with several audiences, `azp` must be our client."""
    with vendor_service("auth0") as (svc, keys):
        resp = svc.post_token(access_token(keys, azp="someone-elses-client"))
        assert resp.status_code == 401 and "azp" in problem(resp)["detail"]
        assert svc.post_token(access_token(keys, azp=None)).status_code == 200  # azp absent: nothing to check


def test_renamed_email_claim_cannot_skip_email_verification() -> None:
    """An identity taken from a namespaced email claim once skipped require_email_verified."""
    sources = {"identity_sources": [f"{NS}email"], "email_verified_claim": f"{NS}email_verified"}
    with vendor_service("auth0", **sources) as (svc, keys):
        email = {f"{NS}email": "mallory@example.com"}
        unverified = svc.post_token(access_token(keys, **email))
        assert unverified.status_code == 403
        assert problem(unverified)["type"] == "invalid_identity" and "not verified" in problem(unverified)["detail"]
        # The top-level email_verified of another address does not vouch for this one.
        assert svc.post_token(access_token(keys, email_verified=True, **email)).status_code == 403
        verified = svc.post_token(access_token(keys, **email, **{f"{NS}email_verified": True}))
        assert verified.status_code == 403  # '@' is a reserved character this example refuses
        assert "reserved character '@'" in problem(verified)["detail"]
    with vendor_service("auth0", identity_sources=["/https:~1~1chat.example.com~1user_name"]) as (svc, keys):
        # Any claim that holds an address is an email, whatever its name.
        resp = svc.post_token(access_token(keys, **{f"{NS}user_name": "mallory@example.com"}))
        assert resp.status_code == 403 and "not verified" in problem(resp)["detail"]
