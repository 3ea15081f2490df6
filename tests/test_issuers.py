"""Several trusted issuers at once, and each way of finding an issuer's keys."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from devidp.harness import DevIdP, generate_keys, public_jwks
from tests.support import AUDIENCES, config_dict, forge, id_claims, problem, rsa, running, settings_for

pytestmark = pytest.mark.integration


def issuer_entry(name: str, issuer: str, **extra: object) -> dict:
    return {"name": name, "issuer": issuer, "audiences": AUDIENCES, "identity_claim": "email",
            "jwks_refetch_cooldown": 1, **extra}


def test_two_issuers_with_prefixes_never_share_an_identity(idp: DevIdP, own_idp: DevIdP) -> None:
    data = config_dict(idp.issuer)
    data["issuers"] = [
        issuer_entry("corp", idp.issuer, identity_prefix="corp."),
        issuer_entry("partner", own_idp.issuer, identity_prefix="partner."),
    ]
    with running(settings_for(data)) as svc:
        a = svc.post_token(idp.login("alice")["id_token"])
        b = svc.post_token(own_idp.login("alice")["id_token"])
        assert a.json()["identity"] == "corp.alice@example.com"
        assert b.json()["identity"] == "partner.alice@example.com"
        # A token claiming the partner issuer but signed with corp's key is refused.
        crossed = forge(rsa(idp.keys), id_claims(own_idp.issuer))
        resp = svc.post_token(crossed)
        assert resp.status_code == 401 and problem(resp)["type"] == "invalid_token"
        ready = svc.get("/readyz").json()
        assert set(ready["issuers"]) == {"corp", "partner"}


def test_configured_jwks_uri_skips_discovery(idp: DevIdP) -> None:
    jwks_uri = idp.discovery()["jwks_uri"]
    with running(settings_for(config_dict(idp.issuer, jwks_uri=jwks_uri))) as svc:
        assert svc.post_token(idp.login("alice")["id_token"]).status_code == 200
        assert svc.get("/readyz").json()["issuers"]["test"]["source"] == jwks_uri


def test_static_jwks_file_for_air_gapped_setups(tmp_path: Path) -> None:
    keys = generate_keys()
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(public_jwks(keys)))
    issuer = "https://idp.internal.example"  # never contacted
    with running(settings_for(config_dict(issuer, jwks_file=str(path)))) as svc:
        assert svc.post_token(forge(rsa(keys), id_claims(issuer))).status_code == 200
        other = rsa(generate_keys())
        assert svc.post_token(forge(other, id_claims(issuer))).status_code == 401


def test_discovery_naming_another_issuer_is_not_trusted(idp: DevIdP) -> None:
    # The configured issuer differs from what the discovery document says (trailing slash).
    data = config_dict(idp.issuer + "/")
    with running(settings_for(data)) as svc:
        resp = svc.post_token(forge(rsa(idp.keys), id_claims(idp.issuer + "/")))
        assert resp.status_code == 503
        state = svc.get("/readyz").json()["issuers"]["test"]
        assert state["last_error"] == "the discovery document names a different issuer"
