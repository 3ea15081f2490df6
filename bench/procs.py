"""The server processes the bench starts, and the CPU they spend, read from Linux's /proc.

CPU per request is summed over every process on the server side of a target (a gunicorn master and
its workers, nginx's master and workers, Redis, node), because that is what a deployment pays for; the
load generators' own CPU is measured apart (their rusage) and never added to it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import requests

START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
LOG_TAIL_LINES = 30
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class BenchError(RuntimeError):
    """Something broke (a server did not start, a load generator failed): the run cannot give numbers."""


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/PID/stat after the command name (which may hold spaces), or None once the process is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU of the whole process (all its threads) so far; None once it is gone."""
    fields = _stat_fields(pid)
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS if fields else None


def process_tree(root: int) -> list[int]:
    """``root`` and every process below it (a gunicorn master and its workers, nginx's master and workers)."""
    parents: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            fields = _stat_fields(int(name))
            if fields:
                parents.setdefault(int(fields[1]), []).append(int(name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(parents.get(pid, []))
    return tree


@dataclass(frozen=True)
class CpuGroups:
    """Named groups of processes whose CPU one target's requests cost ("workers", "redis", "node"...)."""

    groups: Mapping[str, Callable[[], Iterable[int]]]

    def sample(self) -> dict[str, dict[int, float]]:
        return {name: {pid: cpu for pid in pids() if (cpu := cpu_seconds(pid)) is not None}
                for name, pids in self.groups.items()}

    @staticmethod
    def used(before: Mapping[str, Mapping[int, float]], after: Mapping[str, Mapping[int, float]]) -> dict[str, float]:
        """CPU seconds per group between two samples (processes present in both)."""
        return {name: sum(cpu - before[name][pid] for pid, cpu in after[name].items() if pid in before[name])
                for name in after}


@dataclass
class Server:
    """A server process in its own session: teardown signals the whole process group, children included.

    Ready once ``ready_path`` answers 200 and at least ``children`` processes run below it (a worker still
    booting when the load starts would leave all connections to the others).
    """

    name: str
    argv: list[str]
    env: dict[str, str]
    port: int
    ready_path: str
    log_path: Path
    children: int = 0
    cwd: Path | None = None
    host: str = "127.0.0.1"
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def pids(self) -> list[int]:
        """The process and everything below it."""
        return process_tree(self._proc.pid) if self._proc else []

    def log_tail(self) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(lines[-LOG_TAIL_LINES:]) or "(empty log)"

    def start(self) -> None:
        with open(self.log_path, "wb") as output:
            self._proc = subprocess.Popen(
                self.argv, cwd=self.cwd, env=self.env, stdin=subprocess.DEVNULL, stdout=output,
                stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            status = self._proc.poll()
            if status is not None:
                raise BenchError(f"{self.name} exited with status {status} during start-up:\n{self.log_tail()}")
            with contextlib.suppress(requests.RequestException):
                if (requests.get(self.url + self.ready_path, timeout=1).status_code == 200
                        and len(self.pids()) > self.children):
                    time.sleep(0.5)  # let the last child reach its accept loop
                    return
            if time.monotonic() >= deadline:
                raise BenchError(
                    f"{self.name} did not answer {self.ready_path} within {START_TIMEOUT:.0f}s:\n{self.log_tail()}"
                )
            time.sleep(0.1)

    def stop(self) -> None:
        """SIGTERM (graceful) to the process, then SIGKILL to its process group if anything lingers."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=STOP_TIMEOUT)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # the group is ours: start_new_session made proc its leader
        proc.wait()

    def __enter__(self) -> Server:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _task_files(pids: Iterable[int], name: str) -> Iterable[str]:
    """The text of /proc/PID/task/TID/``name`` for every thread of ``pids`` still there."""
    for pid in pids:
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{pid}/task"):
                with contextlib.suppress(OSError):
                    yield Path(f"/proc/{pid}/task/{task}/{name}").read_text()


@dataclass(frozen=True)
class Scheduling:
    """What the scheduler did to the threads of some processes so far.

    ``switches``: voluntary (a thread blocked: on the GIL, a socket, the thread pool's queue) plus
    involuntary (the scheduler took the core away). ``run_delay``: seconds runnable threads waited for a
    core (``schedstat``), the queueing that more runnable threads than cores adds to every request.
    """

    switches: int
    run_delay: float

    @classmethod
    def of(cls, pids: Iterable[int]) -> Scheduling:
        pids = list(pids)
        switches = sum(int(line.split()[1]) for text in _task_files(pids, "status")
                       for line in text.splitlines() if "ctxt_switches:" in line)
        delay = sum(int(text.split()[1]) for text in _task_files(pids, "schedstat")) / 1e9
        return cls(switches, delay)

    def __sub__(self, other: Scheduling) -> Scheduling:
        return Scheduling(self.switches - other.switches, self.run_delay - other.run_delay)


@dataclass(frozen=True)
class MachineTime:
    """The machine's CPU time so far (the ``cpu`` line of /proc/stat), in clock ticks.

    ``steal`` is the time the hypervisor ran something else while this guest had work: a tail that
    grows with it comes from the host, not from the servers measured.
    """

    total: int
    steal: int

    @classmethod
    def now(cls) -> MachineTime:
        fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
        return cls(sum(fields), fields[7] if len(fields) > 7 else 0)

    def stolen_since(self, before: MachineTime) -> float:
        """The share of the machine's CPU time stolen since ``before``."""
        total = self.total - before.total
        return (self.steal - before.steal) / total if total > 0 else 0.0


class WakeupProbe:
    """A thread that sleeps 2 ms at a time and keeps how late each wake-up was.

    Run beside a measurement, it tells how long anything runnable waited for a core on this machine at
    that moment: the scheduler's queue, and the host's (a saturated guest is paused for up to a
    ~100 ms quota period). A service's tail cannot be shorter than the machine's.
    """

    INTERVAL = 0.002

    def __init__(self) -> None:
        self.late: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="wakeup-probe", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            start = time.perf_counter()
            time.sleep(self.INTERVAL)
            self.late.append(time.perf_counter() - start - self.INTERVAL)

    def __enter__(self) -> WakeupProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.late.sort()

    def percentile_ms(self, share: float) -> float:
        """Of the wake-ups so far, once the probe has stopped (they are sorted then)."""
        late = self.late
        return 1000 * late[min(len(late) - 1, int(share * len(late)))] if late else 0.0
