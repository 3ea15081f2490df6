"""A service with browser sign-in enabled, in front of an IdP whose client points back at it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from devidp.harness import DevIdP, generate_keys
from tests.redis_servers import free_port
from tests.support import SERVICE_ENV, RunningService, config_dict, running

SPA_ORIGIN = "http://spa.example.test:5173"


@dataclass
class BrowserStack:
    idp: DevIdP
    service: RunningService

    @property
    def base(self) -> str:
        return self.service.url


def login_config(idp: DevIdP, base: str) -> dict[str, Any]:
    data = config_dict(idp.issuer)
    data["server"] = {"public_url": base, "dev_mode": True, "cors_origins": [SPA_ORIGIN]}
    data["login"] = {
        "enabled": True,
        "issuer": "test",
        "client_id": "token-service-dev",
        "redirect_uri": f"{base}/callback",
        "scopes": ["openid", "email", "profile", "groups"],
        "after_login": "/demo/",
        "post_logout_redirect_uri": f"{base}/demo/",
        "demo_page": True,
    }
    return data


def client_for(base: str) -> dict[str, Any]:
    return {
        "client_id": "token-service-dev",
        "token_endpoint_auth_method": "none",
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
        "redirect_uris": [f"{base}/callback"],
        "post_logout_redirect_uris": [f"{base}/demo/"],
        "backchannel_logout_uri": f"{base}/backchannel-logout",
        "backchannel_logout_session_required": True,
    }


@contextmanager
def browser_stack() -> Iterator[BrowserStack]:
    from token_service.settings import settings_from_dict

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with DevIdP(keys=generate_keys(), clients=[client_for(base)]) as idp:
        settings = settings_from_dict(login_config(idp, base), environ=SERVICE_ENV)
        with running(settings, port) as service:
            yield BrowserStack(idp, service)
