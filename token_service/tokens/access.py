"""The Twilio Access Token (design 2.3). Pure: no Flask, no I/O.

Its header and claims mirror what Twilio's helper libraries (``twilio.jwt.access_token``) produce
for ``AccessToken`` + ``ChatGrant``, with two deliberate differences: ``jti`` carries a random
suffix so that it is unique per token (the libraries use the unix time, which repeats), and ``nbf``
is off by default because clock skew between hosts would make fresh tokens "not yet valid".

The JWS is assembled here (RFC 7515 compact form, HMAC-SHA256 from the standard library, the
claims serialized by orjson) rather than by ``jwt.encode``: PyJWT re-checks the HMAC key on every
call (is it a PEM, SSH or DER public key? a JSON web key?), which cost 12.9 % of a refresh's server
CPU under gunicorn (``bench/ab.py``; README, "Hand-written code that stays"). The header never
changes, and HS256 with a fixed header is a few lines. The tests hold it to the ``twilio``
library's output and decode it with PyJWT.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple

import orjson

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


@lru_cache(maxsize=4)
def _keyed_hmac(secret: str) -> hmac.HMAC:
    """HMAC-SHA256 with the key already set up: copying it is cheaper than keying it per token."""
    return hmac.new(secret.encode(), digestmod=hashlib.sha256)


@lru_cache(maxsize=16)
def _header_segment(region: str | None) -> str:
    header = {"alg": "HS256", "typ": "JWT", "cty": CONTENT_TYPE}
    if region:
        header["twr"] = region
    return b64url(json.dumps(header, separators=(",", ":")).encode())


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
    payload = orjson.dumps(claims)  # compact UTF-8 JSON: non-ASCII as is, not \u-escaped; same claims
    signing_input = f"{_header_segment(key.region)}.{b64url(payload)}"
    mac = _keyed_hmac(key.api_key_secret).copy()
    mac.update(signing_input.encode("ascii"))
    signature = mac.digest()
    token = f"{signing_input}.{b64url(signature)}"
    return MintedToken(jwt=token, jti=jti, issued_at=issued_at, expires_at=issued_at + ttl)


def b64url(data: bytes) -> str:
    """Unpadded base64url (RFC 7515 2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")
