"""``token-service serve`` as operators run it: gunicorn in a child process, from a config file."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from tests.redis_servers import free_port
from tests.support import ROOT, SERVICE_ENV, find_leaks


def dev_config(tmp_path: Path, issuer: str, *, store_url: str = "memory://", extra: str = "") -> Path:
    """``dev/config.toml`` pointed at a test IdP (and store), plus extra TOML at the end."""
    text = (ROOT / "dev" / "config.toml").read_text().replace("http://127.0.0.1:9000", issuer)
    text = text.replace('url = "memory://"', f'url = "{store_url}"') + extra
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


CLI = [sys.executable, "-m", "token_service.cli"]  # ``token-service`` of this checkout


def run_cli(*args: str, env: dict[str, str], cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """``token-service ARGS`` in a child process, from ``cwd`` (the repository root), with exactly ``env``."""
    return subprocess.run([*CLI, *args],
                          capture_output=True, text=True, env=env, cwd=cwd, timeout=60)


def json_lines(output: str) -> list[dict[str, Any]]:
    """Every line the service wrote, parsed: each one must be a JSON object with pid and version."""
    parsed = []
    for text in output.splitlines():
        if not text.strip():
            continue
        try:
            line = json.loads(text)
        except ValueError:
            raise AssertionError(f"not a JSON log line: {text!r}") from None
        assert isinstance(line, dict) and {"ts", "level", "logger", "msg", "pid", "version"} <= set(line), text
        parsed.append(line)
    return parsed


@dataclass
class Served:
    url: str
    output: str = ""  # everything gunicorn and the app printed, once stopped

    @property
    def lines(self) -> list[dict[str, Any]]:
        return json_lines(self.output)


@contextmanager
def gunicorn(config: Path, *, workers: int | None, env: dict[str, str] | None = None, cwd: Path = ROOT,
             port: int | None = None) -> Iterator[Served]:
    """Run ``token-service serve`` from ``cwd``; stop it with SIGTERM; check that its output is JSON
    lines and leaks no secret. ``workers=None``: as many as the gunicorn settings say."""
    port = port or free_port()
    proc = subprocess.Popen(
        [*CLI, "serve", "--config", str(config), "--bind", f"127.0.0.1:{port}",
         *(["--workers", str(workers)] if workers else [])],
        cwd=cwd, env={**os.environ, **SERVICE_ENV, **(env or {})},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    served = Served(f"http://127.0.0.1:{port}")
    # Drained as it comes: a full pipe would block the service's next log write (and every request).
    lines: list[str] = []
    assert proc.stdout is not None
    drain = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)  # type: ignore[arg-type]
    drain.start()
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if requests.get(f"{served.url}/healthz", timeout=1).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                drain.join(timeout=10)
                raise AssertionError(f"gunicorn did not start: {''.join(lines)}")
            time.sleep(0.2)
        yield served
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        drain.join(timeout=10)
        proc.stdout.close()
        served.output = "".join(lines)
        assert "Traceback" not in served.output
        assert not find_leaks(served.output), find_leaks(served.output)
        json_lines(served.output)
