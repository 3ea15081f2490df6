"""``make run``'s launcher (``dev/run.py``): Ctrl-C always stops everything, a busy port is one line,
and ``make run`` installs only what running needs."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests

from tests.redis_servers import free_port
from tests.support import ROOT

pytestmark = pytest.mark.integration

LAUNCHER = [sys.executable, str(ROOT / "dev" / "run.py")]


def processes_marked(marker: str) -> list[str]:
    """Every live process whose environment holds ``marker``: the launcher and all it started,
    however deep, whatever process group or parent they ended up with."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if marker.encode() in (entry / "environ").read_bytes():
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
                if state != "Z":  # a zombie holds nothing; its parent reaps it
                    command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                    found.append(f"{entry.name}: {command}")
        except OSError:  # gone meanwhile, or a kernel thread
            continue
    return found


def bindable(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@contextmanager
def launcher(service_port: int, idp_port: int, marker: str) -> Iterator[subprocess.Popen[str]]:
    """``dev/run.py`` in a session of its own, as a terminal runs its foreground job."""
    env = {**os.environ, "TOKEN_SERVICE_DEV_PORT": str(service_port), "DEVIDP_PORT": str(idp_port),
           "RUN_TEST_MARKER": marker}
    proc = subprocess.Popen(LAUNCHER, cwd=ROOT, env=env, start_new_session=True, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        if proc.poll() is None:  # the test failed midway: leave nothing behind for the next one
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=60)


def handles_sigterm(pid: int) -> bool:
    """Whether the process catches SIGTERM: the launcher has installed its handlers (both at once)."""
    status = Path(f"/proc/{pid}/status").read_text()
    caught = int(next(line for line in status.splitlines() if line.startswith("SigCgt:")).split()[1], 16)
    return bool(caught & (1 << (signal.SIGTERM - 1)))


def answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False


def wait_for(url: str, proc: subprocess.Popen[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not answers(url):
        assert proc.poll() is None, f"the launcher exited with {proc.returncode}: {proc.communicate()[0]}"
        assert time.monotonic() < deadline, f"{url} did not answer within {timeout}s"
        time.sleep(0.05)


def test_ctrl_c_twenty_times_leaves_no_process_and_no_bound_port() -> None:
    """Ctrl-C at every stage (the IdP starting, gunicorn starting, both serving): each time the
    launcher exits 0, no process it started survives, and both ports are free for the next run."""
    service_port, idp_port = free_port(), free_port()
    service, idp = f"http://127.0.0.1:{service_port}", f"http://127.0.0.1:{idp_port}"
    for attempt in range(20):
        marker = f"run-test-{uuid.uuid4().hex}"
        with launcher(service_port, idp_port, marker) as proc:
            stage = attempt % 4
            if stage == 0:  # as soon as the launcher handles Ctrl-C: the IdP may not even be started
                while not handles_sigterm(proc.pid):
                    time.sleep(0.01)
            elif stage == 1:
                wait_for(f"{idp}/.well-known/openid-configuration", proc)  # gunicorn is starting
            else:
                wait_for(f"{service}/healthz", proc)
                if stage == 3:  # a worker that has served requests, as in the reported deadlock
                    for _ in range(5):
                        assert answers(f"{service}/readyz")
            os.killpg(proc.pid, signal.SIGINT)  # what the terminal does on Ctrl-C
            if attempt % 5 == 4:
                time.sleep(0.05)
                os.killpg(proc.pid, signal.SIGINT)  # an impatient second Ctrl-C
            output, _ = proc.communicate(timeout=60)
            assert proc.returncode == 0, output
            assert "Traceback" not in output, output
        deadline = time.monotonic() + 5  # the launcher waited for each child: nothing should be left
        while (left := processes_marked(marker)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert left == [], f"attempt {attempt}, stage {stage}: still running: {left}"
        assert bindable(service_port) and bindable(idp_port), f"attempt {attempt}: a port is still bound"


def test_a_port_in_use_is_one_clear_line_and_starts_nothing() -> None:
    service_port, idp_port = free_port(), free_port()
    marker = f"run-test-{uuid.uuid4().hex}"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", service_port))
        taken.listen()
        with launcher(service_port, idp_port, marker) as proc:
            output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert output.splitlines() == [
        f"make run: port {service_port} (token-service) is already in use: stop what holds it "
        "(another make run?) or set TOKEN_SERVICE_DEV_PORT to a free port"
    ]
    assert processes_marked(marker) == []


def test_make_run_installs_only_what_running_needs() -> None:
    """``make -n -B``: every command the target would run, as on a fresh clone."""
    def commands(target: str) -> str:
        done = subprocess.run(["make", "-n", "-B", target], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout

    run = commands("run")
    assert "requirements.lock" in run and "devidp" in run and "dev/run.py" in run
    assert "requirements-dev.lock" not in run and "twilio_spec" not in run
    test = commands("test")
    assert "requirements-dev.lock" in test and "twilio_spec" in test


def test_the_run_lock_holds_what_the_shipped_gevent_worker_imports() -> None:
    """``make run`` and the container install requirements.lock alone. gunicorn's gevent worker also
    imports ``packaging``, which only the dev lock held (through pytest): a fresh ``make run`` failed
    to start its worker. gunicorn's own ``gevent`` extra names what the worker needs."""
    from importlib.metadata import requires

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    lines = (ROOT / "requirements.lock").read_text().splitlines()
    pinned = {canonicalize_name(line.split("==")[0]) for line in lines if "==" in line and line[:1].isalnum()}
    extra = [Requirement(text) for text in requires("gunicorn") or []]
    needed = {canonicalize_name(r.name) for r in extra if r.marker and r.marker.evaluate({"extra": "gevent"})}
    assert needed and needed <= pinned, needed - pinned
