"""JSON log lines (``logs.py``): one object per line, written at once and in order, never a secret."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

import pytest

from token_service import __version__
from token_service.logs import AuditLog, JsonFormatter, configure_logging, redact, request_id_var

pytestmark = pytest.mark.unit


def line(msg: str, *args: object, level: int = logging.INFO, **extra: object) -> dict:
    record = logging.LogRecord("token_service.audit", level, "(unknown file)", 0, msg, args or None, None)
    record.__dict__.update(extra)
    return json.loads(JsonFormatter().format(record))


def test_message_level_logger_pid_version_and_extras() -> None:
    out = line("token issued", event="token_issued", identity="zoë@例え.jp", grace=False, families=3, skipped=None)
    assert out["msg"] == "token issued" and out["level"] == "info" and out["logger"] == "token_service.audit"
    assert out["pid"] == os.getpid() and out["version"] == __version__
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


# -------------------------------------------------------------------------------- redaction

VERIFIER = "kM3nJ0q-Xb8rT2vL9pYw4sZe7uHc1aGf6dNi5oQxRyK"
JWT = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlLWJ5dGVz"
REFRESH = "rt1.AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8"


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        (f"Using code_verifier: {VERIFIER!r}", VERIFIER),  # Authlib's flask client, at DEBUG
        ("GET /callback?code=Zx81kQ&state=st4te&iss=http%3A%2F%2Fidp HTTP/1.1", "Zx81kQ"),
        ("GET /callback?code=Zx81kQ&state=st4te&iss=http%3A%2F%2Fidp HTTP/1.1", "st4te"),
        (f"https://app.example/x?access_token={JWT}&page=2", JWT),
        ("https://app.example/x?refresh_token=opaque-value-1&page=2", "opaque-value-1"),
        ("POST /token body grant_type=authorization_code&code=c0de-value&code_verifier=v3rifier", "c0de-value"),
        ("POST /token body grant_type=authorization_code&code=c0de-value&code_verifier=v3rifier", "v3rifier"),
        (f"token response {{'access_token': 'at-value', 'id_token': '{JWT}'}}", "at-value"),
        ('{"refresh_token": "rt-value", "token_type": "Bearer"}', "rt-value"),
        (f"refresh token {REFRESH} presented", REFRESH),
        (f"a JWT somewhere: {JWT}", "eyJzdWIiOiJhbGljZSJ9"),
        ("Authorization: Bearer abcdefghijklmnopqrstuvwxyz0123", "abcdefghijklmnopqrstuvwxyz0123"),
        ("revoke token=opaque-revoked-token", "opaque-revoked-token"),
    ],
)
def test_credentials_are_redacted_wherever_they_appear(text: str, secret: str) -> None:
    assert secret not in redact(text)
    assert "[redacted]" in redact(text)
    assert secret not in json.dumps(line(text))
    assert secret not in json.dumps(line("fetched %s", text))  # through the message's arguments too
    assert secret not in json.dumps(line("x", detail=text))  # and through extra fields


@pytest.mark.parametrize(
    "text",
    [
        "invalid token: the signature does not verify",
        "the Authorization header must use the Bearer scheme",
        "GET /healthz HTTP/1.1 status code: 200",
        "refresh token reuse detected: family revoked",
        "GET /login?return_to=%2Fdemo%2F",
    ],
)
def test_lines_without_credentials_are_written_as_they_are(text: str) -> None:
    assert redact(text) == text
    assert line(text)["msg"] == text


def test_a_field_named_like_a_credential_is_redacted_whatever_its_value() -> None:
    out = line("odd caller", code="a-short-code", client_secret="s3cr3t", token="t0k3n", identity="alice")
    assert (out["code"], out["client_secret"], out["token"]) == ("[redacted]",) * 3
    assert out["identity"] == "alice"


def test_exception_text_is_redacted() -> None:
    try:
        raise ValueError(f"cannot parse /callback?code=Zx81kQ&state=1 with {JWT}")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, "", 0, "failed", None, sys.exc_info())
    text = JsonFormatter().format(record)
    assert "Zx81kQ" not in text and JWT not in text and "ValueError" in text


# ------------------------------------------------------------------------- writing, order, loss


@contextmanager
def configured(stream: io.TextIOBase) -> Iterator[None]:
    """``configure_logging`` writing to ``stream``; the root logger restored afterwards."""
    root = logging.getLogger()
    saved, saved_level = root.handlers[:], root.level
    configure_logging("INFO", stream)
    try:
        yield
    finally:
        root.handlers[:] = saved
        root.setLevel(saved_level)
        logging.captureWarnings(False)


def test_each_line_is_written_when_it_is_logged_and_each_threads_lines_keep_their_order(tmp_path) -> None:
    path = tmp_path / "log"
    audit = AuditLog("token_service.audit")
    with open(path, "w", encoding="utf-8") as stream, configured(stream):
        audit.info("token issued", extra={"event": "token_issued", "n": 0})
        # No flush, no close: the line is in the file already.
        assert json.loads(path.read_text(encoding="utf-8"))["event"] == "token_issued"

        def burst(worker: int) -> None:
            for n in range(200):
                audit.info("token refreshed", extra={"event": "token_refreshed", "worker": worker, "n": n})

        threads = [threading.Thread(target=burst, args=(w,)) for w in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        audit.warning("refresh token reuse detected", extra={"event": "refresh_reuse_detected"})
    lines = [json.loads(text) for text in path.read_text(encoding="utf-8").splitlines()]
    assert len(lines) == 1 + 4 * 200 + 1
    for worker in range(4):
        assert [x["n"] for x in lines if x.get("worker") == worker] == list(range(200))
    assert lines[-1]["event"] == "refresh_reuse_detected" and lines[-1]["level"] == "warning"


def test_audit_events_go_through_logging_like_every_other_line(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="token_service.audit"):
        AuditLog("token_service.audit").warning("reuse", extra={"event": "refresh_reuse_detected", "family": "f1"})
    (record,) = [r for r in caplog.records if r.name == "token_service.audit"]
    assert record.levelno == logging.WARNING and record.family == "f1"


def test_an_audit_line_logged_before_sigterm_is_not_lost() -> None:
    """A process killed by SIGTERM's default action runs no exit handler: the line must be out already."""
    program = (
        "import os, signal\n"
        "from token_service.logs import AuditLog, configure_logging\n"
        "configure_logging('INFO')\n"
        "AuditLog('token_service.audit').info('identity revoked', extra={'event': 'identity_revoked'})\n"
        "os.kill(os.getpid(), signal.SIGTERM)\n"
    )
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60)
    assert done.returncode == -15
    (only,) = [json.loads(text) for text in done.stderr.splitlines()]
    assert only["event"] == "identity_revoked"


def test_python_warnings_become_json_lines(tmp_path) -> None:
    import warnings

    path = tmp_path / "log"
    with open(path, "w", encoding="utf-8") as stream, configured(stream):
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.warn("something deprecated", DeprecationWarning, stacklevel=1)
    (warned,) = [json.loads(text) for text in path.read_text(encoding="utf-8").splitlines()]
    assert warned["logger"] == "py.warnings" and "something deprecated" in warned["msg"]
