"""Audit events of the security operations carry who, which family, which IdP subject, from where.

Reuse, revocation, sign-out and back-channel logout (issue: fault-safe refresh, item 7): each event
names the identity, the family or families, the issuer and ``sub``, the client IP and the request id,
and never a token.
"""

from __future__ import annotations

import logging
import time
import uuid

import pytest
import requests

from devidp.harness import DevIdP
from tests.browser_support import BrowserStack
from tests.support import RunningService, forge, id_claims, post_refresh, post_revoke, rsa

pytestmark = pytest.mark.integration
CSRF = {"X-Requested-With": "test"}
BACK_CHANNEL_LOGOUT = "http://schemas.openid.net/event/backchannel-logout"


def events(caplog: pytest.LogCaptureFixture, name: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "token_service.audit" and getattr(r, "event", "") == name]


def test_reuse_and_revocation_events(
    caplog: pytest.LogCaptureFixture, service: RunningService, idp: DevIdP, rsa_key: dict
) -> None:
    caplog.set_level(logging.INFO)
    first = service.post_token(forge(rsa_key, id_claims(idp.issuer, sub="sub-audit"))).json()["refresh_token"]
    second = post_refresh(service.url, first).json()["refresh_token"]
    post_refresh(service.url, second)
    post_refresh(service.url, first)  # reuse: revokes the family
    other = service.post_token(forge(rsa_key, id_claims(idp.issuer, sub="sub-audit"))).json()["refresh_token"]
    post_revoke(service.url, other)
    (reuse,) = events(caplog, "refresh_reuse_detected")
    (revoked,) = events(caplog, "family_revoked")
    for event in (reuse, revoked):
        assert (event.identity, event.issuer, event.sub) == ("alice@example.com", "test", "sub-audit")
        assert len(event.family) == 11 and event.client_ip == "127.0.0.1" and len(event.request_id) == 32
    assert reuse.levelno == logging.WARNING and revoked.reason == "revoke"
    assert reuse.family != revoked.family
    for token in (first, second, other):
        assert token not in caplog.text


def sign_in(stack: BrowserStack, user: str) -> requests.Session:
    from tests.test_browser_login import sign_in as browser_sign_in

    return browser_sign_in(stack, user)


def test_logout_and_back_channel_logout_events(caplog: pytest.LogCaptureFixture, stack: BrowserStack) -> None:
    caplog.set_level(logging.INFO)
    browser = sign_in(stack, "dave")
    minted = browser.post(f"{stack.base}/v1/token", headers={"Origin": stack.base, **CSRF}, timeout=10).json()
    assert browser.post(f"{stack.base}/logout", headers={"Origin": stack.base, **CSRF}, timeout=10).ok
    (logout,) = events(caplog, "logout")
    assert (logout.identity, logout.issuer, logout.sub, logout.client_ip) == ("dave@example.com", "test", "dave",
                                                                           "127.0.0.1")
    assert logout.count == 1 and len(logout.families) == 1 and len(logout.request_id) == 32

    other = sign_in(stack, "dave")
    other.post(f"{stack.base}/v1/token", headers={"Origin": stack.base, **CSRF}, timeout=10)
    now = int(time.time())
    claims = {"iss": stack.idp.issuer, "aud": "token-service-dev", "iat": now, "exp": now + 120,
              "jti": uuid.uuid4().hex, "sub": "dave", "events": {BACK_CHANNEL_LOGOUT: {}}}
    token = forge(rsa(stack.idp.keys), claims, headers={"typ": "logout+jwt"})
    assert requests.post(f"{stack.base}/backchannel-logout", data={"logout_token": token}, timeout=10).ok
    (back_channel,) = events(caplog, "backchannel_logout")
    assert (back_channel.identity, back_channel.issuer, back_channel.sub) == ("dave@example.com", "test", "dave")
    assert back_channel.count == 1 and back_channel.client_ip == "127.0.0.1" and back_channel.request_id
    assert minted["refresh_token"] not in caplog.text and token not in caplog.text
