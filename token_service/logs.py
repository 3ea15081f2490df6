"""JSON log lines on stderr: one object per line, for the app, gunicorn and the CLI alike.

Plain stdlib ``logging``: one ``StreamHandler`` with ``JsonFormatter``. Each line is written as it
is logged, under the handler's lock, so the lines of one process keep their order and none waits
in a buffer when the process ends (SIGTERM, an exception, ``sys.exit``). Every line carries the
process id, the service version and the current request id.

Callers put identifiers (identity, jti, sub, issuer, family) in ``extra``; never tokens or secrets.
The formatter also redacts what libraries may write at DEBUG (Authlib logs the PKCE
``code_verifier``) and what request lines carry (``/callback?code=...``, ``access_token``,
``refresh_token`` and ``code`` parameters in a query string or a ``Referer``): see ``redact``.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from contextvars import ContextVar
from typing import Any, TextIO

import orjson

from token_service import __version__

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)

_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}

REDACTED = "[redacted]"
# Parameter and member names whose values are credentials, wherever they appear.
_SECRET_NAMES = (
    r"code|code_verifier|access_token|refresh_token|id_token|logout_token|subject_token|token"
    r"|client_secret|password|session_key"
)
_REDACTIONS: tuple[tuple[re.Pattern[str], str], ...] = (
    # Whatever follows /callback? (code, state, session_state, iss): the OAuth redirect's query.
    (re.compile(r"(/callback\?)[^\s\"'#]*"), rf"\1{REDACTED}"),
    # name: 'value', 'name': "value", "name":"value" (reprs of dicts, f-strings, JSON).
    (re.compile(rf"(?<![\w-])((?:{_SECRET_NAMES})['\"]?\s*[:=]\s*)(['\"])(?:(?!\2).)*\2"), rf"\1\2{REDACTED}\2"),
    # name=value in a query string or form body.
    (re.compile(rf"(?<![\w-])((?:{_SECRET_NAMES})=)(?!['\"])[^&\s\"'#;,)]+"), rf"\1{REDACTED}"),
    # The credentials themselves, wherever they turn up: JWTs, refresh tokens, bearer values.
    (re.compile(r"eyJ[A-Za-z0-9_-]{8,}(?:\.[A-Za-z0-9_-]*){0,2}"), REDACTED),
    (re.compile(r"rt\d\.[A-Za-z0-9_-]{8,}"), REDACTED),
    (re.compile(r"(Bearer\s+)[A-Za-z0-9._~+/=-]{16,}", re.IGNORECASE), rf"\1{REDACTED}"),
)
# Cheap screens first, so a line's ordinary values (identities, ids, addresses) cost one scan: a
# credential has one of these shapes, and a name=value or name: value pair needs '=' or ':'.
_CREDENTIAL_SHAPE = re.compile(r"/callback\?|eyJ|rt\d\.|[Bb]earer|BEARER")
_NAME_VALUE = re.compile(rf"(?<![\w-])(?:{_SECRET_NAMES})['\"]?\s*[:=]", re.IGNORECASE)
_SECRET_FIELDS = frozenset(_SECRET_NAMES.split("|"))
# Fields the formatter itself writes: never a credential.
_OWN_FIELDS = frozenset({"ts", "level", "logger", "pid", "version"})


def _may_hold_a_secret(text: str) -> bool:
    if _CREDENTIAL_SHAPE.search(text):
        return True
    return ("=" in text or ":" in text) and _NAME_VALUE.search(text) is not None


def redact(text: str) -> str:
    """``text`` with every credential the patterns above recognise replaced by ``[redacted]``."""
    if not _may_hold_a_secret(text):
        return text
    for pattern, replacement in _REDACTIONS:
        text = pattern.sub(replacement, text)
    return text


_second: tuple[int, str] = (-1, "")  # the last second formatted: most lines share it


def _timestamp(created: float, msecs: float) -> str:
    global _second
    seconds = int(created)
    cached, text = _second
    if cached != seconds:
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
        _second = (seconds, text)
    return f"{text}.{int(msecs):03d}Z"


def _dumps(line: dict[str, Any]) -> str:
    # orjson: several times faster than json on a line every request writes. Anything else is
    # written as str(); what orjson refuses outright (integers past 64 bits) goes through json.
    try:
        return orjson.dumps(line, default=str).decode()
    except TypeError:
        return json.dumps(line, default=str, ensure_ascii=False)


def _redacted(line: dict[str, Any]) -> dict[str, Any]:
    """The line as it may be written: a credential-named field never, string values redacted.

    One screen over all of a line's strings first: most lines hold nothing to redact.
    """
    strings = [v for k, v in line.items() if k not in _OWN_FIELDS and isinstance(v, str)]
    if not _SECRET_FIELDS.intersection(line) and not _may_hold_a_secret("\n".join(strings)):
        return line
    return {
        key: REDACTED if key in _SECRET_FIELDS else redact(value) if isinstance(value, str) else value
        for key, value in line.items()
    }


class JsonFormatter(logging.Formatter):
    """A record as one JSON object: time, level, logger, message, pid, version, request id, extras."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": _timestamp(record.created, record.msecs),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            "pid": record.process,
            "version": __version__,
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_") and value is not None:
                line[key] = value
        if record.exc_info:
            line["exc_type"] = record.exc_info[0].__name__ if record.exc_info[0] else None
            line["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = record.stack_info
        return _dumps(_redacted(line))


_base_factory = logging.getLogRecordFactory()


def _record_with_request_id(*args: object, **kwargs: object) -> logging.LogRecord:
    record = _base_factory(*args, **kwargs)  # type: ignore[arg-type]
    record.request_id = request_id_var.get()
    return record


def install_request_ids() -> None:
    """Every log record, from any logger or handler, carries the current request id."""
    if logging.getLogRecordFactory() is not _record_with_request_id:
        logging.setLogRecordFactory(_record_with_request_id)


def json_handler(stream: TextIO | None = None) -> logging.Handler:
    """A handler writing JSON lines to ``stream`` (stderr by default), each line at once."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter())
    return handler


def configure_logging(level: str = "INFO", stream: TextIO | None = None) -> None:
    """Send every log line, JSON, to stderr (where gunicorn, systemd and containers collect them).

    No line names its thread or multiprocessing process, so records skip looking them up (the
    logging HOWTO's "Optimization" switches); the process id stays. Python warnings become log
    lines too.
    """
    logging.logThreads = False
    logging.logMultiprocessing = False
    install_request_ids()
    root = logging.getLogger()
    root.handlers[:] = [json_handler(stream)]
    root.setLevel(level)
    logging.captureWarnings(True)


class AuditLog:
    """``token_service.audit``: the security events, one JSON line each, through ``logging``.

    A thin wrapper over the stdlib logger, kept so callers name the events' logger in one way.
    """

    def __init__(self, name: str) -> None:
        self.logger = logging.getLogger(name)

    def info(self, msg: str, *, extra: dict[str, Any]) -> None:
        self.logger.info(msg, extra=extra)

    def warning(self, msg: str, *, extra: dict[str, Any]) -> None:
        self.logger.warning(msg, extra=extra)
