"""The two load generators: wrk (closed loop, for the peak rate) and bench/openloop.c (fixed rate, for the tail).

Both send the requests one ``Load`` describes, built from the same templates ("{}" stands for an
item: an ID token, an identity, a refresh token), so a target's peak and its tail are measured on the
same requests. In chain mode each item (a refresh token) is used once and the answer's JSON member
names the next; the generators read it from the answer and never parse it, so the bench holds whatever
token format the service uses.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import resource
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.procs import LOG_TAIL_LINES, BenchError
from tests import debian

BENCH = Path(__file__).resolve().parent
LOAD_SCRIPT = BENCH / "load.lua"
OPENLOOP_SOURCE = BENCH / "openloop.c"
_LATENCY_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


@dataclass(frozen=True)
class Load:
    """One target's requests. ``items`` is a file of one item a line (None: the request has no "{}").

    ``chain``: the JSON member of a 200 answer that holds the next item (a refresh token); each item is
    then sent once. ``leftover``: where the generator writes the chain's unused items when it stops.
    """

    method: str
    path: str
    headers: tuple[str, ...] = ()
    body: str | None = None
    items: Path | None = None
    chain: str | None = None
    leftover: Path | None = None


def _log_tail(text: str) -> str:
    return "\n".join(text.splitlines()[-LOG_TAIL_LINES:])


def ensure_tool(binary: str) -> str:
    """Path of a Debian tool (wrk, nginx); as root, installed with apt-get once when missing."""
    try:
        return debian.ensure_tool(binary, [binary])
    except debian.ToolUnavailable as exc:
        raise BenchError(str(exc)) from None


def build_openloop(build_dir: Path) -> Path:
    """Compile bench/openloop.c with the machine's cc when the binary is missing or older than its source."""
    binary = build_dir / "openloop"
    if binary.exists() and binary.stat().st_mtime >= OPENLOOP_SOURCE.stat().st_mtime:
        return binary
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise BenchError("no C compiler (cc or gcc) to build bench/openloop.c; install gcc")
    build_dir.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        [compiler, "-O2", "-Wall", "-Wextra", "-o", str(binary), str(OPENLOOP_SOURCE)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if result.returncode != 0:
        raise BenchError(f"compiling {OPENLOOP_SOURCE} failed:\n{_log_tail(result.stderr)}")
    return binary


# --------------------------------------------------------------------------- wrk (closed loop)


@dataclass(frozen=True)
class WrkResult:
    """The numbers of one wrk run that the report uses, plus the raw output for error messages."""

    requests_per_sec: float
    p50_ms: float
    p99_ms: float
    requests: int
    non_2xx: int
    socket_errors: dict[str, int]
    script_counts: dict[str, int]
    output: str
    client_cpu: float = 0.0  # CPU seconds wrk itself used (it shares the machine with the servers)

    @property
    def total_socket_errors(self) -> int:
        return sum(self.socket_errors.values())


def _latency_ms(output: str, percentile: str) -> float:
    match = re.search(rf"^\s*{percentile}%\s+([\d.]+)(us|ms|s|m|h)\s*$", output, re.M)
    if not match:
        raise BenchError(f"no {percentile}% latency in the wrk output:\n{output}")
    return float(match.group(1)) * _LATENCY_UNITS_MS[match.group(2)]


def parse_wrk(output: str) -> WrkResult:
    """Read the ``--latency`` report of wrk 4 (and the ``bench-load:`` line of load.lua's done())."""
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", output, re.M)
    total = re.search(r"^\s*(\d+) requests in ", output, re.M)
    if not rps or not total:
        raise BenchError(f"unexpected wrk output:\n{output}")
    # wrk counts status >= 400 here (the label says "Non-2xx or 3xx"); the line is absent when zero.
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    sockets = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    socket_errors = dict.fromkeys(("connect", "read", "write", "timeout"), 0)
    if sockets:
        socket_errors = dict(zip(socket_errors, map(int, sockets.groups()), strict=True))
    script_counts: dict[str, int] = {}
    script_line = re.search(r"^bench-\w+:(.*)$", output, re.M)
    if script_line:
        script_counts = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", script_line.group(1))}
    return WrkResult(
        requests_per_sec=float(rps.group(1)),
        p50_ms=_latency_ms(output, "50"),
        p99_ms=_latency_ms(output, "99"),
        requests=int(total.group(1)),
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=socket_errors,
        script_counts=script_counts,
        output=output,
    )


@dataclass(frozen=True)
class Wrk:
    """wrk's binary and its load shape: threads, connections, timeout."""

    binary: str
    threads: int
    connections: int
    timeout: int

    def run(self, address: str, load: Load, duration: int) -> WrkResult:
        argv = [
            self.binary, f"-t{self.threads}", f"-c{self.connections}", f"-d{duration}s", "--latency",
            "--timeout", f"{self.timeout}s", "-s", str(LOAD_SCRIPT), f"http://{address}{load.path.split('{')[0]}",
            "--", str(load.items or "-"), str(self.threads), load.method, load.path,
            "-" if load.body is None else load.body, load.chain or "-", str(load.leftover or "-"), *load.headers,
        ]  # fmt: skip
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        # subprocess.run kills wrk if we are interrupted while it runs.
        result = subprocess.run(
            argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=duration + 60, check=False
        )
        if result.returncode != 0:
            raise BenchError(f"wrk failed with status {result.returncode}:\n{_log_tail(result.stdout + result.stderr)}")
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        # wrk is the only child that ends during the run, so the children's usage grew by its CPU alone.
        client_cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        return dataclasses.replace(parse_wrk(result.stdout + result.stderr), client_cpu=client_cpu)


# --------------------------------------------------------------------------- openloop (fixed rate)


@dataclass(frozen=True)
class OpenLoopResult:
    """One fixed-rate run: latencies from each request's intended send time, in ms."""

    rate: float
    achieved_rate: float
    p50_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float
    sent: int
    completed: int  # every answer, warm-up included: what the servers' CPU was spent on
    answered: int  # 2xx answers inside the measured window
    non_2xx: int
    errors: int
    starved: int
    unfinished: int
    connects: int
    send_lag_p99_ms: float
    client_cpu: float
    raw: Mapping[str, object] = field(default_factory=dict)

    @property
    def requests(self) -> int:
        return self.completed


def parse_openloop(output: str) -> OpenLoopResult:
    try:
        data = json.loads(output)
        latency, lag = data["latency_ms"], data["send_lag_ms"]
        return OpenLoopResult(
            rate=data["rate"], achieved_rate=data["achieved_rate"], p50_ms=latency["p50"], p99_ms=latency["p99"],
            p999_ms=latency["p99.9"], max_ms=latency["max"], sent=data["sent"], completed=data["completed"],
            answered=data["answered"],
            non_2xx=data["non2xx"], errors=data["errors"], starved=data["starved"], unfinished=data["unfinished"],
            connects=data["connects"], send_lag_p99_ms=lag["p99"], client_cpu=data["cpu_user_s"] + data["cpu_sys_s"],
            raw=data,
        )  # fmt: skip
    except (ValueError, KeyError, TypeError) as exc:
        raise BenchError(f"unexpected openloop output ({exc}):\n{output}") from None


def _prioritize(nice: int) -> None:
    """In the generator's child process, in a session of its own: ``nice`` for it and for its session.

    With autogroups on (``kernel.sched_autogroup_enabled``, as on this VM), the scheduler first shares
    the cores between sessions, and a nice value only ranks processes within their own session. The
    servers each run in a session of their own, so the generator's nice alone would not count against
    them: its session's nice (``/proc/self/autogroup``) does.
    """
    os.nice(nice)
    with contextlib.suppress(OSError):
        Path("/proc/self/autogroup").write_text(str(nice))


@dataclass(frozen=True)
class OpenLoop:
    """bench/openloop.c's binary and its connections, warm-up and drain time.

    ``nice`` below 0 (root only) lets the generator wake on its schedule while the servers it measures
    hold both cores: a client on another machine would not wait for them, and every millisecond it
    waited would be charged to the servers' latency.
    """

    binary: Path
    connections: int
    warmup: float
    drain: float
    nice: int = 0

    def run(self, address: str, load: Load, rate: float, duration: float) -> OpenLoopResult:
        argv = [
            str(self.binary), "-a", address, "-r", f"{rate:.3f}", "-d", str(duration), "-w", str(self.warmup),
            "-c", str(self.connections), "-g", str(self.drain), "-m", load.method, "-p", load.path,
        ]  # fmt: skip
        for header in load.headers:
            argv += ["-H", header]
        if load.body is not None:
            argv += ["-b", load.body]
        if load.items is not None:
            argv += ["-i", str(load.items)]
        if load.chain:
            argv += ["-f", load.chain]
        if load.leftover is not None:
            argv += ["-o", str(load.leftover)]
        nice = self.nice
        result = subprocess.run(
            argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
            timeout=self.warmup + duration + self.drain + 60, check=False,
            start_new_session=bool(nice), preexec_fn=(lambda: _prioritize(nice)) if nice else None,
        )  # fmt: skip
        if result.returncode != 0:
            raise BenchError(f"openloop failed with status {result.returncode}:\n{_log_tail(result.stderr)}")
        return parse_openloop(result.stdout)


def write_lines(path: Path, lines: Sequence[str]) -> Path:
    path.write_text("".join(f"{line}\n" for line in lines))
    return path


def read_lines(path: Path) -> list[str]:
    try:
        return [line for line in path.read_text().splitlines() if line]
    except OSError:
        return []
