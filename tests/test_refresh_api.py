"""Refresh, reuse detection and revocation over HTTP (design 2.4, RFC 7009)."""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jwt
import pytest
import requests

from devidp.harness import DevIdP
from tests.gunicorn_support import dev_config, run_cli
from tests.redis_servers import RedisServer
from tests.support import (
    SERVICE_ENV,
    TWILIO_SECRET,
    RunningService,
    config_dict,
    forge,
    id_claims,
    post_refresh,
    problem,
    running,
    settings_for,
)

pytestmark = pytest.mark.integration


def login(svc: RunningService, token: str) -> dict:
    resp = svc.post_token(token)
    assert resp.status_code == 200, resp.text
    return resp.json()


def revoke(svc: RunningService, **kw: object) -> requests.Response:
    return requests.post(f"{svc.url}/v1/token/revoke", timeout=30, **kw)


def assert_invalid_grant(resp: requests.Response) -> None:
    assert resp.status_code == 401, resp.text
    body = problem(resp)
    assert body["type"] == "invalid_grant" and body["error"] == "invalid_grant"
    assert "sign in again" in body["detail"]


def test_refresh_rotates_and_keeps_identity_and_role(service: RunningService, idp: DevIdP) -> None:
    first = login(service, idp.login("bob")["id_token"])
    resp = post_refresh(service.url, first["refresh_token"], platform="ios")
    assert resp.status_code == 200, resp.text
    assert resp.headers["Cache-Control"] == "no-store"
    second = resp.json()
    assert second["refresh_token"] != first["refresh_token"]
    assert (second["identity"], second["role"]) == ("bob@example.com", "admin")
    claims = jwt.decode(second["token"], TWILIO_SECRET, algorithms=["HS256"])
    assert claims["grants"]["chat"]["deployment_role_sid"] == first["role_sid"]
    assert "push_credential_sid" in claims["grants"]["chat"]
    assert second["refresh_expires_at"] >= first["refresh_expires_at"]
    third = post_refresh(service.url, second["refresh_token"])
    assert third.status_code == 200


def test_replay_of_a_spent_token_kills_the_family(
    service: RunningService, idp: DevIdP, caplog: pytest.LogCaptureFixture
) -> None:
    owner = login(service, idp.login("alice")["id_token"])
    rotated = post_refresh(service.url, owner["refresh_token"]).json()
    newest = post_refresh(service.url, rotated["refresh_token"]).json()  # the owner moves on
    with caplog.at_level(logging.WARNING, logger="token_service.audit"):
        assert_invalid_grant(post_refresh(service.url, owner["refresh_token"]))  # the thief replays
    assert_invalid_grant(post_refresh(service.url, newest["refresh_token"]))  # and the owner is out too
    (event,) = [r for r in caplog.records if getattr(r, "event", "") == "refresh_reuse_detected"]
    assert event.identity == "alice@example.com" and event.levelname == "WARNING"
    assert (event.issuer, event.sub, event.family) == ("test", "alice", event.family)
    for token in (owner, rotated, newest):
        assert token["refresh_token"] not in caplog.text


def test_a_retried_refresh_gets_the_same_successor(service: RunningService, idp: DevIdP) -> None:
    """A client that lost the answer presents the same token again: same successor, no revocation."""
    first = login(service, idp.login("alice")["id_token"])["refresh_token"]
    answers = [post_refresh(service.url, first) for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 200]
    successors = {a.json()["refresh_token"] for a in answers}
    assert len(successors) == 1  # one live successor, however many retries
    assert len({a.json()["token"] for a in answers}) == 3  # each answer mints its own access token
    (successor,) = successors
    assert post_refresh(service.url, successor).status_code == 200
    assert_invalid_grant(post_refresh(service.url, first))  # its successor was used: now it is reuse


@pytest.mark.parametrize(
    "bad",
    ["", "rt2.", "rt2." + "A" * 79, "rt2." + "A" * 81, "rt1." + "A" * 80, "rt2." + "!" * 80, "x" * 600],
)
def test_malformed_refresh_tokens(service: RunningService, bad: str) -> None:
    resp = post_refresh(service.url, bad)
    assert resp.status_code in (400, 401), resp.text
    assert problem(resp)["type"] in ("invalid_grant", "invalid_request")


