"""``make run``: the service on its embedded defaults plus the DEVELOPMENT identity provider.

Starts ``python -m devidp serve`` (oidc-provider on 127.0.0.1:9000, development only) and then
``token-service serve`` with ``dev/config.toml`` (memory store, one worker) on 127.0.0.1:8000,
prints what to do next, and stops both on Ctrl-C.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
IDP = "http://127.0.0.1:9000"
SERVICE = "http://127.0.0.1:8000"

NEXT_STEPS = f"""
================================================================================
 token-service is running at {SERVICE} (development mode, memory store)
 Development identity provider at {IDP}: users alice, bob (admin), carol, dave
 (DEVELOPMENT ONLY: it signs in anyone who picks a name. Never deploy it.)

 Browser: open {SERVICE}/demo/ and sign in (pick alice or bob at the IdP).

 Or, in another terminal, from {ROOT}:
   ID_TOKEN=$(.venv/bin/python -m devidp token alice)
   curl -s -X POST {SERVICE}/v1/token -H "Authorization: Bearer $ID_TOKEN"
   curl -s {SERVICE}/readyz

 Ctrl-C stops both.
================================================================================
"""


def wait_until_up(url: str, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{url}: the process exited with status {proc.returncode}")
        try:
            requests.get(url, timeout=1)
            return
        except requests.ConnectionError:
            time.sleep(0.2)
    raise SystemExit(f"{url} did not come up within {timeout:.0f}s")


def _stop(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def main() -> int:
    # Explicit handlers: a launcher started in the background inherits SIGINT as ignored.
    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    env = dict(os.environ)
    # A throwaway signing secret: the dev SIDs are fake, so Twilio would refuse these tokens anyway.
    env.setdefault("TWILIO_API_KEY_SECRET", secrets.token_hex(32))
    env.setdefault("TOKEN_SERVICE_SESSION_KEY", secrets.token_hex(32))
    python = sys.executable
    procs: list[subprocess.Popen[bytes]] = []
    try:
        idp = subprocess.Popen(
            [python, "-m", "devidp", "serve", "--port", "9000", "--keys-file", ".dev/idp-keys.json"],
            cwd=ROOT, env=env,
        )
        procs.append(idp)
        wait_until_up(f"{IDP}/.well-known/openid-configuration", idp)
        service = subprocess.Popen(
            [python, "-m", "token_service.cli", "serve", "--config", "dev/config.toml",
             "--bind", "127.0.0.1:8000", "--workers", "1"],
            cwd=ROOT, env=env,
        )
        procs.append(service)
        wait_until_up(f"{SERVICE}/healthz", service)
        print(NEXT_STEPS, flush=True)
        while all(p.poll() is None for p in procs):
            time.sleep(0.5)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()


if __name__ == "__main__":
    raise SystemExit(main())
