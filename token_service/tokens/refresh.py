"""Refresh tokens (design 2.4): opaque, carrying their family and generation, proven ours by an HMAC.

Layout: ``rt2.`` + base64url(identity tag 16 bytes | family id 8 bytes | generation 4 bytes | MAC 32 bytes),
where MAC = HMAC-SHA256(refresh key, ``rt2`` | tag | family | generation).

Why a derived secret rather than a random one: every generation of a family has exactly one token,
which the service can derive again from the family id and the generation number. The store then keeps
only the current generation number (O(1) memory per family, however many rotations), and:

- a token of an older generation is provably one of ours, so presenting it is reuse, for the family's
  whole lifetime (no list of spent tokens to cap);
- a client whose answer was lost retries with the token it still holds and gets the *same* successor
  again, so a retry is not mistaken for theft and no second successor ever exists;
- a made-up token fails the MAC check here, before any store call or any identity's rate-limit bucket
  is touched.

The identity tag (a truncated SHA-256 of the identity) is the Redis Cluster hash tag that keeps an
identity's records in one slot. The refresh key never reaches the store: a store dump yields no token.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
import struct
from typing import NamedTuple

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from token_service.errors import InvalidGrant

PREFIX = "rt2."
_TAG_BYTES, _FAMILY_BYTES, _GENERATION_BYTES, _MAC_BYTES = 16, 8, 4, 32
_RAW_BYTES = _TAG_BYTES + _FAMILY_BYTES + _GENERATION_BYTES + _MAC_BYTES
_CHARS = _RAW_BYTES * 4 // 3  # a multiple of 3 bytes: base64 without padding
PATTERN = rf"^rt2\.[A-Za-z0-9_-]{{{_CHARS}}}$"  # also the OpenAPI description's schema of a refresh token
_SHAPE = re.compile(PATTERN)
MALFORMED = "the refresh token is malformed; sign in again"
NOT_OURS = "the refresh token is invalid, expired or revoked; sign in again"


class RefreshToken(NamedTuple):
    """A refresh token taken apart: whose it is (tag), which family, which generation."""

    value: str
    tag: str  # base64url, as identity_tag() makes it
    family_id: str  # base64url
    generation: int


def _text(raw: bytes) -> str:
    """Unpadded base64url: how tags and family ids appear in store keys (shorter keys, less memory)."""
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _raw(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def identity_tag(identity: str) -> str:
    """128 bits of SHA-256(identity): unique per identity for all practical purposes."""
    return _text(hashlib.sha256(identity.encode("utf-8")).digest()[:_TAG_BYTES])


def new_family_id() -> str:
    """64 random bits: a family id only has to be unique among one identity's families."""
    return _text(secrets.token_bytes(_FAMILY_BYTES))


def derive_refresh_key(dedicated: str | None, api_key_secret: str) -> bytes:
    """The HMAC key: the dedicated secret when set, else one derived (HKDF) from the API key secret.

    Deriving keeps a deployment to the secrets it already has; a dedicated key lets the Twilio API
    key rotate without signing everyone out (every refresh token is bound to this key).
    """
    material = (dedicated or api_key_secret).encode("utf-8")
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"token-service refresh token key v2")
    return hkdf.derive(material)


class RefreshTokens:
    """Mints and checks refresh tokens with one key (shared by every worker and replica)."""

    def __init__(self, key: bytes) -> None:
        self._mac = hmac.new(key, digestmod=hashlib.sha256)

    def _signature(self, body: bytes) -> bytes:
        mac = self._mac.copy()  # keyed once; copying is cheaper than keying per token
        mac.update(b"rt2")
        mac.update(body)
        return mac.digest()

    def mint(self, tag: str, family_id: str, generation: int) -> str:
        body = _raw(tag) + _raw(family_id) + struct.pack(">I", generation)
        return PREFIX + base64.urlsafe_b64encode(body + self._signature(body)).decode("ascii")

    def parse(self, value: str) -> RefreshToken:
        """The token's tag, family and generation, or ``InvalidGrant`` unless it is shaped like ours
        and its MAC holds (checked in constant time)."""
        if not _SHAPE.fullmatch(value):  # fullmatch: a trailing newline is not a token
            raise InvalidGrant(MALFORMED)
        try:  # 80 characters encode 60 bytes exactly: no padding, and only one encoding of each
            raw = base64.urlsafe_b64decode(value[len(PREFIX):])
        except (binascii.Error, ValueError):
            raise InvalidGrant(MALFORMED) from None
        body, mac = raw[:-_MAC_BYTES], raw[-_MAC_BYTES:]
        if not hmac.compare_digest(mac, self._signature(body)):
            raise InvalidGrant(NOT_OURS)
        tag, family, generation = body[:_TAG_BYTES], body[_TAG_BYTES:_TAG_BYTES + _FAMILY_BYTES], body[-4:]
        return RefreshToken(value, _text(tag), _text(family), struct.unpack(">I", generation)[0])
