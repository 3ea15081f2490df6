"""JSON log lines: one object per line, the message plus any ``extra`` fields.

Callers put identifiers (identity, jti, sub, issuer) in ``extra``; never tokens or secrets.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
import weakref
from collections.abc import Iterable
from contextvars import ContextVar
from typing import Any, TextIO

import orjson

from token_service.pid import current_pid

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)

_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


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
        return json.dumps(line, default=str)


def _json_line(ts: str, level: str, logger: str, msg: str, fields: Iterable[tuple[str, Any]]) -> dict[str, Any]:
    """One log line's object: time, level, logger and message, then every field that has a value."""
    line = {"ts": ts, "level": level.lower(), "logger": logger, "msg": msg}
    for key, value in fields:
        if value is not None:
            line[key] = value
    return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        extras = ((k, v) for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_"))
        line = _json_line(_timestamp(record.created, record.msecs), record.levelname, record.name,
                          record.getMessage(), extras)
        if record.exc_info:
            line["exc_type"] = record.exc_info[0].__name__ if record.exc_info[0] else None
            line["exc"] = self.formatException(record.exc_info)
        return _dumps(line)


_base_factory = logging.getLogRecordFactory()


def _record_with_request_id(*args: object, **kwargs: object) -> logging.LogRecord:
    record = _base_factory(*args, **kwargs)  # type: ignore[arg-type]
    record.request_id = request_id_var.get()
    if record.process is None:  # configure_logging() turned the system call off: same value, from memory
        record.process = current_pid()
    return record


def install_request_ids() -> None:
    """Every log record, from any logger or handler, carries the current request id."""
    if logging.getLogRecordFactory() is not _record_with_request_id:
        logging.setLogRecordFactory(_record_with_request_id)


class BatchingStreamHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Log lines written in batches: at most ``interval`` seconds late, warnings and errors at once.

    Why: each write is a system call that releases the GIL, and under gunicorn's threads every
    release on the request path is a hand-off to another thread and back. A token request writes
    an audit line, so one write per request cost more CPU than the line itself (``make bench``,
    README). Batched, a busy worker writes a few times a second. What a batch risks: a worker
    killed outright (SIGKILL) loses at most ``interval`` seconds of info lines; a normal exit
    flushes (``logging.shutdown``), and a warning (a refresh token reused) is written at once,
    with everything before it. nginx's buffered ``access_log ... flush=`` makes the same trade.
    """

    MAX_PENDING = 1000  # lines: a burst is written before it grows large

    def __init__(self, stream: TextIO, interval: float) -> None:
        super().__init__(stream)
        self.interval = interval
        self._pending: list[str] = []
        self._flusher: threading.Thread | None = None
        self._closed = threading.Event()
        handler = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: (h := handler()) is not None and h._forget_parent())

    def _forget_parent(self) -> None:
        """In a forked child: the parent writes its own pending lines, and its flusher is not here
        (nor, perhaps, the event's lock it held mid-wait at the fork)."""
        self._pending = []
        self._flusher = None
        self._closed = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        # handle() holds self.lock around emit(), so the list is only touched under the lock.
        try:
            line = self.format(record)
        except Exception:  # noqa: BLE001 - logging must not raise into the request
            self.handleError(record)
            return
        self._add(line, record.levelno)

    def add_line(self, line: str, level: int) -> None:
        """A line formatted elsewhere (``AuditLog``), batched like any record's."""
        with self.lock:  # type: ignore[union-attr]
            self._add(line, level)

    def _add(self, line: str, level: int) -> None:
        self._pending.append(line + self.terminator)
        if level >= logging.WARNING or len(self._pending) >= self.MAX_PENDING:
            self._write_pending()
        elif self._flusher is None:
            self._flusher = threading.Thread(target=self._flush_periodically, name="log-flusher", daemon=True)
            self._flusher.start()

    def _write_pending(self) -> None:
        lines, self._pending = self._pending, []
        try:
            if lines:
                self.stream.write("".join(lines))
            self.stream.flush()
        except (OSError, ValueError):  # a closed or broken stream: the lines are lost, never the request
            pass

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            self._write_pending()

    def _flush_periodically(self) -> None:
        while not self._closed.wait(self.interval):
            self.flush()

    def close(self) -> None:
        self._closed.set()
        self.flush()
        super().close()


def configure_logging(level: str = "INFO", flush_interval: float = 0.0) -> None:
    """Send JSON lines to stderr (where gunicorn and containers collect them).

    With ``flush_interval`` > 0 they are written in batches (``BatchingStreamHandler``); with 0,
    each line at once. No line here or in gunicorn's own log names its caller, thread or
    multiprocessing process, so records skip looking them up (a stack walk and two lookups on every
    line; the switches of the logging HOWTO's "Optimization" section). The process id stays, as
    gunicorn's lines print it, but from ``pid.current_pid()`` rather than a system call per record.
    """
    logging._srcfile = None  # type: ignore[attr-defined]
    logging.logThreads = False
    logging.logMultiprocessing = False
    logging.logProcesses = False  # the record factory fills the process id in from memory instead
    install_request_ids()
    handler = (
        BatchingStreamHandler(sys.stderr, flush_interval) if flush_interval > 0 else logging.StreamHandler(sys.stderr)
    )
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    for old in root.handlers:
        if isinstance(old, BatchingStreamHandler):
            old.close()  # its pending lines, and its flusher thread
    root.handlers[:] = [handler]
    root.setLevel(level)


class AuditLog:
    """``token_service.audit``: the security events, one JSON line each, on the request path.

    Why not ``Logger.info(extra=...)`` alone: a log record (its attributes, the handler chain, the
    formatter's walk over them) costs more CPU than anything else a refresh does in Python besides
    the store call. When the service's own batching handler is the only place lines go (as
    ``configure_logging`` sets it up), the line is built here from the fields instead: the same JSON
    keys a ``JsonFormatter`` writes. Otherwise (another handler anywhere, as pytest's ``caplog``
    adds) the event goes through ``logging`` as usual.
    """

    def __init__(self, name: str) -> None:
        self.logger = logging.getLogger(name)

    def info(self, msg: str, *, extra: dict[str, Any]) -> None:
        self._log(logging.INFO, msg, extra)

    def warning(self, msg: str, *, extra: dict[str, Any]) -> None:
        self._log(logging.WARNING, msg, extra)

    def _log(self, level: int, msg: str, fields: dict[str, Any]) -> None:
        logger = self.logger
        if not logger.isEnabledFor(level):
            return
        handlers = logging.root.handlers
        direct = handlers[0] if len(handlers) == 1 else None
        if not isinstance(direct, BatchingStreamHandler) or logger.handlers or not logger.propagate:
            logger.log(level, msg, extra=fields)
            return
        now = time.time()
        # The record factory puts request_id first among a record's own fields: the same order here.
        line = _json_line(_timestamp(now, (now - int(now)) * 1000), logging.getLevelName(level), logger.name, msg,
                          (("request_id", request_id_var.get()), *fields.items()))
        direct.add_line(_dumps(line), level)
