"""Randomness for ids and tokens: the right sizes, and apart in every forked worker."""

from __future__ import annotations

import re

import pytest

from tests.support import in_forked_child
from token_service.entropy import token_bytes, token_hex

pytestmark = pytest.mark.unit


def test_sizes_and_alphabet() -> None:
    assert len(token_bytes(32)) == 32
    assert re.fullmatch(r"[0-9a-f]{32}", token_hex(16))
    assert len({token_hex(16) for _ in range(1000)}) == 1000


def test_forked_children_draw_apart_from_the_parent_and_each_other() -> None:
    token_bytes(32)  # the parent's generator is seeded and in use before the fork, as in gunicorn
    first, second = (in_forked_child(lambda: token_bytes(32))[1] for _ in range(2))
    mine = token_bytes(32)
    assert len(first) == len(second) == 32
    assert len({first, second, mine}) == 3
