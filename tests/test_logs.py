"""JSON log lines (``logs.py``): one object per line, extras included, never a crash on odd values."""

from __future__ import annotations

import json
import logging
from contextlib import contextmanager
from datetime import UTC, datetime

import pytest

from tests.support import in_forked_child
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


@contextmanager
def _batching(path, interval: float = 60.0):
    """A batching handler writing to ``path``; closed (pending lines written) on the way out."""
    from token_service.logs import BatchingStreamHandler

    with open(path, "w", encoding="utf-8") as stream:
        handler = BatchingStreamHandler(stream, interval)
        handler.setFormatter(JsonFormatter())
        try:
            yield handler
        finally:
            handler.close()  # as logging.shutdown does at a normal exit


def _emit(handler, msg: str, level: int = logging.INFO) -> None:
    handler.handle(logging.LogRecord("token_service.audit", level, "(unknown file)", 0, msg, None, None))


def _messages(path) -> list[str]:
    return [json.loads(text)["msg"] for text in path.read_text(encoding="utf-8").splitlines()]


def test_batched_lines_wait_for_a_warning_or_a_flush_and_keep_their_order(tmp_path) -> None:
    path = tmp_path / "log"
    with _batching(path) as handler:
        _emit(handler, "issued 1")
        _emit(handler, "issued 2")
        assert _messages(path) == []  # held: the interval (60 s) has not passed
        _emit(handler, "reuse detected", logging.WARNING)
        assert _messages(path) == ["issued 1", "issued 2", "reuse detected"]  # a warning goes at once
        _emit(handler, "issued 3")
        handler.flush()
        assert _messages(path) == ["issued 1", "issued 2", "reuse detected", "issued 3"]
        _emit(handler, "issued 4")
    assert _messages(path)[-1] == "issued 4"  # closing wrote what was pending


def test_batched_lines_are_written_within_the_interval(tmp_path) -> None:
    import time

    path = tmp_path / "log"
    with _batching(path, interval=0.05) as handler:
        _emit(handler, "issued")
        deadline = time.monotonic() + 10  # a bound for a loaded machine, not a speed check
        while _messages(path) != ["issued"]:
            assert time.monotonic() < deadline, "the flusher thread never wrote the line"
            time.sleep(0.01)


def test_a_forked_worker_does_not_write_its_parents_pending_lines_again(tmp_path) -> None:
    path = tmp_path / "log"
    with _batching(path) as handler:
        _emit(handler, "parent, before the fork")
        in_forked_child(lambda: _emit(handler, "child", logging.WARNING) or b"")
    assert sorted(_messages(path)) == ["child", "parent, before the fork"]


def test_audit_lines_written_directly_match_those_written_through_logging(tmp_path) -> None:
    """``AuditLog`` skips the log record when the batching handler is the only destination; the
    line must be the one ``logging`` and ``JsonFormatter`` would have written (the time aside)."""
    from token_service.logs import AuditLog, install_request_ids

    install_request_ids()
    audit = AuditLog("token_service.audit")
    fields = {"event": "token_refreshed", "identity": "zoë@example.com", "grace": False, "skipped": None}
    root = logging.getLogger()
    saved, saved_level = root.handlers[:], root.level
    token = request_id_var.set("req-9")
    path = tmp_path / "log"
    try:
        with _batching(path) as handler:
            records: list[logging.LogRecord] = []
            handler.addFilter(lambda record: records.append(record) or True)  # sees records only
            root.handlers[:] = [handler]  # as configure_logging() leaves it: the direct path
            root.setLevel(logging.INFO)
            audit.info("token refreshed", extra=fields)
            audit.warning("refresh token reuse detected", extra=fields)
            assert records == []  # no log record was made
            root.handlers.append(logging.NullHandler())  # another destination: through logging
            audit.info("token refreshed", extra=fields)
            audit.warning("refresh token reuse detected", extra=fields)
            assert len(records) == 2
    finally:
        root.handlers[:] = saved
        root.setLevel(saved_level)
        request_id_var.reset(token)
    lines = [json.loads(text) for text in path.read_text(encoding="utf-8").splitlines()]
    for line in lines:
        assert line.pop("ts").endswith("Z")
    direct, through_logging = lines[:2], lines[2:]
    assert direct == through_logging
    keys = ["level", "logger", "msg", "request_id", "event", "identity", "grace"]
    assert [list(line) for line in direct] == [keys, keys]
    assert direct[1]["level"] == "warning" and direct[0]["identity"] == "zoë@example.com"


def test_a_broken_log_stream_loses_lines_but_never_raises(tmp_path) -> None:
    with _batching(tmp_path / "log") as handler:
        handler.stream.close()  # as a closed stderr pipe would be
        _emit(handler, "reuse detected", logging.WARNING)  # written at once: into a closed stream
        handler.add_line('{"msg": "direct"}', logging.WARNING)
