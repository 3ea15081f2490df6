"""Refresh tokens (design 2.4): opaque, 256 bits of randomness, carrying their family.

Layout: ``rt1.`` + base64url(identity tag 8 bytes | family id 16 bytes | secret 32 bytes). The
identity tag (a truncated SHA-256 of the identity) is the Redis Cluster hash tag that keeps an
identity's families, index and buckets in one slot; it reveals nothing a caller could use. The
store only ever sees ``digest`` (SHA-256 of the whole token), never the token.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from typing import NamedTuple

from token_service.b64url import b64url
from token_service.entropy import token_bytes, token_hex
from token_service.errors import InvalidGrant

PREFIX = "rt1."
_TAG_BYTES, _FAMILY_BYTES, _SECRET_BYTES = 8, 16, 32
_RAW_BYTES = _TAG_BYTES + _FAMILY_BYTES + _SECRET_BYTES
PATTERN = r"^rt1\.[A-Za-z0-9_-]{75}$"  # also the OpenAPI description's schema of a refresh token
_SHAPE = re.compile(PATTERN)


class RefreshToken(NamedTuple):
    value: str
    tag: str
    family_id: str

    @property
    def digest(self) -> str:
        return digest(self.value)


def digest(token: str) -> str:
    return hashlib.sha256(token.encode("ascii")).hexdigest()


def identity_tag(identity: str) -> str:
    return hashlib.sha256(identity.encode("utf-8")).hexdigest()[: 2 * _TAG_BYTES]


def new_family_id() -> str:
    return token_hex(_FAMILY_BYTES)


def mint_refresh_token(tag: str, family_id: str) -> RefreshToken:
    raw = bytes.fromhex(tag) + bytes.fromhex(family_id) + token_bytes(_SECRET_BYTES)
    value = PREFIX + b64url(raw)
    return RefreshToken(value=value, tag=tag, family_id=family_id)


def parse_refresh_token(value: str) -> RefreshToken:
    """The token's tag and family, or ``InvalidGrant`` for anything not shaped like ours."""
    if not _SHAPE.fullmatch(value):  # not match(): its $ would let a trailing newline through
        raise InvalidGrant("the refresh token is malformed; sign in again")
    try:
        raw = base64.urlsafe_b64decode(value[len(PREFIX):] + "=")
    except (binascii.Error, ValueError):
        raise InvalidGrant("the refresh token is malformed; sign in again") from None
    if len(raw) != _RAW_BYTES:
        raise InvalidGrant("the refresh token is malformed; sign in again")
    tag = raw[:_TAG_BYTES].hex()
    family_id = raw[_TAG_BYTES:_TAG_BYTES + _FAMILY_BYTES].hex()
    return RefreshToken(value=value, tag=tag, family_id=family_id)
