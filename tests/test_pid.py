"""The cached process id: right in the process that loaded it, and in every forked child."""

from __future__ import annotations

import os

import pytest

from tests.support import in_forked_child
from token_service.pid import current_pid

pytestmark = pytest.mark.unit


def test_current_pid_is_this_process() -> None:
    assert current_pid() == os.getpid()


def test_a_forked_child_sees_its_own_pid() -> None:
    pid, said = in_forked_child(lambda: f"{current_pid()} {os.getpid()}".encode())
    seen, actual = said.decode().split()
    assert int(seen) == int(actual) == pid != os.getpid()

