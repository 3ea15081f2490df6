"""Role changes take effect everywhere (issue: role lifecycle), counted at the Users API stand-in.

Twilio bills every User create or update, and the User's role is what Conversations enforces: a
refresh must never write an older role back, a demotion must reach every device, and concurrent first
logins against a slow Twilio must send one create.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import jwt
import pytest
import requests

from devidp.harness import DevIdP
from tests.redis_servers import RedisServer
from tests.support import (
    RL_ADMIN,
    RL_USER,
    SERVICE_ENV,
    TWILIO_SECRET,
    RunningService,
    config_dict,
    forge,
    id_claims,
    post_refresh,
    problem,
    running,
    sample,
)
from tests.twilio_standin.server import ConversationsStandIn
from token_service.settings import settings_from_dict
from token_service.tokens.refresh import identity_tag

pytestmark = pytest.mark.integration

ADMINS = ["chat-users", "chat-admins"]
USERS = ["chat-users"]


def lifecycle_config(idp: DevIdP, standin: ConversationsStandIn, *, refresh: dict | None = None,
                     store: str = "memory://", **sync: object) -> dict[str, Any]:
    data = config_dict(idp.issuer)
    data["twilio"].update(account_sid=standin.account_sid, api_key_sid=standin.api_key_sid,
                          service_sid=standin.service_sid)
    data["conversations"] = {"sync": {"enabled": True, "base_url": standin.base_url, "timeout": 1.0, **sync}}
    data["refresh"] = refresh or {}
    data["store"] = {"url": store}
    return data


def sign_in(svc: RunningService, rsa_key: dict, idp: DevIdP, groups: list[str], email: str = "alice@example.com"):
    resp = svc.post_token(forge(rsa_key, id_claims(idp.issuer, groups=groups, email=email)))
    assert resp.status_code == 200, resp.text
    return resp.json()


def role_writes(standin: ConversationsStandIn) -> list[str]:
    """The RoleSid of every create and update the stand-in received, in order."""
    return [c.form["RoleSid"] for c in standin.calls if c.method == "POST" and "RoleSid" in c.form]


def minted_role(answer: dict) -> str:
    return jwt.decode(answer["token"], TWILIO_SECRET, algorithms=["HS256"])["grants"]["chat"]["deployment_role_sid"]


def test_a_promotion_reaches_the_old_device_without_a_role_write(
    idp: DevIdP, rsa_key: dict, standin: ConversationsStandIn
) -> None:
    with running(settings_from_dict(lifecycle_config(idp, standin), environ=SERVICE_ENV)) as svc:
        phone = sign_in(svc, rsa_key, idp, USERS)["refresh_token"]  # a family from before the change
        laptop = sign_in(svc, rsa_key, idp, ADMINS)["refresh_token"]  # promoted at the IdP, signs in again
        assert role_writes(standin) == [RL_USER, RL_ADMIN]  # one create, one update
        followed = sample("token_service_refresh_role_updates_total", action="followed")
        for _ in range(4):  # alternate the devices, as the attack run did
            for device in ("phone", "laptop"):
                token = phone if device == "phone" else laptop
                answer = post_refresh(svc.url, token).json()
                assert answer["role"] == "admin" and minted_role(answer) == RL_ADMIN
                if device == "phone":
                    phone = answer["refresh_token"]
                else:
                    laptop = answer["refresh_token"]
        assert role_writes(standin) == [RL_USER, RL_ADMIN]  # no REST write from any refresh
        assert [c.method for c in standin.calls].count("GET") == 2  # and no read either
        assert sample("token_service_refresh_role_updates_total", action="followed") == followed + 1
        assert standin.user("alice@example.com")["role_sid"] == RL_ADMIN


def test_a_demotion_ends_the_admin_role_on_every_device(
    idp: DevIdP, rsa_key: dict, standin: ConversationsStandIn
) -> None:
    with running(settings_from_dict(lifecycle_config(idp, standin), environ=SERVICE_ENV)) as svc:
        old_admin_device = sign_in(svc, rsa_key, idp, ADMINS)["refresh_token"]
        sign_in(svc, rsa_key, idp, USERS)  # demoted at the IdP; a sign-in elsewhere learns it
        for _ in range(3):
            answer = post_refresh(svc.url, old_admin_device).json()
            assert answer["role"] == "user" and minted_role(answer) == RL_USER  # no admin token
            old_admin_device = answer["refresh_token"]
        assert role_writes(standin) == [RL_ADMIN, RL_USER]  # 0 admin writes after the demotion
        assert standin.user("alice@example.com")["role_sid"] == RL_USER


def test_a_role_change_can_end_the_other_families_instead(
    idp: DevIdP, rsa_key: dict, standin: ConversationsStandIn
) -> None:
    config = lifecycle_config(idp, standin, refresh={"on_role_change": "revoke"})
    with running(settings_from_dict(config, environ=SERVICE_ENV)) as svc:
        old_admin_device = sign_in(svc, rsa_key, idp, ADMINS)["refresh_token"]
        new_device = sign_in(svc, rsa_key, idp, USERS)["refresh_token"]
        resp = post_refresh(svc.url, old_admin_device)
        assert resp.status_code == 401 and problem(resp)["type"] == "login_required"
        assert post_refresh(svc.url, new_device).status_code == 200  # the sign-in's own family goes on
        assert role_writes(standin) == [RL_ADMIN, RL_USER]


def test_role_max_age_asks_for_a_fresh_sign_in(
    idp: DevIdP, rsa_key: dict, standin: ConversationsStandIn, redis_server: RedisServer
) -> None:
    redis_server.flush()
    config = lifecycle_config(idp, standin, refresh={"role_max_age": 600}, store=redis_server.url())
    with running(settings_from_dict(config, environ=SERVICE_ENV)) as svc:
        token = sign_in(svc, rsa_key, idp, USERS)["refresh_token"]
        assert post_refresh(svc.url, token).status_code == 200
        token = post_refresh(svc.url, token).json()["refresh_token"]
        # Eleven minutes later: the identity's role was last confirmed by the IdP before the bound.
        admin = redis_server.client(decode_responses=True)
        record = f"ts:{{{identity_tag('alice@example.com')}}}:u"
        admin.hset(record, "rc", int(admin.hget(record, "rc")) - 660)
        admin.close()
        stale = post_refresh(svc.url, token)
        assert stale.status_code == 401, stale.text
        body = problem(stale)
        assert body["type"] == "login_required" and "sign in again" in body["detail"]
        sign_in(svc, rsa_key, idp, USERS)  # a sign-in on any device confirms the role again
        assert post_refresh(svc.url, token).status_code == 200  # the family itself was kept


def test_concurrent_first_logins_against_a_slow_twilio_send_one_create(
    idp: DevIdP, rsa_key: dict, standin: ConversationsStandIn, redis_server: RedisServer
) -> None:
    """The create is slower than the sync timeout: the first login gives up waiting but keeps the
    per-user lock (the create may still land), and the others defer instead of creating again."""
    redis_server.flush()
    config = lifecycle_config(idp, standin, store=redis_server.url(), timeout=0.5)
    with running(settings_from_dict(config, environ=SERVICE_ENV)) as svc:
        standin.fail_next(None, delay=0.01)  # the first fetch (404) is quick ...
        standin.fail_next(None, delay=2.5)  # ... the create is slower than the timeout
        token = forge(rsa_key, id_claims(idp.issuer, email="newbie@example.com"))
        deferred = sample("token_service_conversations_sync_total", outcome="deferred")
        started = time.monotonic()
        with ThreadPoolExecutor(10) as pool:
            answers = list(pool.map(lambda _: requests.post(
                f"{svc.url}/v1/token", headers={"Authorization": f"Bearer {token}"}, timeout=30), range(10)))
        assert [a.status_code for a in answers] == [200] * 10  # every login got its token, in bounded time
        assert time.monotonic() - started < 10
        creates = [c for c in standin.calls if c.method == "POST"]
        assert len(creates) == 1, standin.calls
        assert sample("token_service_conversations_sync_total", outcome="deferred") == deferred + 10
        time.sleep(3.5)  # the slow create landed; the lock ran out
        later = svc.post_token(token)
        assert later.status_code == 200
        assert [c.method for c in standin.calls if c.method == "POST"] == ["POST"]  # found, not created again
        assert standin.user("newbie@example.com") is not None
