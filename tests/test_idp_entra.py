"""Microsoft Entra ID: v2.0 ID and access tokens, one tenant and many, app roles, group overage.

Token shapes follow Microsoft's "ID token claims reference" and "Access token claims reference"
(v2.0): header ``typ``/``alg``/``kid`` (access tokens add ``x5t``), ``iss``
``https://login.microsoftonline.com/<tid>/v2.0``, ``tid``, ``oid``, ``sub``, ``azp`` and ``scp``
in access tokens, ``roles`` for app roles, and ``_claim_names``/``_claim_sources`` instead of
``groups`` when a user is in too many groups.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.support import TWILIO_SECRET, problem, running, sample
from tests.vendor_support import KeyServer, example, for_test, sign, times, vendor_service
from token_service.settings import settings_from_dict

pytestmark = pytest.mark.integration

TENANT = "9188040d-6c67-4c5b-b112-36a304b66dad"  # the examples' tenants
PARTNER = "72f988bf-86f1-41af-91ab-2d7cd011db47"
STRANGER = "0b1a7c5d-1111-4222-8333-944445555666"
CLIENT = "6e74172b-be56-4843-9ff4-e66a39bb12e3"
OID = "00000000-0000-0000-66f3-3332eca7ea81"


def _present(claims: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in claims.items() if v is not None}


def id_token(keys: KeyServer, tenant: str = TENANT, **claims: Any) -> str:
    tid = tenant
    body = {"aud": CLIENT, "iss": f"https://login.microsoftonline.com/{tid}/v2.0", **times(),
            "aio": "AbQAS/8TAAAA", "name": "Abe Lincoln", "nonce": "123523", "oid": OID,
            "preferred_username": "abeli@microsoft.com", "rh": "I", "sid": "0ad8b8f4-1c9a-4c7e-9b1a-2c3d4e5f6a7b",
            "sub": "HKZpfaHyWadeOouYlitjrI-KffTm222X5rrV3xDqfKQ", "tid": tid, "uti": "fqiBqXLPj0eQa82S-IYFAA",
            "ver": "2.0", **claims}
    return sign(keys.key, _present(body), {"typ": "JWT"})


def access_token(keys: KeyServer, tenant: str = TENANT, **claims: Any) -> str:
    tid = tenant
    body = {"aud": "api://chat-tokens", "iss": f"https://login.microsoftonline.com/{tid}/v2.0", **times(),
            "aio": "AXQAi/8TAAAA", "azp": CLIENT, "azpacr": "0", "name": "Abe Lincoln", "oid": OID,
            "preferred_username": "abeli@microsoft.com", "rh": "I", "scp": "access_as_user",
            "sub": "fSOW-CA6MHcxDKLQLwWDfZ4UHHUFd-7Wp7HE7CLjTxU", "tid": tid, "uti": "fqiBqXLPj0eQa82S-IYFAA",
            "ver": "2.0", **claims}
    return sign(keys.key, _present(body), {"typ": "JWT", "x5t": keys.key["kid"]})


def test_single_tenant_id_and_access_tokens_give_one_identity() -> None:
    with vendor_service("entra-single-tenant") as (svc, keys):
        by_id = svc.post_token(id_token(keys))
        by_access = svc.post_token(access_token(keys, roles=["Chat.Admin"]))
        assert by_id.status_code == 200 and by_access.status_code == 200, (by_id.text, by_access.text)
        assert by_id.json()["identity"] == by_access.json()["identity"] == OID
        assert (by_id.json()["role"], by_access.json()["role"]) == ("user", "admin")
        other_tenant = svc.post_token(id_token(keys, tenant=PARTNER))
        assert other_tenant.status_code == 401 and "issuer" in problem(other_tenant)["detail"]


def multi_tenant(keys: KeyServer, **issuer: Any) -> dict[str, Any]:
    """The multi-tenant example, with Microsoft's shared discovery document served by ``keys``."""
    keys.documents["/organizations/v2.0/.well-known/openid-configuration"] = {
        "issuer": "https://login.microsoftonline.com/{tenantid}/v2.0", "jwks_uri": f"{keys.url}/keys"}
    data = for_test(example("entra-multi-tenant"), keys)
    entry = data["issuers"][0]
    del entry["jwks_uri"]
    entry["discovery_url"] = f"{keys.url}/organizations/v2.0/.well-known/openid-configuration"
    entry.update(issuer)
    return data


