"""Google: ID tokens under both documented ``iss`` spellings, ``hd`` for a Workspace domain.

Shape from Google's "Authenticate with a backend server" / OpenID Connect pages: header
``alg``/``kid``/``typ``; ``iss`` ``https://accounts.google.com`` or ``accounts.google.com``,
``azp`` the requesting client, ``aud`` the web client, a numeric-string ``sub``, ``hd``,
``email``, ``email_verified``, ``at_hash``, profile claims.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.support import problem
from tests.vendor_support import KeyServer, sign, times, vendor_service

pytestmark = pytest.mark.integration

WEB = "1234567890-web.apps.googleusercontent.com"


def id_token(keys: KeyServer, **claims: Any) -> str:
    body = {"iss": "https://accounts.google.com", "azp": "1234567890-android.apps.googleusercontent.com",
            "aud": WEB, "sub": "110169484474386276334", "hd": "example.com", "email": "Jane.Doe@example.com",
            "email_verified": True, "at_hash": "HK6E_P6Dh8Y93mRNtsDB1Q", "name": "Jane Doe",
            "picture": "https://lh3.googleusercontent.com/a/x", "given_name": "Jane", "family_name": "Doe",
            "locale": "en", **times(), **claims}
    return sign(keys.key, {k: v for k, v in body.items() if v is not None}, {"typ": "JWT"})


def test_both_documented_issuer_spellings() -> None:
    with vendor_service("google") as (svc, keys):
        for iss in ("https://accounts.google.com", "accounts.google.com"):
            resp = svc.post_token(id_token(keys, iss=iss))
            assert resp.status_code == 200, resp.text
            assert resp.json()["identity"] == "jane.doe@example.com"  # lowercased: one billed user
        assert svc.post_token(id_token(keys, iss="https://accounts.google.com/")).status_code == 401


def test_workspace_domain_and_verified_email() -> None:
    with vendor_service("google") as (svc, keys):
        other_domain = svc.post_token(id_token(keys, hd="gmail.example"))
        assert other_domain.status_code == 403 and "'hd'" in problem(other_domain)["detail"]
        assert svc.post_token(id_token(keys, hd=None)).status_code == 403  # a consumer account
        unverified = svc.post_token(id_token(keys, email_verified=False))
        assert unverified.status_code == 403 and problem(unverified)["type"] == "invalid_identity"


def test_azp_of_another_project_with_several_audiences_is_refused() -> None:
    with vendor_service("google") as (svc, keys):
        ok = id_token(keys, aud=[WEB, "1234567890-ios.apps.googleusercontent.com"],
                      azp="1234567890-ios.apps.googleusercontent.com")
        assert svc.post_token(ok).status_code == 200
        foreign = id_token(keys, aud=[WEB, "999-other.apps.googleusercontent.com"],
                           azp="999-other.apps.googleusercontent.com")
        assert svc.post_token(foreign).status_code == 401
