"""X-Forwarded-For is honoured only through the configured number of trusted proxies."""

from __future__ import annotations

import logging

import pytest

from devidp.harness import DevIdP
from tests.support import config_dict, forge, id_claims, running, settings_for

pytestmark = pytest.mark.integration


def issued_client_ip(caplog: pytest.LogCaptureFixture, svc, token: str, forwarded: str | None) -> str:
    caplog.clear()
    headers = {"X-Forwarded-For": forwarded} if forwarded else {}
    with caplog.at_level(logging.INFO, logger="token_service.audit"):
        assert svc.post_token(token, headers=headers).status_code == 200
    (record,) = [r for r in caplog.records if getattr(r, "event", None) == "token_issued"]
    return record.client_ip


@pytest.mark.parametrize(
    ("hops", "forwarded", "expected"),
    [
        (0, None, "127.0.0.1"),
        (0, "203.0.113.9", "127.0.0.1"),  # no trusted proxy: the header is a spoof
        (1, "203.0.113.9", "203.0.113.9"),
        (1, "198.51.100.1, 203.0.113.9", "203.0.113.9"),  # the client prepended a fake hop
        (2, "198.51.100.1, 203.0.113.9", "198.51.100.1"),
    ],
)
def test_client_ip_through_trusted_proxies(
    caplog: pytest.LogCaptureFixture,
    idp: DevIdP,
    rsa_key: dict,
    hops: int,
    forwarded: str | None,
    expected: str,
) -> None:
    data = config_dict(idp.issuer)
    data["server"] = {"trusted_proxies": hops}
    with running(settings_for(data)) as svc:
        token = forge(rsa_key, id_claims(idp.issuer))
        assert issued_client_ip(caplog, svc, token, forwarded) == expected
