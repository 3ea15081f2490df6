"""The cached process id: right in the process that loaded it, and in every forked child."""

from __future__ import annotations

import logging
import os

import pytest

from tests.support import in_forked_child
from token_service.logs import install_request_ids
from token_service.pid import current_pid

pytestmark = pytest.mark.unit


def test_current_pid_is_this_process() -> None:
    assert current_pid() == os.getpid()


def test_a_forked_child_sees_its_own_pid() -> None:
    pid, said = in_forked_child(lambda: f"{current_pid()} {os.getpid()}".encode())
    seen, actual = said.decode().split()
    assert int(seen) == int(actual) == pid != os.getpid()


def test_log_records_carry_the_pid_without_asking_the_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    install_request_ids()
    monkeypatch.setattr(logging, "logProcesses", False)  # as configure_logging() sets it
    record = logging.getLogger("token_service.audit").makeRecord(
        "token_service.audit", logging.INFO, "(unknown file)", 0, "x", None, None)
    assert record.process == os.getpid()
