"""Rate limits over HTTP: 429 with Retry-After and the IETF RateLimit fields (design 2.5)."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from devidp.harness import DevIdP
from tests.gunicorn_support import dev_config, gunicorn
from tests.redis_servers import RedisServer
from tests.support import config_dict, forge, id_claims, post_refresh, problem, running, settings_for

pytestmark = pytest.mark.integration


def limited(idp: DevIdP, *policies: dict, hops: int = 0, store: str = "memory://") -> dict:
    data = config_dict(idp.issuer)
    data["rate_limits"] = {"enabled": True, "policies": list(policies)}
    data["server"] = {"trusted_proxies": hops}
    data["store"] = {"url": store}
    return data


def policy(endpoint: str, key: str, limit: int, window: int = 60) -> dict:
    return {"endpoint": endpoint, "key": key, "limit": limit, "window": window}


def assert_429(resp: requests.Response, policy_name: str) -> None:
    assert resp.status_code == 429, resp.text
    assert problem(resp)["type"] == "rate_limited"
    assert int(resp.headers["Retry-After"]) >= 1
    assert f'"{policy_name}";q=' in resp.headers["RateLimit-Policy"]
    assert resp.headers["RateLimit"].startswith(f'"{policy_name}";r=0;t=')


def test_per_ip_limit_on_token(idp: DevIdP, rsa_key: dict) -> None:
    with running(settings_for(limited(idp, policy("token", "ip", 3)))) as svc:
        token = forge(rsa_key, id_claims(idp.issuer))
        first = svc.post_token(token)
        assert first.status_code == 200
        assert first.headers["RateLimit-Policy"] == '"token-ip";q=3;w=60'
        assert first.headers["RateLimit"].startswith('"token-ip";r=2;t=')
        assert [svc.post_token(token).status_code for _ in range(2)] == [200, 200]
        assert_429(svc.post_token(token), "token-ip")


def test_failed_proofs_count_against_the_ip(idp: DevIdP) -> None:
    with running(settings_for(limited(idp, policy("token", "ip", 2)))) as svc:
        assert [svc.post_token("garbage").status_code for _ in range(2)] == [401, 401]
        assert_429(svc.post_token("garbage"), "token-ip")


def test_per_identity_limit_across_ips(idp: DevIdP, rsa_key: dict) -> None:
    data = limited(idp, policy("token", "ip", 100), policy("token", "identity", 2), hops=1)
    with running(settings_for(data)) as svc:
        token = forge(rsa_key, id_claims(idp.issuer))
        for i in range(2):
            assert svc.post_token(token, headers={"X-Forwarded-For": f"203.0.113.{i}"}).status_code == 200
        assert_429(svc.post_token(token, headers={"X-Forwarded-For": "203.0.113.99"}), "token-identity")
        other = forge(rsa_key, id_claims(idp.issuer, email="bob@example.com"))
        assert svc.post_token(other, headers={"X-Forwarded-For": "203.0.113.99"}).status_code == 200


def test_spoofed_forwarded_for_from_an_untrusted_peer_keeps_the_bucket(idp: DevIdP, rsa_key: dict) -> None:
    with running(settings_for(limited(idp, policy("token", "ip", 2), hops=0))) as svc:
        token = forge(rsa_key, id_claims(idp.issuer))
        statuses = [
            svc.post_token(token, headers={"X-Forwarded-For": f"198.51.100.{i}"}).status_code for i in range(3)
        ]
        assert statuses == [200, 200, 429]


def test_trusted_proxy_gives_each_client_its_own_bucket(idp: DevIdP, rsa_key: dict) -> None:
    with running(settings_for(limited(idp, policy("token", "ip", 1), hops=1))) as svc:
        token = forge(rsa_key, id_claims(idp.issuer))
        assert svc.post_token(token, headers={"X-Forwarded-For": "198.51.100.1"}).status_code == 200
        assert svc.post_token(token, headers={"X-Forwarded-For": "198.51.100.2"}).status_code == 200
        # A client prepending a fake hop still lands in the bucket of the address the proxy saw.
        spoof = svc.post_token(token, headers={"X-Forwarded-For": "10.9.9.9, 198.51.100.1"})
        assert spoof.status_code == 429


def test_per_family_limit_on_refresh(idp: DevIdP, rsa_key: dict) -> None:
    data = limited(idp, policy("refresh", "family", 2), policy("refresh", "ip", 100))
    with running(settings_for(data)) as svc:
        refresh = svc.post_token(forge(rsa_key, id_claims(idp.issuer))).json()["refresh_token"]
        for _ in range(2):
            resp = post_refresh(svc.url, refresh)
            assert resp.status_code == 200
            refresh = resp.json()["refresh_token"]
        refused = post_refresh(svc.url, refresh)
        assert_429(refused, "refresh-family")
        # Refused before anything was spent: the token still works once the window allows.
        another = svc.post_token(forge(rsa_key, id_claims(idp.issuer))).json()["refresh_token"]
        ok = post_refresh(svc.url, another)
        assert ok.status_code == 200  # other families are not affected


def test_revoke_is_limited_per_ip(idp: DevIdP) -> None:
    with running(settings_for(limited(idp, policy("revoke", "ip", 2)))) as svc:
        for _ in range(2):
            assert requests.post(f"{svc.url}/v1/token/revoke", data={"token": "x"}, timeout=10).status_code == 200
        assert_429(requests.post(f"{svc.url}/v1/token/revoke", data={"token": "x"}, timeout=10), "revoke-ip")


@pytest.fixture
def two_workers(idp: DevIdP, redis_server: RedisServer, tmp_path: Path) -> Iterator[str]:
    redis_server.flush()
    limits = '\n[rate_limits]\npolicies = [{ endpoint = "token", key = "ip", limit = 5, window = 60 }]\n'
    config = dev_config(tmp_path, idp.issuer, store_url=redis_server.url(), extra=limits)
    with gunicorn(config, workers=2) as served:
        yield served.url
    assert served.output.count("Booting worker") >= 2


def test_limits_are_shared_by_two_gunicorn_workers(two_workers: str, idp: DevIdP, rsa_key: dict) -> None:
    token = forge(rsa_key, id_claims(idp.issuer))

    def call(_: int) -> int:
        with requests.Session() as session:  # a new connection each time: spread over workers
            return session.post(f"{two_workers}/v1/token", headers={"Authorization": f"Bearer {token}"},
                                timeout=10).status_code

    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(pool.map(call, range(12)))
    assert statuses.count(200) == 5 and statuses.count(429) == 7


