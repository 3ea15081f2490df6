"""Metrics, request ids and audit logs, observed from outside over real HTTP."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from devidp.harness import DevIdP
from tests.gunicorn_support import dev_config, gunicorn
from tests.redis_servers import RedisServer
from tests.support import (
    TWILIO_SECRET,
    RunningService,
    config_dict,
    forge,
    id_claims,
    post_refresh,
    post_revoke,
    problem,
    running,
    settings_for,
)

pytestmark = pytest.mark.integration


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    resp = requests.get(f"{url}/metrics", timeout=10)
    assert resp.status_code == 200 and resp.headers["Content-Type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(resp.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_move_with_real_requests(service: RunningService, idp: DevIdP, rsa_key: dict) -> None:
    before = scrape(service.url)
    issued = service.post_token(forge(rsa_key, id_claims(idp.issuer, email="metrics@example.com")))
    assert issued.status_code == 200
    assert service.post_token("garbage").status_code == 401
    refreshed = post_refresh(service.url, issued.json()["refresh_token"])
    assert refreshed.status_code == 200
    after = scrape(service.url)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("token_service_tokens_issued_total", issuer="test", role="user") == 1
    assert delta("token_service_denials_total", endpoint="/v1/token", reason="invalid_token") == 1
    assert delta("token_service_refreshes_total", outcome="rotated") == 1
    assert delta("token_service_http_requests_total", endpoint="/v1/token", method="POST", status="200") == 1
    assert delta("token_service_http_requests_total", endpoint="/v1/token", method="POST", status="401") == 1
    assert delta("token_service_http_request_duration_seconds_count", endpoint="/v1/token") == 2
    assert delta("token_service_store_duration_seconds_count", operation="issue") == 1
    assert delta("token_service_store_duration_seconds_count", operation="rotate") == 1
    month = time.strftime("%Y-%m", time.gmtime())
    assert value(after, "token_service_active_identities", month=month) >= 1
    assert value(after, "token_service_jwks_fetches_total", issuer="test", result="ok") >= 1


def test_caller_chosen_methods_do_not_become_label_values(service: RunningService) -> None:
    """A metric label per made-up method would let any caller grow the metrics without bound."""
    before = scrape(service.url)
    for method in ("FROB", "XYZZY", "BREW"):
        resp = requests.request(method, f"{service.url}/v1/token", timeout=10)
        assert resp.status_code == 405 and problem(resp)["type"] == "method_not_allowed"
    after = scrape(service.url)
    labels = {dict(key[1]).get("method") for key in after if key[0] == "token_service_http_requests_total"}
    assert not labels & {"FROB", "XYZZY", "BREW"}
    other = {"endpoint": "/v1/token", "method": "other", "status": "405"}
    name = "token_service_http_requests_total"
    assert value(after, name, **other) - value(before, name, **other) == 3


def test_rate_limit_and_store_error_metrics(idp: DevIdP, rsa_key: dict) -> None:
    data = config_dict(idp.issuer)
    data["rate_limits"] = {"enabled": True, "policies": [{"endpoint": "token", "key": "ip", "limit": 1, "window": 60}]}
    with RedisServer() as server:
        data["store"] = {"url": server.url()}
        with running(settings_for(data)) as svc:
            before = scrape(svc.url)
            token = forge(rsa_key, id_claims(idp.issuer))
            assert [svc.post_token(token).status_code for _ in range(2)] == [200, 429]
            server.kill()
            assert svc.post_token(token).status_code == 503
            after = scrape(svc.url)
    assert value(after, "token_service_rate_limited_total", endpoint="token", policy="token-ip") - value(
        before, "token_service_rate_limited_total", endpoint="token", policy="token-ip") == 1
    assert value(after, "token_service_store_errors_total", operation="issue") - value(
        before, "token_service_store_errors_total", operation="issue") >= 1
    assert value(after, "token_service_denials_total", endpoint="/v1/token", reason="unavailable") >= 1


@pytest.fixture
def two_workers(idp: DevIdP, redis_server: RedisServer, tmp_path: Path) -> Iterator[str]:
    redis_server.flush()
    config = dev_config(tmp_path, idp.issuer, store_url=redis_server.url())
    with gunicorn(config, workers=2, env={"PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prom")}) as served:
        yield served.url


def test_metrics_add_up_across_two_gunicorn_workers(two_workers: str, idp: DevIdP, rsa_key: dict) -> None:
    users = [f"worker{i}@example.com" for i in range(12)]

    def call(email: str) -> int:
        with requests.Session() as session:
            token = forge(rsa_key, id_claims(idp.issuer, email=email))
            return session.post(f"{two_workers}/v1/token", headers={"Authorization": f"Bearer {token}"},
                                timeout=10).status_code

    with ThreadPoolExecutor(max_workers=6) as pool:
        assert set(pool.map(call, users + users[:4])) == {200}
    for _ in range(6):  # whichever worker answers the scrape, the totals are the same
        samples = scrape(two_workers)
        assert value(samples, "token_service_tokens_issued_total", issuer="devidp", role="user") == 16
        assert value(samples, "token_service_http_requests_total",
                     endpoint="/v1/token", method="POST", status="200") == 16
        month = time.strftime("%Y-%m", time.gmtime())
        assert value(samples, "token_service_active_identities", month=month) == 12
    assert value(samples, "token_service_store_duration_seconds_count", operation="issue") == 16


def audit_events(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "token_service.audit"]


def test_audit_events_carry_the_fields_and_no_secrets(
    caplog: pytest.LogCaptureFixture, service: RunningService, idp: DevIdP, rsa_key: dict
) -> None:
    caplog.set_level(logging.INFO)
    token = forge(rsa_key, id_claims(idp.issuer, sub="sub-42"))
    issued = service.post_token(token, headers={"X-Request-ID": "gateway-id-1"}).json()
    refreshed = post_refresh(service.url, issued["refresh_token"]).json()
    newest = post_refresh(service.url, refreshed["refresh_token"]).json()
    post_refresh(service.url, issued["refresh_token"])  # two behind: reuse
    post_revoke(service.url, newest["refresh_token"])
    service.post_token("garbage")
    events = {r.event: r for r in audit_events(caplog)}
    issued_event = events["token_issued"]
    assert (issued_event.identity, issued_event.role, issued_event.issuer, issued_event.sub) == (
        "alice@example.com", "user", "test", "sub-42")
    assert issued_event.jti.startswith("SK") and issued_event.client_ip == "127.0.0.1"
    # No trusted proxy: the gateway's id is not taken, one is made instead.
    assert issued_event.request_id and issued_event.request_id != "gateway-id-1"
    assert events["token_refreshed"].identity == "alice@example.com"
    assert events["refresh_reuse_detected"].levelname == "WARNING"
    denied = [r for r in audit_events(caplog) if r.event == "denied"]
    assert {r.reason for r in denied} >= {"invalid_grant", "invalid_token"}
    for secret in (token, issued["token"], issued["refresh_token"], refreshed["refresh_token"],
                   newest["refresh_token"], TWILIO_SECRET):
        assert secret not in caplog.text


def test_request_id_from_a_trusted_gateway(
    caplog: pytest.LogCaptureFixture, idp: DevIdP, rsa_key: dict
) -> None:
    caplog.set_level(logging.INFO)
    data = config_dict(idp.issuer)
    data["server"] = {"trusted_proxies": 1}
    data["logging"] = {"access_log": True}
    with running(settings_for(data)) as svc:
        resp = svc.post_token(forge(rsa_key, id_claims(idp.issuer)), headers={"X-Request-ID": "gw-abc.123"})
        assert resp.headers["X-Request-ID"] == "gw-abc.123"
        lines = [r for r in caplog.records if getattr(r, "request_id", None) == "gw-abc.123"]
        assert {r.name for r in lines} >= {"token_service.audit", "token_service.access"}
        bad = svc.post_token(forge(rsa_key, id_claims(idp.issuer)), headers={"X-Request-ID": "no spaces <script>"})
        assert bad.headers["X-Request-ID"] != "no spaces <script>" and len(bad.headers["X-Request-ID"]) == 32
