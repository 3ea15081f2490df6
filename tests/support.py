"""Test helpers: run the real app over real HTTP, build settings, forge tokens with test keys."""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import jwt
import requests
from prometheus_client import REGISTRY
from werkzeug.serving import make_server

from token_service.app import create_app
from token_service.settings import Settings, settings_from_dict

ROOT = Path(__file__).resolve().parent.parent  # the repository
ARTIFACTS = ROOT / "test-artifacts"  # what a run leaves to look at: the suite's log, screenshots

TWILIO_SECRET = "test-api-key-secret-0123456789abcdef"
SESSION_KEY = "test-session-key-0123456789abcdef0123456789"
# The secrets a service started from dev/config.toml (browser login on) needs in its environment.
SERVICE_ENV = {"TWILIO_API_KEY_SECRET": TWILIO_SECRET, "TOKEN_SERVICE_SESSION_KEY": SESSION_KEY}
ACCOUNT_SID = "AC" + "a" * 32
API_KEY_SID = "SK" + "b" * 32
SERVICE_SID = "IS" + "c" * 32
RL_USER = "RL" + "1" * 32
RL_ADMIN = "RL" + "2" * 32
CR_IOS = "CR" + "3" * 32
AUDIENCES = ["token-service-dev", "token-service-es256", "urn:token-service:api"]

# What no log line or server output may hold. Fragments count: a truncated token is still a leak.
_CREDENTIAL_PARAMETER = r"(?:code|code_verifier|access_token|refresh_token|id_token|client_secret|logout_token)"
LEAK_PATTERNS = {
    "a JWT or part of one": re.compile(r"eyJ[A-Za-z0-9_-]{8,}"),
    "a refresh token or part of one": re.compile(r"rt[12]\.[A-Za-z0-9_-]{8,}"),
    "a bearer credential": re.compile(r"Bearer\s+[A-Za-z0-9._~+/-]{20,}"),
    "the Twilio API key secret": re.compile(re.escape(TWILIO_SECRET)),
    "the session-cookie signing key": re.compile(re.escape(SESSION_KEY)),
    "a Redis password": re.compile(r"s3cret-pass"),
    "the query string of an OAuth callback": re.compile(r"/callback\?(?!\[redacted\])[^\s\"']"),
    "a credential in a query string or form": re.compile(
        rf"(?<![\w-]){_CREDENTIAL_PARAMETER}=(?!\[redacted\])[^&\s\"'#]+"),
    "a PKCE code_verifier": re.compile(r"code_verifier\W{0,6}(?!\[redacted)[A-Za-z0-9._~-]{43,}"),
}


def post_refresh(base_url: str, refresh_token: str, **body: Any) -> requests.Response:
    """``POST /v1/token/refresh`` as a client sends it: the token (and ``body``) as JSON."""
    return requests.post(f"{base_url}/v1/token/refresh", json={"refresh_token": refresh_token, **body}, timeout=30)


def post_revoke(base_url: str, refresh_token: str) -> requests.Response:
    """``POST /v1/token/revoke`` of ``refresh_token``, sent as JSON."""
    return requests.post(f"{base_url}/v1/token/revoke", json={"refresh_token": refresh_token}, timeout=30)


def sample(name: str, **labels: str) -> float:
    """A metric sample of this process's registry; 0 when nothing was counted yet."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


def find_leaks(text: str) -> list[str]:
    """The names of the ``LEAK_PATTERNS`` found in ``text``."""
    return [what for what, pattern in LEAK_PATTERNS.items() if pattern.search(text)]


def config_dict(issuer: str, **issuer_overrides: Any) -> dict[str, Any]:
    """A complete configuration for one issuer; tests override what they exercise."""
    return {
        "twilio": {
            "account_sid": ACCOUNT_SID,
            "api_key_sid": API_KEY_SID,
            "service_sid": SERVICE_SID,
            "push_credentials": {"ios": CR_IOS},
        },
        "issuers": [
            {
                "name": "test",
                "issuer": issuer,
                "audiences": AUDIENCES,
                "identity_claim": "email",
                "jwks_refetch_cooldown": 1,
                **issuer_overrides,
            }
        ],
        "identity": {"reserved_characters": "allow", "allowed_reserved": ["@"]},
        # Limits get their own tests; elsewhere they would only make tests depend on each other.
        "rate_limits": {"enabled": False},
        "roles": {
            "sids": {"user": RL_USER, "admin": RL_ADMIN},
            "rules": [{"claim": "groups", "equals": "chat-admins", "role": "admin"}],
            "default": "user",
        },
    }


def settings_for(data: dict[str, Any]) -> Settings:
    return settings_from_dict(data, environ={"TWILIO_API_KEY_SECRET": TWILIO_SECRET})


# The test server's own request lines (with query strings) are not the service's logs.
logging.getLogger("werkzeug").setLevel(logging.WARNING)


class RunningService:
    """The real WSGI app behind a real threaded HTTP server on a free loopback port."""

    def __init__(self, settings: Settings, port: int = 0) -> None:
        self.settings = settings
        self.app = create_app(settings)
        self._server = make_server("127.0.0.1", port, self.app, threaded=True)
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def post_token(self, bearer: str | None, json: Any = None, **kw: Any) -> requests.Response:
        headers = dict(kw.pop("headers", {}))
        if bearer is not None:
            headers["Authorization"] = f"Bearer {bearer}"
        return requests.post(f"{self.url}/v1/token", json=json, headers=headers, timeout=30, **kw)

    def get(self, path: str, **kw: Any) -> requests.Response:
        return requests.get(f"{self.url}{path}", timeout=30, **kw)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self.app.extensions["token_service.issuer"].store.close()


@contextmanager
def running(settings: Settings, port: int = 0) -> Iterator[RunningService]:
    service = RunningService(settings, port)
    try:
        yield service
    finally:
        service.close()


def rsa(keys: list[dict[str, Any]]) -> dict[str, Any]:
    """The RS256 key of a key set made by ``devidp.harness.generate_keys``."""
    return next(k for k in keys if k["alg"] == "RS256")


def private_key(jwk: dict[str, Any]) -> Any:
    return jwt.PyJWK(jwk).key


def forge(
    jwk: dict[str, Any],
    claims: dict[str, Any],
    *,
    headers: dict[str, Any] | None = None,
    alg: str | None = None,
) -> str:
    """Sign ``claims`` with a test-controlled key (the IdP's own, or an attacker's)."""
    all_headers = {"kid": jwk["kid"], **(headers or {})}
    return jwt.encode(claims, private_key(jwk), algorithm=alg or jwk["alg"], headers=all_headers)


def id_claims(issuer: str, **overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {
        "iss": issuer,
        "sub": "alice",
        "aud": "token-service-dev",
        "iat": now,
        "exp": now + 600,
        "email": "alice@example.com",
        "email_verified": True,
        "groups": ["chat-users"],
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def problem(resp: requests.Response) -> dict[str, Any]:
    """The problem+json body, after checking it is one (and leaks no stack trace)."""
    assert resp.headers["Content-Type"].startswith("application/problem+json"), resp.text
    body = resp.json()
    assert body["status"] == resp.status_code
    assert "Traceback" not in resp.text
    return body
