"""The Twilio Access Token (design 2.3). Pure: no Flask, no I/O.

Its header and claims mirror what Twilio's helper libraries (``twilio.jwt.access_token``) produce
for ``AccessToken`` + ``ChatGrant``, with two deliberate differences: ``jti`` carries a random
suffix so that it is unique per token (the libraries use the unix time, which repeats), and ``nbf``
is off by default because clock skew between hosts would make fresh tokens "not yet valid".

The JWS is made by PyJWT's ``jwt.encode``, as the ``twilio`` library makes it; the tests hold ours
to that library's output.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import NamedTuple

import jwt

CONTENT_TYPE = "twilio-fpa;v=1"


@dataclass(frozen=True)
class TwilioKey:
    """Who signs: the account, the API key SID and its secret (HMAC-SHA256 key)."""

    account_sid: str
    api_key_sid: str
    api_key_secret: str
    region: str | None = None


class ChatAccess(NamedTuple):
    """What the token grants: one identity in one Conversations service, with a role."""

    identity: str
    service_sid: str
    role_sid: str | None = None
    push_credential_sid: str | None = None


class MintedToken(NamedTuple):
    jwt: str
    jti: str
    issued_at: int
    expires_at: int


def chat_grant(access: ChatAccess) -> dict[str, str]:
    """The ``grants.chat`` object: a key only when it has a value, as ``ChatGrant`` does."""
    grant = {"service_sid": access.service_sid}
    if access.role_sid:
        grant["deployment_role_sid"] = access.role_sid
    if access.push_credential_sid:
        grant["push_credential_sid"] = access.push_credential_sid
    return grant


def mint_access_token(
    key: TwilioKey,
    access: ChatAccess,
    *,
    ttl: int,
    include_nbf: bool = False,
    now: int | None = None,
) -> MintedToken:
    """Sign a Twilio Access Token for ``access``, valid for ``ttl`` seconds from ``now``."""
    issued_at = int(time.time()) if now is None else now
    jti = f"{key.api_key_sid}-{secrets.token_hex(16)}"
    claims: dict[str, object] = {
        "jti": jti,
        "grants": {"identity": access.identity, "chat": chat_grant(access)},
        "iss": key.api_key_sid,
        "sub": key.account_sid,
        "iat": issued_at,
        "exp": issued_at + ttl,
    }
    if include_nbf:
        claims["nbf"] = issued_at
    headers = {"cty": CONTENT_TYPE, **({"twr": key.region} if key.region else {})}
    token = jwt.encode(claims, key.api_key_secret, algorithm="HS256", headers=headers)
    return MintedToken(jwt=token, jti=jti, issued_at=issued_at, expires_at=issued_at + ttl)
