"""The cached process id: right in the process that loaded it, and in every forked child."""

from __future__ import annotations

import logging
import os

import pytest

from token_service.logs import install_request_ids
from token_service.pid import current_pid

pytestmark = pytest.mark.unit


def test_current_pid_is_this_process() -> None:
    assert current_pid() == os.getpid()


def test_a_forked_child_sees_its_own_pid() -> None:
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child, as a gunicorn worker forked from the master
        try:
            os.write(write_end, f"{current_pid()} {os.getpid()}".encode())
        finally:
            os._exit(0)
    os.close(write_end)
    try:
        os.waitpid(pid, 0)
        seen, actual = os.read(read_end, 64).decode().split()
    finally:
        os.close(read_end)
    assert int(seen) == int(actual) == pid != os.getpid()


def test_log_records_carry_the_pid_without_asking_the_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    install_request_ids()
    monkeypatch.setattr(logging, "logProcesses", False)  # as configure_logging() sets it
    record = logging.getLogger("token_service.audit").makeRecord(
        "token_service.audit", logging.INFO, "(unknown file)", 0, "x", None, None)
    assert record.process == os.getpid()
