"""Key rotation at the IdP, floods of unknown kids, and an unreachable IdP (design 2.1, JWKS cache).

Each test runs its own oidc-provider so it can restart it with a different key set.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import jwt
import pytest

from devidp.harness import DevIdP, generate_keys
from tests.support import config_dict, forge, id_claims, problem, rsa, running, settings_for

pytestmark = pytest.mark.integration


def wait_for(predicate: Callable[[], bool], timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


def test_rotation_new_key_accepted_and_removed_key_rejected(own_idp: DevIdP) -> None:
    old_keys = own_idp.keys
    settings = settings_for(config_dict(own_idp.issuer, jwks_ttl=5, jwks_max_stale=3600))
    with running(settings) as svc:
        assert svc.post_token(own_idp.login("alice")["id_token"]).status_code == 200

        # The IdP publishes a new key first and signs with it; the old one is still listed.
        new_keys = generate_keys()
        own_idp.restart(keys=new_keys + old_keys)
        time.sleep(1.1)  # past the refetch cooldown of 1 s
        fresh = own_idp.login("alice")["id_token"]
        assert jwt.get_unverified_header(fresh)["kid"] == rsa(new_keys)["kid"]
        resp = svc.post_token(fresh)
        assert resp.status_code == 200, resp.text  # accepted without restarting the service

        # The old key is removed at the IdP: old-key tokens die once the cache refreshes.
        own_idp.restart(keys=new_keys)
        old_token = forge(rsa(old_keys), id_claims(own_idp.issuer))
        assert wait_for(lambda: svc.post_token(old_token).status_code == 401, timeout=20)
        assert problem(svc.post_token(old_token))["type"] == "invalid_token"
        assert svc.post_token(forge(rsa(new_keys), id_claims(own_idp.issuer))).status_code == 200


def test_flood_of_unknown_kids_fetches_at_most_once_per_cooldown(own_idp: DevIdP) -> None:
    key = rsa(own_idp.keys)
    settings = settings_for(config_dict(own_idp.issuer, jwks_refetch_cooldown=30))
    with running(settings) as svc:
        assert svc.post_token(forge(key, id_claims(own_idp.issuer))).status_code == 200
        time.sleep(0.1)
        before = own_idp.jwks_requests()

        def attack(_: int) -> int:
            kid = secrets.token_hex(8)
            return svc.post_token(forge(key, id_claims(own_idp.issuer), headers={"kid": kid})).status_code

        with ThreadPoolExecutor(max_workers=16) as pool:
            statuses = list(pool.map(attack, range(200)))
        assert set(statuses) == {401}
        assert own_idp.jwks_requests() - before <= 1


def test_flood_of_unknown_kids_after_cooldown_fetches_once_more(own_idp: DevIdP) -> None:
    key = rsa(own_idp.keys)
    settings = settings_for(config_dict(own_idp.issuer, jwks_refetch_cooldown=1))
    with running(settings) as svc:
        assert svc.post_token(forge(key, id_claims(own_idp.issuer))).status_code == 200
        time.sleep(1.2)
        before = own_idp.jwks_requests()
        same_kid = forge(key, id_claims(own_idp.issuer), headers={"kid": "bad-kid"})
        with ThreadPoolExecutor(max_workers=16) as pool:
            statuses = list(pool.map(lambda _: svc.post_token(same_kid).status_code, range(100)))
        assert set(statuses) == {401}
        assert own_idp.jwks_requests() - before == 1


def test_idp_unreachable_cached_keys_serve_until_max_stale(own_idp: DevIdP) -> None:
    key = rsa(own_idp.keys)
    settings = settings_for(
        config_dict(own_idp.issuer, jwks_ttl=5, jwks_max_stale=8, http_timeout=0.5)
    )
    with running(settings) as svc:
        assert svc.post_token(forge(key, id_claims(own_idp.issuer))).status_code == 200
        own_idp.stop()
        time.sleep(5.5)  # past the TTL: stale, and the background refresh fails
        resp = svc.post_token(forge(key, id_claims(own_idp.issuer)))
        assert resp.status_code == 200, resp.text

        def degraded() -> bool:
            state = svc.get("/readyz").json()
            return state["status"] == "degraded" and state["issuers"]["test"]["last_error"] is not None

        assert wait_for(degraded, timeout=5)
        ready = svc.get("/readyz")
        assert ready.status_code == 200
        assert ready.json()["issuers"]["test"]["state"] == "stale"

        def expired() -> bool:
            return svc.get("/readyz").status_code == 503

        assert wait_for(expired, timeout=10)
        assert svc.get("/readyz").json()["issuers"]["test"]["state"] == "expired"
        refused = svc.post_token(forge(key, id_claims(own_idp.issuer)))
        assert refused.status_code == 503
        assert problem(refused)["type"] == "unavailable"
        assert int(refused.headers["Retry-After"]) >= 1

        own_idp.start()  # the IdP comes back: no service restart needed
        assert wait_for(
            lambda: svc.post_token(forge(key, id_claims(own_idp.issuer))).status_code == 200
        )
        assert svc.get("/readyz").json()["status"] == "ok"


def test_unreachable_idp_at_start_gives_503_not_500() -> None:
    settings = settings_for(config_dict("http://127.0.0.1:9", http_timeout=0.5))
    with running(settings) as svc:
        keys = generate_keys()
        resp = svc.post_token(forge(rsa(keys), id_claims("http://127.0.0.1:9")))
        assert resp.status_code == 503
        assert problem(resp)["type"] == "unavailable"
        ready = svc.get("/readyz")
        assert ready.status_code == 503 and ready.json()["issuers"]["test"]["state"] == "not_loaded"
