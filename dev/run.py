"""``make run``: the service on its embedded defaults plus the DEVELOPMENT identity provider.

Starts ``python -m devidp serve`` (oidc-provider on 127.0.0.1:9000, development only) and then
``token-service serve`` with ``dev/config.toml`` (memory store, one worker) on 127.0.0.1:8000,
prints what to do next, and stops both on Ctrl-C.

Each child runs in a process group of its own, so the terminal's Ctrl-C reaches this launcher
only (gunicorn's workers never get a second signal beside their master's). The launcher's signal
handler only records the request; the launcher then stops the service (SIGTERM to gunicorn's
master, which stops its workers), then the IdP, and kills whatever is left of either group. A
second Ctrl-C cannot interrupt that. A port that is already taken is reported in one line before
anything starts.

``TOKEN_SERVICE_DEV_PORT`` and ``DEVIDP_PORT`` move the two ports (the tests use them); browser
sign-in needs the defaults, which the development IdP's client is registered for.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
DEFAULT_SERVICE_PORT, DEFAULT_IDP_PORT = 8000, 9000
STOP_TIMEOUT = 15  # seconds for each child to stop by itself before its group is killed


def next_steps(service: str, idp: str) -> str:
    return f"""
================================================================================
 token-service is running at {service} (development mode, memory store)
 Development identity provider at {idp}: users alice, bob (admin), carol, dave
 (DEVELOPMENT ONLY: it signs in anyone who picks a name. Never deploy it.)

 Browser: open {service}/demo/ and sign in (pick alice or bob at the IdP).

 Or, in another terminal, from {ROOT}:
   ID_TOKEN=$(.venv/bin/python -m devidp token alice --issuer {idp})
   curl -s -X POST {service}/v1/token -H "Authorization: Bearer $ID_TOKEN"
   curl -s {service}/readyz

 Ctrl-C stops both.
================================================================================
"""


_stopping = False  # set by Ctrl-C or SIGTERM; everything that waits looks at it


def _stop(_signum: int, _frame: object) -> None:
    # Only a flag: raising here could interrupt Popen between fork and return and orphan a child.
    global _stopping
    _stopping = True


def pause(seconds: float) -> bool:
    """Sleep, in short steps; False as soon as a stop was asked for."""
    deadline = time.monotonic() + seconds
    while not _stopping and time.monotonic() < deadline:
        time.sleep(0.05)
    return not _stopping


def port_in_use(port: int) -> bool:
    """Whether a server could not bind ``port`` now (as gunicorn and node bind: SO_REUSEADDR)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((HOST, port))
        except OSError:
            return True
    return False


def wait_until_up(url: str, proc: subprocess.Popen[bytes], what: str, timeout: float = 60) -> bool:
    """True once ``url`` answers 200; False if a stop was asked for first."""
    import requests  # here, not at the top: Ctrl-C is handled before this slow import starts

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        # A stop comes first: a Ctrl-C that lands while a child is being forked (before it moves
        # to its own session) also reaches, and ends, that child.
        if _stopping:
            return False
        if proc.poll() is not None:
            raise SystemExit(f"make run: {what} exited with status {proc.returncode} (its output is above)")
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return True
        except requests.RequestException:
            pass
        if not pause(0.1):
            return False
    raise SystemExit(f"make run: {what} did not answer {url} within {timeout:.0f}s")


def start(command: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    """A child in a session (and process group) of its own: the terminal's Ctrl-C is not sent to it."""
    return subprocess.Popen(command, cwd=ROOT, env=env, start_new_session=True)


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the child, a wait, then SIGKILL to whatever is left in its process group."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # a worker or node process that outlived its parent
    except ProcessLookupError:
        pass
    proc.wait()


def dev_config(service_port: int, idp_port: int, directory: Path) -> Path:
    """``dev/config.toml``, with the two URLs moved when the ports are not the defaults."""
    config = ROOT / "dev" / "config.toml"
    if (service_port, idp_port) == (DEFAULT_SERVICE_PORT, DEFAULT_IDP_PORT):
        return config
    text = config.read_text(encoding="utf-8")
    text = text.replace(f"{HOST}:{DEFAULT_IDP_PORT}", f"{HOST}:{idp_port}")
    text = text.replace(f"{HOST}:{DEFAULT_SERVICE_PORT}", f"{HOST}:{service_port}")
    moved = directory / "config.toml"
    moved.write_text(text, encoding="utf-8")
    return moved


def main() -> int:
    # First of all (a Ctrl-C must never find Python's default handler), and explicit: a launcher
    # started in the background inherits SIGINT as ignored.
    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    service_port = int(os.environ.get("TOKEN_SERVICE_DEV_PORT") or DEFAULT_SERVICE_PORT)
    idp_port = int(os.environ.get("DEVIDP_PORT") or DEFAULT_IDP_PORT)
    for port, what, variable in ((service_port, "token-service", "TOKEN_SERVICE_DEV_PORT"),
                                 (idp_port, "the development IdP", "DEVIDP_PORT")):
        if port_in_use(port):
            print(f"make run: port {port} ({what}) is already in use: stop what holds it (another make run?) "
                  f"or set {variable} to a free port", file=sys.stderr)
            return 1
    env = dict(os.environ)
    # A throwaway signing secret: the dev SIDs are fake, so Twilio would refuse these tokens anyway.
    env.setdefault("TWILIO_API_KEY_SECRET", secrets.token_hex(32))
    env.setdefault("TOKEN_SERVICE_SESSION_KEY", secrets.token_hex(32))
    python = sys.executable
    service_url, idp_url = f"http://{HOST}:{service_port}", f"http://{HOST}:{idp_port}"
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="token-service-dev-") as scratch:
        try:
            procs.append(start([python, "-m", "devidp", "serve", "--port", str(idp_port),
                                "--keys-file", ".dev/idp-keys.json"], env))
            if not wait_until_up(f"{idp_url}/.well-known/openid-configuration", procs[-1], "the development IdP"):
                return 0
            config = dev_config(service_port, idp_port, Path(scratch))
            procs.append(start([python, "-m", "token_service.cli", "serve", "--config", str(config),
                                "--bind", f"{HOST}:{service_port}", "--workers", "1"], env))
            if not wait_until_up(f"{service_url}/healthz", procs[-1], "token-service"):
                return 0
            print(next_steps(service_url, idp_url), flush=True)
            while not _stopping and all(p.poll() is None for p in procs):
                pause(0.5)
            return 0 if _stopping else 1
        finally:
            for proc in reversed(procs):
                stop(proc)


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    finally:
        # Python puts its default handlers back while it shuts down, so a second Ctrl-C arriving then
        # would kill the launcher by signal (make reports an error). Ignored handlers stay as they are.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