def settings(data: dict[str, Any]) -> Any:
    return settings_from_dict(data, environ={"TWILIO_API_KEY_SECRET": TWILIO_SECRET})


def test_multi_tenant_accepts_listed_tenants_through_the_shared_discovery_document() -> None:
    keys = KeyServer()
    try:
        with running(settings(multi_tenant(keys))) as svc:
            for tid in (TENANT, PARTNER):
                resp = svc.post_token(access_token(keys, tenant=tid))
                assert resp.status_code == 200, resp.text
                assert resp.json()["identity"] == f"{tid}.{OID}"  # the same oid in two tenants: two people
            stranger = svc.post_token(access_token(keys, tenant=STRANGER))
            assert stranger.status_code == 401 and "issuer is not trusted" in problem(stranger)["detail"]
            assert svc.get("/readyz").json()["issuers"]["entra"]["state"] == "fresh"
    finally:
        keys.close()


def test_tid_must_name_the_tenant_in_the_issuer() -> None:
    keys = KeyServer()
    try:
        with running(settings(multi_tenant(keys))) as svc:
            crossed = svc.post_token(access_token(keys, tenant=TENANT, tid=PARTNER))
            assert crossed.status_code == 401 and "'tid'" in problem(crossed)["detail"]
            missing = svc.post_token(access_token(keys, tenant=TENANT, tid=None))
            assert missing.status_code == 401 and "'tid'" in problem(missing)["detail"]
            assert svc.post_token(access_token(keys, tenant=TENANT)).status_code == 200
    finally:
        keys.close()


def test_any_tenant_is_an_explicit_opt_in() -> None:
    keys = KeyServer()
    try:
        data = multi_tenant(keys, any_tenant=True)
        del data["issuers"][0]["tenants"]
        with running(settings(data)) as svc:
            assert svc.post_token(access_token(keys, tenant=STRANGER)).status_code == 200
            not_a_guid = svc.post_token(access_token(keys, tenant="common"))
            assert not_a_guid.status_code == 401
    finally:
        keys.close()


def test_group_overage_never_falls_back_to_the_default_role() -> None:
    """Entra leaves `groups` out for users in more than 200 groups; a rule on groups must not
    silently see none and hand out the default role."""
    overage = {"_claim_names": {"groups": "src1"},
               "_claim_sources": {"src1": {"endpoint": f"https://graph.microsoft.com/v1.0/users/{OID}/getMemberObjects"}}}
    rules = {"default": "user", "rules": [{"claim": "groups", "equals": "b7f2c4e0-0000-4000-8000-000000000001",
                                           "role": "admin"}]}
    with vendor_service("entra-single-tenant", roles=rules) as (svc, keys):
        before = sample("token_service_group_overage_total", issuer="entra")
        resp = svc.post_token(access_token(keys, **overage))
        assert resp.status_code == 403
        body = problem(resp)
        assert body["type"] == "access_denied" and "group overage" in body["detail"] and "app roles" in body["detail"]
        assert sample("token_service_group_overage_total", issuer="entra") == before + 1
        # The same user with their groups listed is mapped as usual.
        listed = svc.post_token(access_token(keys, groups=["b7f2c4e0-0000-4000-8000-000000000001"]))
        assert listed.status_code == 200 and listed.json()["role"] == "admin"
    with vendor_service("entra-single-tenant") as (svc, keys):
        # Rules on app roles do not read `groups`: overage does not concern them.
        assert svc.post_token(access_token(keys, roles=["Chat.Admin"], **overage)).json()["role"] == "admin"
