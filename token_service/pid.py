"""The current process id without a system call: read once, and again in a forked child.

Why: ``os.getpid()`` is a system call (glibc stopped caching it), and the request path asked for it
several times per request (prometheus-client's multiprocess values, log records, the store's
per-thread connections), each time to notice a fork that gunicorn makes once per worker.
"""

from __future__ import annotations

import os

_pid = os.getpid()


def _forked() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_forked)


def current_pid() -> int:
    return _pid
