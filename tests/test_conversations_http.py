"""REST sync through the service: tokens make the Conversations User carry the mapped role.

The real ``twilio`` client talks to the local stand-in of the Users API (validated against
Twilio's published OpenAPI description); the service runs over real HTTP with the real IdP.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from devidp.harness import DevIdP
from tests.support import (
    RL_ADMIN,
    RL_USER,
    SERVICE_ENV,
    config_dict,
    forge,
    id_claims,
    post_refresh,
    problem,
    running,
)
from tests.twilio_standin.server import ConversationsStandIn
from token_service.settings import settings_from_dict

pytestmark = pytest.mark.integration


def sync_config(idp: DevIdP, standin: ConversationsStandIn, **sync: object) -> dict:
    data = config_dict(idp.issuer)
    data["twilio"].update(account_sid=standin.account_sid, api_key_sid=standin.api_key_sid,
                          service_sid=standin.service_sid)
    data["conversations"] = {"sync": {"enabled": True, "base_url": standin.base_url, "timeout": 1.0,
                                      "friendly_name_claim": "name", **sync}}
    return data


def writes(standin: ConversationsStandIn) -> list[str]:
    return [path for method, path, _ in standin.calls if method == "POST"]


def test_first_login_creates_then_nothing_then_role_change_updates(
    idp: DevIdP, rsa_key: dict, standin: ConversationsStandIn
) -> None:
    settings = settings_from_dict(sync_config(idp, standin), environ=SERVICE_ENV)
    with running(settings) as svc:
        first = svc.post_token(forge(rsa_key, id_claims(idp.issuer, name="Alice A.")))
        assert first.status_code == 200, first.text
        assert len(writes(standin)) == 1  # created, with the mapped role
        calls_before = len(standin.calls)
        again = svc.post_token(forge(rsa_key, id_claims(idp.issuer)))
        assert again.status_code == 200
        refreshed = post_refresh(svc.url, again.json()["refresh_token"])
        assert refreshed.status_code == 200
        assert len(standin.calls) == calls_before  # remembered: no REST call at all
        promoted = svc.post_token(forge(rsa_key, id_claims(idp.issuer, groups=["chat-admins"])))
        assert promoted.json()["role_sid"] == RL_ADMIN
        assert len(writes(standin)) == 2  # exactly one update
        _, _, form = [c for c in standin.calls if c[0] == "POST"][-1]
        assert form == {"RoleSid": RL_ADMIN}
        _, _, created = [c for c in standin.calls if c[0] == "POST"][0]
        assert created["Identity"] == "alice@example.com" and created["RoleSid"] == RL_USER
        assert created["FriendlyName"] == "Alice A."


def test_fail_open_issues_the_token_and_retries_next_time(
    idp: DevIdP, rsa_key: dict, standin: ConversationsStandIn
) -> None:
    settings = settings_from_dict(sync_config(idp, standin), environ=SERVICE_ENV)
    with running(settings) as svc:
        standin.fail_next(503, count=10)
        resp = svc.post_token(forge(rsa_key, id_claims(idp.issuer, email="open@example.com")))
        assert resp.status_code == 200
        standin.reset()
        retry = svc.post_token(forge(rsa_key, id_claims(idp.issuer, email="open@example.com")))
        assert retry.status_code == 200
        assert len(writes(standin)) == 1  # the deferred create happens at the next token request


def test_fail_closed_answers_503_and_keeps_no_family(
    idp: DevIdP, rsa_key: dict, standin: ConversationsStandIn
) -> None:
    settings = settings_from_dict(sync_config(idp, standin, failure_mode="fail_closed"), environ=SERVICE_ENV)
    with running(settings) as svc:
        standin.fail_next(500, count=10)
        resp = svc.post_token(forge(rsa_key, id_claims(idp.issuer, email="closed@example.com")))
        assert resp.status_code == 503
        assert problem(resp)["type"] == "unavailable" and int(resp.headers["Retry-After"]) >= 1
        assert "refresh_token" not in resp.text


def test_support_commands(idp: DevIdP, standin: ConversationsStandIn, tmp_path: Path) -> None:
    from tests.gunicorn_support import dev_config, run_cli

    extra = (f'\n[conversations.sync]\nenabled = true\nbase_url = "{standin.base_url}"\n')
    config = dev_config(tmp_path, idp.issuer, extra=extra)
    text = config.read_text()
    for old, new in (("AC00000000000000000000000000000000", standin.account_sid),
                     ("SK00000000000000000000000000000000", standin.api_key_sid),
                     ("IS00000000000000000000000000000000", standin.service_sid)):
        text = text.replace(old, new)
    config.write_text(text)
    env = {**SERVICE_ENV, "PATH": "/usr/bin:/bin"}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return run_cli(*args, "--config", str(config), env=env)

    missing = cli("show-user", "zoe@example.com")
    assert missing.returncode == 3 and "no Conversations User" in missing.stderr
    made = cli("sync-user", "zoe@example.com", "--role", "admin")
    assert made.returncode == 0, made.stderr
    assert "created" in made.stdout
    shown = cli("show-user", "zoe@example.com")
    assert shown.returncode == 0 and '"identity": "zoe@example.com"' in shown.stdout
    assert '"role_sid": "RL00000000000000000000000000000002"' in shown.stdout
    again = cli("sync-user", "zoe@example.com", "--role", "admin")
    assert "unchanged" in again.stdout