def test_unknown_and_truncated_refresh_tokens(service: RunningService, idp: DevIdP, rsa_key: dict) -> None:
    real = login(service, forge(rsa_key, id_claims(idp.issuer)))["refresh_token"]
    assert_invalid_grant(post_refresh(service.url, real[:-1]))  # truncated
    tampered = real[:-2] + ("AA" if real[-2:] != "AA" else "BA")
    assert_invalid_grant(post_refresh(service.url, tampered))
    assert post_refresh(service.url, real).status_code == 200  # the forgeries did not hurt the owner


def test_bad_refresh_requests(service: RunningService) -> None:
    for kwargs in ({"json": {}}, {"json": {"refresh_token": 5}}, {"data": "nope"}, {"json": [1]}):
        resp = requests.post(f"{service.url}/v1/token/refresh", timeout=30, **kwargs)
        assert resp.status_code == 400, (kwargs, resp.text)
        assert problem(resp)["type"] == "invalid_request"


def test_revoke_json_and_rfc7009_form(service: RunningService, idp: DevIdP, rsa_key: dict) -> None:
    a = login(service, forge(rsa_key, id_claims(idp.issuer)))["refresh_token"]
    resp = revoke(service, json={"refresh_token": a})
    assert resp.status_code == 200 and resp.headers["Cache-Control"] == "no-store"
    assert_invalid_grant(post_refresh(service.url, a))
    b = login(service, forge(rsa_key, id_claims(idp.issuer)))["refresh_token"]
    form = revoke(service, data={"token": b, "token_type_hint": "refresh_token"})
    assert form.status_code == 200
    assert_invalid_grant(post_refresh(service.url, b))


def test_revoke_answers_200_for_unknown_tokens_and_400_without_one(service: RunningService) -> None:
    assert revoke(service, data={"token": "rt2." + "A" * 80}).status_code == 200
    assert revoke(service, data={"token": "not-even-ours"}).status_code == 200
    missing = revoke(service, data={"token_type_hint": "refresh_token"})
    assert missing.status_code == 400 and problem(missing)["type"] == "invalid_request"


def test_revoking_one_family_leaves_the_others(service: RunningService, idp: DevIdP, rsa_key: dict) -> None:
    phone = login(service, forge(rsa_key, id_claims(idp.issuer)))["refresh_token"]
    laptop = login(service, forge(rsa_key, id_claims(idp.issuer)))["refresh_token"]
    assert revoke(service, json={"refresh_token": phone}).status_code == 200
    assert post_refresh(service.url, laptop).status_code == 200


def redis_config(idp: DevIdP, redis_server: RedisServer, **extra: object) -> dict:
    data = config_dict(idp.issuer)
    data["store"] = {"url": redis_server.url()}
    data.update(extra)
    return data


def test_fifty_concurrent_refreshes_leave_one_successor_on_redis(idp: DevIdP, redis_server: RedisServer) -> None:
    with running(settings_for(redis_config(idp, redis_server))) as svc:
        token = login(svc, idp.login("alice")["id_token"])["refresh_token"]
        with ThreadPoolExecutor(max_workers=50) as pool:
            answers = list(pool.map(lambda _: post_refresh(svc.url, token), range(50)))
        assert {a.status_code for a in answers} == {200}
        assert len({a.json()["refresh_token"] for a in answers}) == 1
        assert post_refresh(svc.url, answers[0].json()["refresh_token"]).status_code == 200


def test_retry_window_over_http(idp: DevIdP, rsa_key: dict) -> None:
    data = config_dict(idp.issuer)
    data["refresh"] = {"retry_window": 1}
    with running(settings_for(data)) as svc:
        first = login(svc, forge(rsa_key, id_claims(idp.issuer)))["refresh_token"]
        assert post_refresh(svc.url, first).status_code == 200
        time.sleep(2.1)  # past the window: presenting the spent token again is reuse
        assert_invalid_grant(post_refresh(svc.url, first))


def test_cli_revoke_identity(idp: DevIdP, redis_server: RedisServer, tmp_path: Path) -> None:
    with running(settings_for(redis_config(idp, redis_server))) as svc:
        tokens = [login(svc, idp.login("dave")["id_token"])["refresh_token"] for _ in range(2)]
        other = login(svc, idp.login("alice")["id_token"])["refresh_token"]
        config = dev_config(tmp_path, idp.issuer, store_url=redis_server.url())
        done = run_cli("revoke", "--config", str(config), "--identity", "dave@example.com",
                       env={**SERVICE_ENV, "PATH": "/usr/bin:/bin"})
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "revoked 2 refresh families of 'dave@example.com'"
        for token in tokens:
            assert_invalid_grant(post_refresh(svc.url, token))
        assert post_refresh(svc.url, other).status_code == 200
