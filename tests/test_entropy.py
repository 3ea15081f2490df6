"""Randomness for ids and tokens: the right sizes, and apart in every forked worker."""

from __future__ import annotations

import os
import re

import pytest

from token_service.entropy import token_bytes, token_hex

pytestmark = pytest.mark.unit


def test_sizes_and_alphabet() -> None:
    assert len(token_bytes(32)) == 32
    assert re.fullmatch(r"[0-9a-f]{32}", token_hex(16))
    assert len({token_hex(16) for _ in range(1000)}) == 1000


def _draw_in_child() -> bytes:
    """32 bytes drawn by a forked child, as a gunicorn worker forked from the preloaded app draws."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.write(write_end, token_bytes(32))
        finally:
            os._exit(0)
    os.close(write_end)
    try:
        os.waitpid(pid, 0)
        return os.read(read_end, 64)
    finally:
        os.close(read_end)


def test_forked_children_draw_apart_from_the_parent_and_each_other() -> None:
    token_bytes(32)  # the parent's generator is seeded and in use before the fork, as in gunicorn
    first, second = _draw_in_child(), _draw_in_child()
    mine = token_bytes(32)
    assert len(first) == len(second) == 32
    assert len({first, second, mine}) == 3
