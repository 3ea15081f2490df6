"""What the load generators send: ID tokens, identities, and refresh tokens from real issues and logins.

A refresh token may be presented once (rotation), so every run needs live ones: token-service's come
from ``POST /v1/token`` (one new family each), oidc-provider's from real authorization-code logins with
``offline_access``. Tokens are read from the JSON answers as they are; nothing here parses one.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import jwt
import requests

from bench.loadgen import write_lines
from bench.procs import BenchError
from devidp.harness import DevIdP, DevIdPError, oidc_login

AUDIENCE = "token-service-dev"  # a client id of the dev IdP, accepted by dev/config.toml
OIDC_CLIENT_ID = "bench-es256"
OIDC_SCOPE = "openid email groups offline_access"
OIDC_REDIRECT_URI = "http://127.0.0.1:8000/callback"
LOGIN_THREADS = 4


def oidc_clients() -> list[dict[str, object]]:
    """The dev IdP's one client in the bench: public, code + refresh_token grants, ES256 ID tokens."""
    return [{
        "client_id": OIDC_CLIENT_ID,
        "token_endpoint_auth_method": "none",
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
        "redirect_uris": [OIDC_REDIRECT_URI],
        "id_token_signed_response_alg": "ES256",
    }]


def oidc_users(count: int) -> dict[str, dict[str, object]]:
    return {f"bench-user-{i}": {"email": f"user{i}@example.com", "email_verified": True, "groups": ["chat-users"]}
            for i in range(count)}


def mint_id_tokens(idp: DevIdP, count: int) -> list[str]:
    """RS256 ID tokens for ``count`` distinct users, signed with the IdP's own key.

    Forged rather than obtained by login: a code flow per user would take minutes, and the service
    verifies these exactly as it verifies the IdP's (same key, fetched from the IdP's JWKS).
    """
    jwk = next(k for k in idp.keys if k.get("alg") == "RS256")
    key = jwt.PyJWK(jwk).key
    now = int(time.time())
    return [
        jwt.encode(
            {
                "iss": idp.issuer, "aud": AUDIENCE, "sub": f"bench-user-{i}", "email": f"user{i}@example.com",
                "email_verified": True, "groups": ["chat-users"], "iat": now, "exp": now + 3600,
            },
            key, algorithm="RS256", headers={"kid": jwk["kid"]},
        )  # fmt: skip
        for i in range(count)
    ]


def issue_refresh_tokens(base_url: str, id_tokens: Sequence[str]) -> list[str]:
    """One refresh token (so one family) per ID token, through the real ``POST /v1/token``."""
    tokens = []
    with requests.Session() as session:
        for id_token in id_tokens:
            try:
                resp = session.post(f"{base_url}/v1/token", headers={"Authorization": f"Bearer {id_token}"}, timeout=10)
            except requests.RequestException as exc:
                raise BenchError(f"POST /v1/token failed while preparing refresh tokens: {exc}") from None
            if resp.status_code != 200:
                raise BenchError(
                    f"POST /v1/token answered {resp.status_code} while preparing refresh tokens: {resp.text[:300]}"
                )
            tokens.append(resp.json()["refresh_token"])
    return tokens


def oidc_refresh_tokens(idp: DevIdP, users: Sequence[str]) -> list[str]:
    """One refresh token (one grant) per login of each of ``users``, through the real code + PKCE flow."""

    def login(user: str) -> str:
        try:
            return oidc_login(idp.issuer, user, client_id=OIDC_CLIENT_ID, scope=OIDC_SCOPE,
                              redirect_uri=OIDC_REDIRECT_URI)["refresh_token"]
        except (DevIdPError, requests.RequestException, KeyError) as exc:
            raise BenchError(f"login of {user} at the dev IdP gave no refresh token: {exc!r}") from None

    with ThreadPoolExecutor(LOGIN_THREADS) as pool:
        return list(pool.map(login, users))


@dataclass
class RefreshTokenSupply:
    """A file of ``count`` new refresh tokens (new families) for each run, under ``workdir``.

    Every run needs its own: those in flight when a run stops are spent and their successors lost.
    ``make(n)`` mints n of them.
    """

    name: str
    count: int
    make: Callable[[int], list[str]]
    workdir: Path
    runs: int = 0

    def next_file(self, log: Callable[[str], None]) -> Path:
        log(f"{self.name}: making {self.count} refresh tokens")
        self.runs += 1
        return write_lines(self.workdir / f"{self.name}-{self.runs}.txt", self.make(self.count))
