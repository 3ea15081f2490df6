"""Debian tools the tests run (redis-server, nginx, chromium): found, or installed once as root.

A clean CI machine may lack them; ``make test`` runs as root there, so the first test that needs a
tool installs its package with apt-get. A failure is remembered, so later tests fail fast with the
same message instead of retrying a slow install.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from collections.abc import Sequence
from pathlib import Path

_lock = threading.Lock()
_failures: dict[str, str] = {}
_updated = False


class ToolUnavailable(RuntimeError):
    """The tool is missing and could not be installed here."""


def _find(binary: str) -> str | None:
    found = shutil.which(binary)
    if found:
        return found
    # /usr/sbin is not on every PATH (non-root shells, some CI runners).
    for folder in ("/usr/bin", "/usr/sbin"):
        candidate = Path(folder) / binary
        if os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def _apt(command: list[str]) -> str | None:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    result = subprocess.run(command, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, check=False)
    if result.returncode == 0:
        return None
    tail = "\n".join(result.stdout.splitlines()[-20:])
    return f"`{' '.join(command)}` failed with status {result.returncode}:\n{tail}"


def ensure_tool(binary: str, packages: Sequence[str], *, recommends: bool = False) -> str:
    """Path of ``binary``, installing the first of ``packages`` that apt-get can install.

    ``recommends`` also installs recommended packages (a browser wants its fonts).
    """
    global _updated
    with _lock:
        path = _find(binary)
        if path:
            return path
        if binary in _failures:
            raise ToolUnavailable(_failures[binary])
        if os.geteuid() != 0 or shutil.which("apt-get") is None:
            _failures[binary] = (f"{binary} is not installed and cannot be installed automatically (needs root "
                                 f"and apt-get); install it with `sudo apt-get install {packages[0]}`")
            raise ToolUnavailable(_failures[binary])
        problems = []
        if not _updated:
            failure = _apt(["apt-get", "update", "-qq"])
            if failure:
                problems.append(failure)
            _updated = True
        for package in packages:
            extra = [] if recommends else ["--no-install-recommends"]
            failure = _apt(["apt-get", "install", "-y", "-qq", *extra, package])
            path = _find(binary)
            if path:
                return path
            problems.append(failure or f"apt-get installed {package} but found no {binary}")
        _failures[binary] = "\n".join(problems)
        raise ToolUnavailable(_failures[binary])
