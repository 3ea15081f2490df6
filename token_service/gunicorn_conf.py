"""The shipped gunicorn settings: ``token-service serve`` uses these unless told otherwise.

Packaged with the service, so ``serve`` and ``check-config`` read the same settings from any working
directory; ``--gunicorn-config`` or ``TOKEN_SERVICE_GUNICORN_CONFIG`` names another file (or a
``python:module``) instead. ``deploy/gunicorn.conf.py`` loads this module, for ``gunicorn -c``.

Every value can be overridden by an environment variable, so a container or unit file changes
behaviour without editing a file. gunicorn reads the module-level names listed in ``__all__``.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
from typing import Any

__all__ = [
    "bind", "workers", "worker_class", "threads", "worker_connections", "timeout", "graceful_timeout", "keepalive",
    "preload_app", "limit_request_line", "limit_request_field_size", "accesslog", "errorlog",
    "loglevel", "logger_class", "forwarded_allow_ips", "control_socket_disable", "control_socket",
    "child_exit", "when_ready", "post_request",
]



def _env(name: str, default: str) -> str:
    """``TOKEN_SERVICE_<name>``, or ``default`` when it is unset or empty."""
    return os.environ.get(f"TOKEN_SERVICE_{name}") or default


bind = [_env("BIND", "127.0.0.1:8000")]
# gevent: each worker is one event loop, and a request waiting on Redis or the IdP yields to the next
# one. gthread's hand-offs between its poller and its pool threads (a wake-up each way, and the GIL
# passed between threads) cost more than a refresh's own work; bench/shapes.py measures both, and
# the README's Benchmark section gives the figures. TOKEN_SERVICE_WORKER_CLASS=gthread brings
# threads back (TOKEN_SERVICE_THREADS each). ``token-service serve`` patches the standard library for
# gevent before it loads the app (this module has no side effects: tools read it in-process).
worker_class = _env("WORKER_CLASS", "gevent")
if worker_class not in ("gevent", "gthread", "sync"):
    raise ValueError(f"TOKEN_SERVICE_WORKER_CLASS={worker_class!r}: expected gevent, gthread or sync")
# Token minting is CPU-bound (signature checks, HMAC): one worker per core, plus one.
workers = int(_env("WORKERS", str(multiprocessing.cpu_count() + 1)))
threads = int(_env("THREADS", "4"))
# How many connections one gevent worker serves at once.
worker_connections = int(_env("WORKER_CONNECTIONS", "1000"))
timeout = int(_env("TIMEOUT", "30"))
graceful_timeout = int(_env("GRACEFUL_TIMEOUT", "20"))
keepalive = int(_env("KEEPALIVE", "5"))
# Build the app once in the master, then fork: workers share the loaded code.
preload_app = True
# Header limits: a bearer token is at most 16 KiB, so 32 KiB per header field is enough.
limit_request_line = 8190
limit_request_field_size = 32768
# gunicorn's access log is off unless TOKEN_SERVICE_ACCESS_LOG names a file or "-" (stdout): the
# gateway logs requests already. The app's own per-request line is [logging] access_log.
accesslog = _env("ACCESS_LOG", "") or None
errorlog = "-"
loglevel = _env("LOG_LEVEL", "info")
# gunicorn's own lines as JSON, like the app's, with credentials redacted (gunicorn_logger.py).
logger_class = "token_service.gunicorn_logger.JsonLogger"
# X-Forwarded-* is handled by the app ([server] trusted_proxies), not by gunicorn.
forwarded_allow_ips = ""
# gunicorn's control socket (gunicornc) is off: by default every gunicorn of one user shares
# $HOME/.gunicorn/gunicorn.ctl, and with an unwritable HOME (a container, systemd's
# ProtectSystem=strict) each start logs an error. TOKEN_SERVICE_CONTROL_SOCKET=/run/.../gunicorn.ctl
# turns it on at a path of this instance's own.
control_socket = _env("CONTROL_SOCKET", "")
control_socket_disable = not control_socket


def child_exit(server: Any, worker: Any) -> None:  # noqa: ARG001 - gunicorn hook signature
    """Drop a dead worker's live samples from the shared metrics directory."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)


def when_ready(server: Any) -> None:  # noqa: ARG001 - gunicorn hook signature
    """Freeze what the preloaded app made, before the workers are forked.

    The imports and the app are several hundred thousand objects that live as long as the process; the
    cyclic collector walked all of them in each worker's full collection, a pause of about 50 ms every
    few thousand requests (the refresh tail at p99). Frozen, they are never walked, and the workers'
    pages holding them are not copied on the collector's writes.
    """
    gc.freeze()


def post_request(worker: Any, req: Any, environ: Any, resp: Any) -> None:  # noqa: ARG001 - hook signature
    """In a gevent worker, let the other connections' requests run before this connection's next one.

    A greenlet serving a kept-alive connection reads the next request without yielding when it has
    already arrived, so a fast client could keep a worker to itself while the others' requests wait:
    under wrk (32 connections, 3 workers) the p99 of a bare Flask hello was 400-570 ms, and 14-26 ms
    with this yield (gthread: 22-31 ms).
    """
    if worker_class == "gevent":
        import gevent

        gevent.sleep(0)
