"""The refresh-token format: opaque, carrying identity tag, family and generation, proven ours by an HMAC."""

from __future__ import annotations

import base64

import pytest

from token_service.errors import InvalidGrant
from token_service.tokens.refresh import (
    RefreshTokens,
    derive_refresh_key,
    identity_tag,
    new_family_id,
)

pytestmark = pytest.mark.unit

TOKENS = RefreshTokens(derive_refresh_key(None, "test-api-key-secret-0123456789abcdef"))


def test_round_trip_and_determinism() -> None:
    tag, family = identity_tag("alice@example.com"), new_family_id()
    token = TOKENS.mint(tag, family, 7)
    parsed = TOKENS.parse(token)
    assert (parsed.tag, parsed.family_id, parsed.generation) == (tag, family, 7)
    # One token per generation: the same inputs give the same token (a retry gets the same successor) ...
    assert TOKENS.mint(tag, family, 7) == token
    # ... and every generation and family its own.
    assert len({TOKENS.mint(tag, family, g) for g in range(100)}) == 100
    assert TOKENS.mint(tag, new_family_id(), 7) != token


def test_tag_is_stable_and_token_reveals_no_identity() -> None:
    assert identity_tag("alice@example.com") == identity_tag("alice@example.com")
    assert identity_tag("alice@example.com") != identity_tag("Alice@example.com")
    assert "alice" not in TOKENS.mint(identity_tag("alice@example.com"), new_family_id(), 0)


def test_forged_tokens_fail_the_mac() -> None:
    """Without the key nobody can make a token for someone else's family, or move a token along."""
    tag, family = identity_tag("victim@example.com"), new_family_id()
    real = TOKENS.mint(tag, family, 3)
    other_key = RefreshTokens(derive_refresh_key("another-key-0123456789abcdef0123456789", "x"))
    raw = bytearray(base64.urlsafe_b64decode(real[4:]))
    raw[27] ^= 1  # generation 3 -> 2, MAC unchanged
    for forged in (other_key.mint(tag, family, 3), "rt2." + base64.urlsafe_b64encode(bytes(raw)).decode()):
        with pytest.raises(InvalidGrant, match="invalid"):
            TOKENS.parse(forged)


def test_a_dedicated_key_and_the_derived_one_differ() -> None:
    assert derive_refresh_key(None, "secret-a" * 4) != derive_refresh_key(None, "secret-b" * 4)
    assert derive_refresh_key("dedicated-key" * 3, "secret-a" * 4) == derive_refresh_key("dedicated-key" * 3, "other")
    assert len(derive_refresh_key(None, "secret-a" * 4)) == 32


@pytest.mark.parametrize(
    "bad",
    ["", "rt2.", "rt1." + "A" * 80, "rt2." + "A" * 79, "rt2." + "=" * 80, " rt2." + "A" * 80,
     "rt2." + "A" * 80 + "\n", "rt2." + "+" * 80],
)
def test_malformed_tokens_are_invalid_grant(bad: str) -> None:
    with pytest.raises(InvalidGrant, match="malformed"):
        TOKENS.parse(bad)
