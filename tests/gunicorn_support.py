"""``token-service serve`` as operators run it: gunicorn in a child process, from a config file."""

from __future__ import annotations

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


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``token-service ARGS`` in a child process, from the repository root, with exactly ``env``."""
    return subprocess.run([*CLI, *args],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=60)


@dataclass
class Served:
    url: str
    output: str = ""  # everything gunicorn and the app printed, once stopped


@contextmanager
def gunicorn(config: Path, *, workers: int, env: dict[str, str] | None = None) -> Iterator[Served]:
    """Run ``token-service serve``; stop it with SIGTERM; check its output leaks no secret."""
    port = free_port()
    proc = subprocess.Popen(
        [*CLI, "serve", "--config", str(config),
         "--bind", f"127.0.0.1:{port}", "--workers", str(workers)],
        cwd=ROOT, env={**os.environ, **SERVICE_ENV, **(env or {})},
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
        assert not find_leaks(served.output)
