"""The refresh-token format: opaque, 256 bits of secret, carrying its identity tag and family."""

from __future__ import annotations

import base64
import os

import pytest

from token_service.b64url import b64url
from token_service.errors import InvalidGrant
from token_service.tokens.refresh import (
    digest,
    identity_tag,
    mint_refresh_token,
    new_family_id,
    parse_refresh_token,
)

pytestmark = pytest.mark.unit


def test_b64url_is_unpadded_urlsafe_base64() -> None:
    """Every length (so every padding case), and bytes that need the URL-safe characters."""
    for data in [os.urandom(n) for n in range(70)] + [b"\xfb\xff\xbf", b"\xff" * 10]:
        expected = base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")
        assert b64url(data) == expected
    assert b64url(b"\xfb\xff\xbf") == "-_-_"


def test_round_trip_and_uniqueness() -> None:
    tag, family = identity_tag("alice@example.com"), new_family_id()
    tokens = {mint_refresh_token(tag, family).value for _ in range(100)}
    assert len(tokens) == 100
    parsed = parse_refresh_token(next(iter(tokens)))
    assert (parsed.tag, parsed.family_id) == (tag, family)
    assert parsed.digest == digest(parsed.value) and len(parsed.digest) == 64


def test_tag_is_stable_and_reveals_no_identity() -> None:
    assert identity_tag("alice@example.com") == identity_tag("alice@example.com")
    assert identity_tag("alice@example.com") != identity_tag("Alice@example.com")
    token = mint_refresh_token(identity_tag("alice@example.com"), new_family_id()).value
    assert "alice" not in token


@pytest.mark.parametrize(
    "bad",
    ["", "rt1.", "rt2." + "A" * 75, "rt1." + "A" * 74, "rt1." + "=" * 75, " rt1." + "A" * 75, "rt1." + "A" * 75 + "\n"],
)
def test_malformed_tokens_are_invalid_grant(bad: str) -> None:
    with pytest.raises(InvalidGrant, match="malformed"):
        parse_refresh_token(bad)
