"""Several issuers at once: one issuer's rules never apply to another's tokens (design 2.2).

Two issuers with keys of the tests' own (static JWKS files): the company IdP and a partner IdP.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from devidp.harness import generate_keys, public_jwks
from tests.support import config_dict, forge, id_claims, problem, rsa, running, settings_for

pytestmark = pytest.mark.integration

CORP = "https://login.corp.example"
PARTNER = "https://idp.partner.example"


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    made = {}
    for name in ("corp", "partner"):
        key_set = generate_keys()
        path = tmp_path_factory.mktemp(name) / "jwks.json"
        path.write_text(json.dumps(public_jwks(key_set)))
        made[name] = (rsa(key_set), str(path))
    return made


def two_issuers(keys: dict[str, Any], corp: dict[str, Any], partner: dict[str, Any]) -> dict[str, Any]:
    data = config_dict(CORP)
    base = {"audiences": ["token-service-dev"], "identity_claim": "email"}
    data["issuers"] = [
        {"name": "corp", "issuer": CORP, "jwks_file": keys["corp"][1], **base, **corp},
        {"name": "partner", "issuer": PARTNER, "jwks_file": keys["partner"][1], **base, **partner},
    ]
    del data["roles"]["rules"]  # every rule below belongs to one issuer
    return data


ADMIN_RULE = {"default": "user", "rules": [{"claim": "groups", "equals": "chat-admins", "role": "admin"}]}


def test_partner_idp_cannot_escalate_to_the_company_admin_role(keys: dict[str, Any]) -> None:
    """A partner's token saying groups: ["chat-admins"] once got the admin role meant for the company."""
    data = two_issuers(keys, {"roles": ADMIN_RULE}, {"roles": {"default": "user"}, "identity_prefix": "partner."})
    with running(settings_for(data)) as svc:
        admins = {"groups": ["chat-admins"]}
        corp = svc.post_token(forge(keys["corp"][0], id_claims(CORP, **admins)))
        partner = svc.post_token(forge(keys["partner"][0], id_claims(PARTNER, **admins)))
        assert corp.json()["role"] == "admin"
        assert partner.status_code == 200 and partner.json()["role"] == "user"


def test_access_gate_of_one_issuer_does_not_bind_the_other(keys: dict[str, Any]) -> None:
    gate = {"require": [{"claim": "hd", "equals": "corp.example"}]}
    data = two_issuers(keys, {"access": gate, "roles": ADMIN_RULE}, {"roles": {"default": "user"}})
    with running(settings_for(data)) as svc:
        corp = svc.post_token(forge(keys["corp"][0], id_claims(CORP)))
        assert corp.status_code == 403 and "'hd'" in problem(corp)["detail"]
        assert svc.post_token(forge(keys["corp"][0], id_claims(CORP, hd="corp.example"))).status_code == 200
        # The partner's tokens are not held to the company's gate (nor to the global one: there is none).
        assert svc.post_token(forge(keys["partner"][0], id_claims(PARTNER))).status_code == 200


def test_global_rules_are_the_default_for_issuers_without_their_own(keys: dict[str, Any]) -> None:
    data = two_issuers(keys, {}, {"roles": {"default": "user"}})
    data["roles"].update(ADMIN_RULE)
    with running(settings_for(data)) as svc:
        admins = id_claims(CORP, groups=["chat-admins"])
        assert svc.post_token(forge(keys["corp"][0], admins)).json()["role"] == "admin"
        partner = svc.post_token(forge(keys["partner"][0], id_claims(PARTNER, groups=["chat-admins"])))
        assert partner.json()["role"] == "user"  # its own (empty) rules replace the global ones


def test_the_same_person_through_two_issuers_merged_on_purpose(keys: dict[str, Any]) -> None:
    """Both IdPs verify the same address: without prefixes it is one identity, one billed user."""
    data = two_issuers(keys, {"roles": ADMIN_RULE}, {"roles": {"default": "user"}})
    with running(settings_for(data)) as svc:
        a = svc.post_token(forge(keys["corp"][0], id_claims(CORP, sub="corp-123")))
        b = svc.post_token(forge(keys["partner"][0], id_claims(PARTNER, sub="partner-xyz")))
        assert a.json()["identity"] == b.json()["identity"] == "alice@example.com"


def test_the_same_person_through_two_issuers_kept_apart_on_purpose(keys: dict[str, Any]) -> None:
    data = two_issuers(keys, {"roles": ADMIN_RULE, "identity_prefix": "corp."},
                       {"roles": {"default": "user"}, "identity_prefix": "partner."})
    with running(settings_for(data)) as svc:
        a = svc.post_token(forge(keys["corp"][0], id_claims(CORP)))
        b = svc.post_token(forge(keys["partner"][0], id_claims(PARTNER)))
        assert (a.json()["identity"], b.json()["identity"]) == ("corp.alice@example.com", "partner.alice@example.com")
        # A token naming the partner as issuer but signed with the company's key is refused.
        assert svc.post_token(forge(keys["corp"][0], id_claims(PARTNER))).status_code == 401
