"""JSON log lines (``logs.py``): one object per line, extras included, never a crash on odd values."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

import pytest

from token_service.logs import JsonFormatter, request_id_var

pytestmark = pytest.mark.unit


def line(msg: str, **extra: object) -> dict:
    record = logging.LogRecord("token_service.audit", logging.INFO, "(unknown file)", 0, msg, None, None)
    record.__dict__.update(extra)
    return json.loads(JsonFormatter().format(record))


def test_message_level_logger_and_extras() -> None:
    out = line("token issued", event="token_issued", identity="zoë@例え.jp", grace=False, families=3, skipped=None)
    assert out["msg"] == "token issued" and out["level"] == "info" and out["logger"] == "token_service.audit"
    assert out["identity"] == "zoë@例え.jp"  # UTF-8 text, read back exactly
    assert out["grace"] is False and out["families"] == 3
    assert "skipped" not in out  # None-valued extras are left out
    assert out["ts"].endswith("Z") and len(out["ts"]) == len("2026-11-21T08:00:00.000Z")
    # Standard LogRecord attributes are not extras.
    assert not {"pathname", "thread", "threadName", "processName", "args"} & set(out)


def test_values_json_cannot_hold_natively_are_written_as_text() -> None:
    when = datetime(2026, 11, 21, 8, 0, tzinfo=UTC)
    out = line("odd values", big=2**70, when=when, obj=ValueError("nope"))
    assert out["big"] == 2**70  # past 64 bits: still a JSON number, not a lost line
    assert isinstance(out["when"], str) and out["when"].startswith("2026-11-21")
    assert out["obj"] == "nope"


def test_request_id_is_on_every_line_of_the_request() -> None:
    from token_service.logs import install_request_ids

    install_request_ids()
    token = request_id_var.set("req-123")
    try:
        record = logging.getLogger("token_service.audit").makeRecord(
            "token_service.audit", logging.INFO, "(unknown file)", 0, "x", None, None
        )
    finally:
        request_id_var.reset(token)
    assert json.loads(JsonFormatter().format(record))["request_id"] == "req-123"
