"""JSON log lines: one object per line, the message plus any ``extra`` fields.

Callers put identifiers (identity, jti, sub, issuer) in ``extra``; never tokens or secrets.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from contextvars import ContextVar

import orjson

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)

_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    _second: tuple[int, str] = (-1, "")  # the last second formatted: most lines share it

    def _timestamp(self, record: logging.LogRecord) -> str:
        seconds = int(record.created)
        cached, text = self._second
        if cached != seconds:
            text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
            self._second = (seconds, text)
        return f"{text}.{int(record.msecs):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "ts": self._timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_") and value is not None:
                line[key] = value
        if record.exc_info:
            line["exc_type"] = record.exc_info[0].__name__ if record.exc_info[0] else None
            line["exc"] = self.formatException(record.exc_info)
        # orjson: several times faster than json on a line every request writes. Anything else is
        # written as str(); what orjson refuses outright (integers past 64 bits) goes through json.
        try:
            return orjson.dumps(line, default=str).decode()
        except TypeError:
            return json.dumps(line, default=str)


_base_factory = logging.getLogRecordFactory()


def _record_with_request_id(*args: object, **kwargs: object) -> logging.LogRecord:
    record = _base_factory(*args, **kwargs)  # type: ignore[arg-type]
    record.request_id = request_id_var.get()
    return record


def install_request_ids() -> None:
    """Every log record, from any logger or handler, carries the current request id."""
    if logging.getLogRecordFactory() is not _record_with_request_id:
        logging.setLogRecordFactory(_record_with_request_id)


def configure_logging(level: str = "INFO") -> None:
    """Send JSON lines to stderr (where gunicorn and containers collect them).

    No line here or in gunicorn's own log names its caller, thread or multiprocessing process, so
    records skip looking them up (a stack walk and two lookups on every line; the switches of the
    logging HOWTO's "Optimization" section). The process id stays: gunicorn's lines print it.
    """
    logging._srcfile = None  # type: ignore[attr-defined]
    logging.logThreads = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
