"""Throughput benchmark: token issue and refresh against a bare Flask baseline, under gunicorn.

Why a ratio: requests/second depend on the machine, so each endpoint is compared with the cheapest
possible Flask request (``bench/hello.py``) served by the same gunicorn config (``deploy/gunicorn.conf.py``,
same workers and threads) and loaded by the same wrk parameters, in the same run. The ratio says what
the token work itself costs, and the targets are ratios:

    token issue >= 0.50 x baseline        refresh >= 0.60 x baseline

How to reproduce (from the repository root, after ``make install``; root installs ``wrk`` with apt-get
if it is missing, anyone else must install it first)::

    .venv/bin/python -m bench.run          # or: python bench/run.py

One run starts a real Redis (``tests/redis_servers.py``) and the development IdP (``devidp/``, node),
then, one server at a time and each with a warm-up before the measured wrk run:

a. ``GET /`` of ``bench/hello.py`` under ``gunicorn -c deploy/gunicorn.conf.py bench.hello:app``;
b. ``POST /v1/token`` of ``token-service serve`` (Redis store; rate limits on, at 1,000,000 per 60 s,
   the most the config accepts: never refusing, but their code still runs), cycling a pool of RS256
   ID tokens for distinct users, forged with the IdP's own signing key (``bench/token.lua``);
c. ``POST /v1/token/refresh`` on the same server: refresh tokens are issued through ``/v1/token``
   first and each wrk thread chains them, presenting every token exactly once (``bench/refresh.lua``).

Both servers stay up for the whole run, and the four measurements are taken in rounds (3 by
default): hello, /healthz, token, refresh, then again. A shared 2-core machine drifts by tens of
percent from one minute to the next, so a ratio is only taken between runs of the same round, and
the report gives the median round's ratio next to every round's.

It prints the machine, the settings and a Markdown table (medians over the rounds), then the pass/fail
lines of the targets, then the CPU the gunicorn workers, wrk and redis-server spent per request
(from /proc and wrk's rusage, over all rounds), which says where a missed target loses its time. gthread workers race to
accept wrk's keep-alive connections, and now and then one worker gets all of them while the other
idles; such a run measures the race, not the app, so it is measured again (at most 3 times) and the
report says so.

A missed target still exits 0 (this is a benchmark, not a test); a non-2xx response, a socket error,
a broken refresh chain or a server that does not start exits 1. Everything it started (gunicorn,
node, redis) is stopped on exit, Ctrl-C and errors included; temporary files live under /tmp.

Environment (defaults in brackets):
    TOKEN_SERVICE_WORKERS, TOKEN_SERVICE_THREADS          gunicorn workers and threads, for every server
                                                          [deploy/gunicorn.conf.py's own: cores + 1, 4]
    WRK_THREADS [2], WRK_CONNECTIONS [32]                 wrk -t and -c
    WRK_DURATION [10s], WRK_WARMUP [3s], WRK_TIMEOUT [2s] measured run, warm-up per target (0: none), -timeout
    BENCH_ROUNDS [3]                                      rounds of the four measurements (warm-up in the first)
    BENCH_POOL [2000]                                     distinct users (ID tokens) in the token pool
    BENCH_FAMILIES [1000]                                 refresh families per refresh run (chained by wrk)
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import resource
import runpy
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

ROOT = Path(__file__).resolve().parent.parent
# `python bench/run.py` puts bench/ on sys.path, not the repository root that holds devidp/ and tests/.
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
VENV = ROOT / ".venv"


def _use_project_venv() -> None:
    """Re-run under the project's venv when started by a python without its packages.

    What is re-run is the script that was started (``sys.argv[0]``: this file, or ``bench/ab.py``
    importing it; ``python -m`` sets it to the module's file too).
    """
    try:
        import gunicorn  # type: ignore[import-untyped]  # noqa: F401
        import jwt  # noqa: F401
        import requests  # noqa: F401
    except ImportError:
        python = VENV / "bin" / "python"
        if python.exists() and Path(sys.prefix).resolve() != VENV.resolve():
            os.execv(python, [str(python), str(Path(sys.argv[0]).resolve()), *sys.argv[1:]])
        raise SystemExit("the project's packages are missing: run `make install` first") from None


_use_project_venv()

import jwt  # noqa: E402
import requests  # noqa: E402

from devidp.harness import DevIdP, DevIdPError, generate_keys  # noqa: E402
from tests.redis_servers import RedisServer, RedisServerError, ensure_redis_server, free_port  # noqa: E402

BENCH = ROOT / "bench"
GUNICORN_CONF = ROOT / "deploy" / "gunicorn.conf.py"
DEV_CONFIG = ROOT / "dev" / "config.toml"
AUDIENCE = "token-service-dev"  # a client id of the dev IdP, accepted by dev/config.toml
HOST = "127.0.0.1"
TOKEN_TARGET = 0.50
REFRESH_TARGET = 0.60
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
LOG_TAIL_LINES = 30
MAX_ATTEMPTS = 3  # measured runs per target when a worker sits idle
SKEW_FLOOR = 0.25  # a worker below this share of the mean worker CPU counts as idle

# Limits no run can reach, so nothing is refused but every request still pays for the bucket checks.
# 1,000,000 is the most settings.RatePolicy accepts: a burst of a million, then ~16,700 req/s per key.
RATE_LIMITS = """
[rate_limits]
enabled = true
policies = [
  { endpoint = "token", key = "ip", limit = 1000000, window = 60 },
  { endpoint = "token", key = "identity", limit = 1000000, window = 60 },
  { endpoint = "refresh", key = "ip", limit = 1000000, window = 60 },
  { endpoint = "refresh", key = "identity", limit = 1000000, window = 60 },
  { endpoint = "refresh", key = "family", limit = 1000000, window = 60 },
]
"""

_TIME = re.compile(r"^(\d+)([smh]?)$")
_TIME_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600}
_LATENCY_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


class BenchError(RuntimeError):
    """Something broke (a server did not start, wrk failed): the run cannot give numbers."""


def log(message: str) -> None:
    """Progress goes to stderr, so stdout carries only the report."""
    print(f"[bench] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- settings


def _seconds(text: str, name: str) -> int:
    """wrk's time syntax (``10``, ``10s``, ``1m``): whole numbers only, as wrk reads them."""
    match = _TIME.match(text.strip())
    if not match:
        raise BenchError(f"{name}={text!r} is not a wrk time such as 10s or 1m")
    return int(match.group(1)) * _TIME_UNITS[match.group(2)]


def _positive(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, str(default))
    try:
        value = int(raw)
    except ValueError:
        raise BenchError(f"{name}={raw!r} is not a whole number") from None
    if value < 1:
        raise BenchError(f"{name} must be at least 1")
    return value


def shipped_gunicorn() -> tuple[int, int]:
    """The workers and threads ``deploy/gunicorn.conf.py`` itself gives on this machine.

    Read from the file, without the ``TOKEN_SERVICE_*`` variables that override it: the bench
    measures what ships (on 2 cores, 3 workers of 4 threads) unless told otherwise.
    """
    saved = {name: os.environ.pop(name) for name in ("TOKEN_SERVICE_WORKERS", "TOKEN_SERVICE_THREADS")
             if name in os.environ}
    try:
        conf = runpy.run_path(str(GUNICORN_CONF))
    finally:
        os.environ.update(saved)
    return int(conf["workers"]), int(conf["threads"])


@dataclass(frozen=True)
class Settings:
    """One set of server and load settings, applied to every target so the ratios compare like with like."""

    workers: int
    threads: int
    wrk_threads: int
    connections: int
    duration: int
    warmup: int
    timeout: int
    pool: int
    families: int
    rounds: int

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        workers, threads = shipped_gunicorn()
        settings = cls(
            workers=_positive(env, "TOKEN_SERVICE_WORKERS", workers),
            threads=_positive(env, "TOKEN_SERVICE_THREADS", threads),
            wrk_threads=_positive(env, "WRK_THREADS", 2),
            connections=_positive(env, "WRK_CONNECTIONS", 32),
            duration=_seconds(env.get("WRK_DURATION", "10s"), "WRK_DURATION"),
            warmup=_seconds(env.get("WRK_WARMUP", "3s"), "WRK_WARMUP"),
            timeout=_seconds(env.get("WRK_TIMEOUT", "2s"), "WRK_TIMEOUT"),
            pool=_positive(env, "BENCH_POOL", 2000),
            families=_positive(env, "BENCH_FAMILIES", 1000),
            rounds=_positive(env, "BENCH_ROUNDS", 3),
        )
        if settings.duration < 1 or settings.timeout < 1:
            raise BenchError("WRK_DURATION and WRK_TIMEOUT must be at least 1s")
        if settings.connections < settings.wrk_threads:
            raise BenchError("WRK_CONNECTIONS must be at least WRK_THREADS (wrk gives each thread its share)")
        return settings

    @property
    def refresh_tokens(self) -> int:
        """Refresh tokens (families) per wrk run: ``BENCH_FAMILIES``, and at least twice the connections so
        no thread's queue runs dry. Many families, each refreshed a few dozen times in a run, is what a
        service sees (one refresh per session every quarter hour), not a few families refreshed thousands
        of times, whose spent-token lists would sit at their cap."""
        return max(self.families, 2 * self.connections)

    def wrk_args(self, duration: int) -> list[str]:
        return [
            f"-t{self.wrk_threads}",
            f"-c{self.connections}",
            f"-d{duration}s",
            "--latency",
            "--timeout",
            f"{self.timeout}s",
        ]


def machine_lines() -> list[str]:
    """What the numbers were measured on: they mean little without it."""
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return [
        f"- machine: nproc {len(os.sched_getaffinity(0))}, CPU {model}",
        f"- python {sys.version.split()[0]}, gunicorn config {GUNICORN_CONF.relative_to(ROOT)}",
    ]


# --------------------------------------------------------------------------- wrk


def ensure_wrk() -> str:
    """Path of ``wrk``; as root, install the Debian package once, so a fresh machine can run the bench."""
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise BenchError("wrk is not installed; install it first (Debian/Ubuntu: `sudo apt-get install wrk`)")
    log("wrk not found: installing it with apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (
        ["apt-get", "update", "-qq"],
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "wrk"],
    ):
        result = subprocess.run(command, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            tail = "\n".join((result.stdout + result.stderr).splitlines()[-LOG_TAIL_LINES:])
            raise BenchError(f"`{' '.join(command)}` failed with status {result.returncode}:\n{tail}")
    found = shutil.which("wrk")
    if not found:
        raise BenchError("apt-get installed wrk but no wrk binary is on PATH")
    return found


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
    """Read the ``--latency`` report of wrk 4 (and the ``bench-*:`` line a script's done() may add)."""
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


def run_wrk(
    wrk: str,
    settings: Settings,
    url: str,
    duration: int,
    script: Path | None = None,
    script_args: Sequence[str] = (),
) -> WrkResult:
    argv = [wrk, *settings.wrk_args(duration)]
    if script is not None:
        argv += ["-s", str(script)]
    argv.append(url)
    if script_args:
        argv += ["--", *script_args]
    # subprocess.run kills wrk if we are interrupted while it runs.
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = subprocess.run(
        argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=duration + 60, check=False
    )
    if result.returncode != 0:
        raise BenchError(f"`{' '.join(argv)}` failed with status {result.returncode}:\n{result.stdout}{result.stderr}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    # wrk is the only child that ends during the run, so the children's usage grew by its CPU alone.
    client_cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return dataclasses.replace(parse_wrk(result.stdout + result.stderr), client_cpu=client_cpu)


# --------------------------------------------------------------------------- servers

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _all_pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/PID/stat after the command name (which may hold spaces), or None once the process is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()


def _parent_pid(pid: int) -> int | None:
    fields = _stat_fields(pid)
    return int(fields[1]) if fields else None


def _cpu_seconds(pid: int) -> float | None:
    fields = _stat_fields(pid)
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS if fields else None


@dataclass
class Gunicorn:
    """A gunicorn master in its own session: teardown signals the whole process group, workers included."""

    name: str
    argv: list[str]
    env: dict[str, str]
    port: int
    ready_path: str
    log_path: Path
    workers: int
    cwd: Path = ROOT  # `-m token_service.cli` imports the token_service package found here
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def worker_pids(self) -> list[int]:
        """The master's children (its workers), found through /proc."""
        if self._proc is None:
            return []
        return [pid for pid in _all_pids() if _parent_pid(pid) == self._proc.pid]

    def worker_cpu(self) -> dict[int, float]:
        """CPU seconds (user + system) each worker has used so far."""
        found = {pid: _cpu_seconds(pid) for pid in self.worker_pids()}
        return {pid: cpu for pid, cpu in found.items() if cpu is not None}

    def log_tail(self) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(lines[-LOG_TAIL_LINES:]) or "(empty log)"

    def start(self) -> None:
        with open(self.log_path, "wb") as output:
            self._proc = subprocess.Popen(
                self.argv,
                cwd=self.cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            status = self._proc.poll()
            if status is not None:
                raise BenchError(f"{self.name} exited with status {status} during start-up:\n{self.log_tail()}")
            # Ready once it answers and every worker is forked: a worker still booting when wrk
            # connects would leave all connections to the others.
            with contextlib.suppress(requests.RequestException):
                if (
                    requests.get(self.url + self.ready_path, timeout=1).status_code == 200
                    and len(self.worker_pids()) >= self.workers
                ):
                    time.sleep(0.5)  # let the last worker reach its accept loop
                    return
            if time.monotonic() >= deadline:
                raise BenchError(
                    f"{self.name} did not answer {self.ready_path} within {START_TIMEOUT:.0f}s:\n{self.log_tail()}"
                )
            time.sleep(0.1)

    def stop(self) -> None:
        """SIGTERM (graceful) to the master, then SIGKILL to its process group if anything lingers."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                pass
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # the group is ours: start_new_session made proc its leader
        proc.wait()

    def __enter__(self) -> Gunicorn:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def server_env(settings: Settings) -> dict[str, str]:
    """The environment of every server: the same gunicorn workers and threads for all of them."""
    env = dict(os.environ)
    env["TOKEN_SERVICE_WORKERS"] = str(settings.workers)
    env["TOKEN_SERVICE_THREADS"] = str(settings.threads)
    # The bench's SIDs are fake, so a throwaway signing secret is as good as a real one.
    env.setdefault("TWILIO_API_KEY_SECRET", secrets.token_hex(32))
    env.setdefault("TOKEN_SERVICE_SESSION_KEY", secrets.token_hex(32))
    return env


def hello_server(settings: Settings, workdir: Path) -> Gunicorn:
    port = free_port()
    argv = [
        sys.executable, "-m", "gunicorn", "-c", str(GUNICORN_CONF),
        "--bind", f"{HOST}:{port}", "--workers", str(settings.workers), "--threads", str(settings.threads),
        "bench.hello:app",
    ]  # fmt: skip
    env = server_env(settings)
    return Gunicorn("baseline gunicorn (bench.hello)", argv, env, port, "/", workdir / "hello.log", settings.workers)


def token_server(settings: Settings, workdir: Path, config: Path, checkout: Path = ROOT, tag: str = "") -> Gunicorn:
    """``token-service serve`` of ``checkout`` (this repository unless told), with this repository's
    gunicorn config; ``tag`` tells apart the logs and metrics of several servers in one workdir."""
    port = free_port()
    argv = [
        sys.executable, "-m", "token_service.cli", "serve", "--config", str(config),
        "--gunicorn-config", str(GUNICORN_CONF), "--bind", f"{HOST}:{port}", "--workers", str(settings.workers),
    ]  # fmt: skip
    env = server_env(settings)
    # The service keeps multiprocess metrics in this directory (it makes one under /tmp otherwise): in
    # the bench's own temp dir, it goes when the bench ends. Metrics stay on, as in production.
    name = f"token-service{tag}"
    metrics = workdir / f"metrics{tag}"
    metrics.mkdir(exist_ok=True)
    env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics)
    return Gunicorn(name, argv, env, port, "/healthz", workdir / f"{name}.log", settings.workers, cwd=checkout)


def write_config(path: Path, issuer: str, redis_url: str) -> None:
    """dev/config.toml with the running IdP's issuer, the Redis store and never-refusing rate limits."""
    text = DEV_CONFIG.read_text()
    text, issuers = re.subn(r'(?m)^issuer\s*=\s*"http://127\.0\.0\.1:9000"\s*$', f'issuer = "{issuer}"', text)
    text, stores = re.subn(r'(?m)^url\s*=\s*"memory://"\s*$', f'url = "{redis_url}"', text)
    text += RATE_LIMITS
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise BenchError(f"cannot build the bench config from {DEV_CONFIG}: {exc}") from None
    if (issuers, stores) != (1, 1) or data["store"]["url"] != redis_url:
        raise BenchError(f"{DEV_CONFIG} no longer has one dev issuer and a memory:// store; update write_config()")
    path.write_text(text)


# --------------------------------------------------------------------------- tokens


def mint_id_tokens(idp: DevIdP, count: int) -> list[str]:
    """RS256 ID tokens for ``count`` distinct users, signed with the IdP's own key.

    Forged rather than obtained by login: a code flow per user would take minutes, and the service
    verifies these exactly as it verifies the IdP's (same key, fetched from the IdP's JWKS).
    """
    jwk = next(k for k in idp.keys if k.get("alg") == "RS256")
    key = jwt.PyJWK(jwk).key
    now = int(time.time())
    return [
        jwt.encode(
            {
                "iss": idp.issuer,
                "aud": AUDIENCE,
                "sub": f"bench-user-{i}",
                "email": f"user{i}@example.com",
                "email_verified": True,
                "groups": ["chat-users"],
                "iat": now,
                "exp": now + 3600,
            },
            key,
            algorithm="RS256",
            headers={"kid": jwk["kid"]},
        )
        for i in range(count)
    ]


def issue_refresh_tokens(base_url: str, id_tokens: Sequence[str]) -> list[str]:
    """One refresh token (so one family) per ID token, through the real ``POST /v1/token``."""
    tokens = []
    with requests.Session() as session:
        for id_token in id_tokens:
            try:
                resp = session.post(f"{base_url}/v1/token", headers={"Authorization": f"Bearer {id_token}"}, timeout=10)
            except requests.RequestException as exc:
                raise BenchError(f"POST /v1/token failed while preparing refresh tokens: {exc}") from None
            if resp.status_code != 200:
                raise BenchError(
                    f"POST /v1/token answered {resp.status_code} while preparing refresh tokens: {resp.text[:300]}"
                )
            tokens.append(resp.json()["refresh_token"])
    return tokens


@dataclass
class RefreshTokenSupply:
    """The refresh script's arguments for each wrk run on ``server``: a file of fresh live tokens.

    Every run needs its own: those in flight when a run stops are spent, and their successors are
    lost. Each comes from a fresh ``/v1/token`` call (a new family), cycling through ``id_tokens``.
    """

    server: Gunicorn
    id_tokens: Sequence[str]
    settings: Settings
    workdir: Path
    issued: int = 0

    def __call__(self, phase: str) -> list[str]:
        count = self.settings.refresh_tokens
        sources = [self.id_tokens[(self.issued + i) % len(self.id_tokens)] for i in range(count)]
        self.issued += count
        log(f"issuing {count} refresh tokens through {self.server.name}'s /v1/token for the refresh {phase}")
        tokens = issue_refresh_tokens(self.server.url, sources)
        path = write_lines(self.workdir / f"refresh-{self.server.name}-{phase}.txt", tokens)
        return [str(path), str(self.settings.wrk_threads)]


def write_lines(path: Path, lines: Sequence[str]) -> Path:
    path.write_text("".join(f"{line}\n" for line in lines))
    return path


# --------------------------------------------------------------------------- run

# A phase ("warm-up", "run-1", ...) -> the wrk script's arguments for it.
ScriptArgs = Callable[[str], list[str]]


def _skewed(used: Sequence[float], workers: int) -> bool:
    """True when a worker sat (nearly) idle, so the run measured gunicorn's accept race, not the app.

    gthread workers race to accept() on the shared listening socket and keep every keep-alive connection
    for the whole run; now and then one worker takes all of wrk's connections at once and the others idle.
    """
    if workers < 2:
        return False
    if len(used) < workers:
        return True
    mean = sum(used) / len(used)
    return mean > 0 and min(used) < SKEW_FLOOR * mean


@dataclass(frozen=True)
class Target:
    """One measured wrk run and the CPU the servers spent on it."""

    name: str
    result: WrkResult
    worker_cpu: list[float]  # CPU seconds of each gunicorn worker during the run
    redis_cpu: float | None
    attempts: int
    skewed: bool
    discarded: tuple[str, ...] = ()  # "req/s (split)" of the runs measured again

    @property
    def split(self) -> str:
        total = sum(self.worker_cpu)
        shares = sorted((100 * cpu / total if total else 0.0 for cpu in self.worker_cpu), reverse=True)
        return "/".join(f"{share:.0f}" for share in shares)


@dataclass
class Bench:
    """What every measurement shares: wrk, the settings, and the problems found so far."""

    wrk: str
    settings: Settings
    problems: list[str] = field(default_factory=list)

    def check(self, name: str, phase: str, res: WrkResult) -> None:
        """Anything but a clean run means something broke: the numbers would not mean what they say."""
        issues = []
        if res.non_2xx:
            issues.append(f"{res.non_2xx} non-2xx responses")
        if res.total_socket_errors:
            issues.append(f"socket errors {res.socket_errors}")
        if res.script_counts.get("failures") or res.script_counts.get("starved"):
            issues.append(f"refresh chain broke: {res.script_counts}")
        if issues:
            self.problems.append(f"{name} ({phase}): {'; '.join(issues)}")

    def measure(
        self,
        name: str,
        server: Gunicorn,
        path: str,
        script: Path | None = None,
        script_args: ScriptArgs | None = None,
        redis_pid: int | None = None,
        round_no: int = 1,
    ) -> Target:
        """Warm up in the first round (JWKS fetch, connection pools, caches), then measure; again if
        a worker sat idle."""
        settings, url = self.settings, server.url + path

        def args(phase: str) -> list[str]:
            return script_args(phase) if script_args is not None else []

        if settings.warmup and round_no == 1:
            log(f"{name}: warm-up {settings.warmup}s")
            self.check(name, "warm-up", run_wrk(self.wrk, settings, url, settings.warmup, script, args("warm-up")))
        discarded: list[str] = []
        for attempt in range(1, MAX_ATTEMPTS + 1):
            log(f"{name}: round {round_no}/{settings.rounds}, measuring {settings.duration}s"
                + (f" (attempt {attempt})" if attempt > 1 else ""))
            run_args = args(f"round{round_no}-run{attempt}")
            workers_before = server.worker_cpu()
            redis_before = _cpu_seconds(redis_pid) if redis_pid else None
            result = run_wrk(self.wrk, settings, url, settings.duration, script, run_args)
            workers_after = server.worker_cpu()
            redis_after = _cpu_seconds(redis_pid) if redis_pid else None
            self.check(name, f"run {attempt}", result)
            used = [cpu - workers_before[pid] for pid, cpu in workers_after.items() if pid in workers_before]
            redis_used = redis_after - redis_before if redis_after is not None and redis_before is not None else None
            skewed = _skewed(used, settings.workers)
            target = Target(name, result, used, redis_used, attempt, skewed, tuple(discarded))
            if not skewed:
                break
            discarded.append(f"{result.requests_per_sec:,.0f} req/s with split {target.split}")
            again = "measuring again" if attempt < MAX_ATTEMPTS else "keeping this run"
            log(f"{name}: a worker sat idle (worker CPU split {target.split} %), {again}")
        return target


def cpu_ms_per_request(targets: Sequence[Target], seconds: Callable[[Target], float | None]) -> float | None:
    """CPU ms per request over ``targets`` (``seconds`` of each); None when any run lacks the figure."""
    used = [seconds(t) for t in targets]
    requests = sum(t.result.requests for t in targets)
    if not requests or any(u is None for u in used):
        return None
    return 1000 * sum(u for u in used if u is not None) / requests


def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else 0.0


def _ratio(value: float, base: float) -> float:
    return value / base if base else 0.0


def report(rounds: Sequence[Sequence[Target]], elapsed: float, problems: Sequence[str]) -> str:
    """The Markdown table (medians over the rounds), the target lines, then what explains the numbers.

    Ratios are taken within a round (each target against that round's baselines), then the median of
    the rounds is reported: the machine's drift between rounds then cancels out.
    """
    names = [t.name for t in rounds[0]]
    by_target = [[r[i] for r in rounds] for i in range(len(names))]  # target -> its run in each round
    ratios = [[_ratio(r[i].result.requests_per_sec, r[0].result.requests_per_sec) for r in rounds]
              for i in range(len(names))]
    floor_ratios = [[_ratio(r[i].result.requests_per_sec, r[1].result.requests_per_sec) for r in rounds]
                    for i in range(len(names))]
    lines = [
        "| target | req/s | p50 | p99 | ratio to bare hello | ratio to service /healthz | non-2xx |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for i, name in enumerate(names):
        runs = [t.result for t in by_target[i]]
        lines.append(
            f"| {name} | {_median([r.requests_per_sec for r in runs]):,.0f} "
            f"| {_median([r.p50_ms for r in runs]):.2f} ms | {_median([r.p99_ms for r in runs]):.2f} ms "
            f"| {_median(ratios[i]):.2f} | {_median(floor_ratios[i]):.2f} | {sum(r.non_2xx for r in runs)} |"
        )
    verdict = {True: "PASS", False: "FAIL"}
    lines.append("")
    for label, values in (("bare Flask hello", ratios), ("the service's own /healthz", floor_ratios)):
        token_ratio, refresh_ratio = _median(values[2]), _median(values[3])
        lines += [
            f"token issue >= {TOKEN_TARGET:.2f} x {label}: {verdict[token_ratio >= TOKEN_TARGET]} ({token_ratio:.2f})",
            f"refresh >= {REFRESH_TARGET:.2f} x {label}: {verdict[refresh_ratio >= REFRESH_TARGET]} "
            f"({refresh_ratio:.2f})",
        ]

    def per_request_ms(targets: Sequence[Target], seconds: Callable[[Target], float | None]) -> str:
        ms = cpu_ms_per_request(targets, seconds)
        return "n/a" if ms is None else f"{ms:.3f} ms"

    lines += [
        "",
        f"- rounds: {len(rounds)}; req/s, p50 and p99 above are medians, ratios the median of the per-round ratios",
        "- ratios to bare hello per round (token / refresh): "
        + ", ".join(f"{ratios[2][r]:.2f} / {ratios[3][r]:.2f}" for r in range(len(rounds))),
        "- requests measured: " + ", ".join(f"{name} {sum(t.result.requests for t in by_target[i])}"
                                            for i, name in enumerate(names)),
        "- gunicorn workers' CPU per request: "
        + ", ".join(f"{name} {per_request_ms(by_target[i], lambda t: sum(t.worker_cpu))}"
                    for i, name in enumerate(names)),
        "- wrk's own CPU per request: "
        + ", ".join(f"{name} {per_request_ms(by_target[i], lambda t: t.result.client_cpu)}"
                    for i, name in enumerate(names)),
        "- redis-server CPU per request: "
        + ", ".join(f"{name} {per_request_ms(by_target[i], lambda t: t.redis_cpu)}"
                    for i, name in enumerate(names) if by_target[i][0].redis_cpu is not None),
        "- CPU split between workers (%), per round: "
        + ", ".join(f"{name} {' '.join(t.split for t in by_target[i])}" for i, name in enumerate(names)),
    ]
    chain = [t.result.script_counts for t in by_target[3]]
    lines.append(
        f"- refresh chain: {sum(c.get('loaded', 0) for c in chain)} tokens loaded, "
        f"{sum(c.get('failures', 0) for c in chain)} failed responses, "
        f"{sum(c.get('starved', 0) for c in chain)} starved requests"
    )
    for r, targets in enumerate(rounds, start=1):
        for target in targets:
            if target.attempts > 1:
                state = "still uneven, last run kept" if target.skewed else "even on the last"
                lines.append(
                    f"- round {r}, {target.name}: measured {target.attempts} times because a worker sat idle "
                    f"({state}; discarded: {'; '.join(target.discarded)}): gunicorn's accept race gave wrk's "
                    "connections unevenly"
                )
    lines.append(f"- total time {elapsed:.0f}s")
    lines += [f"- BROKEN: {problem}" for problem in problems]
    return "\n".join(lines)


@dataclass(frozen=True)
class Backends:
    """What every token-service under test shares: one Redis, the dev IdP's config and ID tokens."""

    redis: RedisServer
    config: Path  # the service config: this IdP as issuer, this Redis as store
    id_tokens: list[str]
    pool: Path  # the ID tokens, one per line, for bench/token.lua


def start_backends(stack: contextlib.ExitStack, settings: Settings, workdir: Path) -> Backends:
    """Start Redis and the dev IdP (stopped with ``stack``), write the config, mint the token pool."""
    ensure_redis_server()
    log("starting redis and the dev IdP")
    redis_server = stack.enter_context(RedisServer())
    idp = stack.enter_context(DevIdP(keys=generate_keys()))
    config = workdir / "config.toml"
    write_config(config, idp.issuer, f"redis://{HOST}:{redis_server.port}/0")
    log(f"minting {settings.pool} RS256 ID tokens")
    id_tokens = mint_id_tokens(idp, settings.pool)
    return Backends(redis_server, config, id_tokens, write_lines(workdir / "id-tokens.txt", id_tokens))


def bench(settings: Settings, workdir: Path) -> tuple[list[list[Target]], list[str]]:
    """Start Redis, the IdP and both servers, then measure the four targets once per round."""
    runner = Bench(ensure_wrk(), settings)
    with contextlib.ExitStack() as stack:
        backends = start_backends(stack, settings, workdir)
        redis_server, config, id_tokens, pool = backends.redis, backends.config, backends.id_tokens, backends.pool
        nthreads = str(settings.wrk_threads)

        # Both stay up for every round; an idle server costs no CPU.
        hello = stack.enter_context(hello_server(settings, workdir))
        service = stack.enter_context(token_server(settings, workdir, config))
        refresh_args = RefreshTokenSupply(service, id_tokens, settings, workdir)
        rounds: list[list[Target]] = []
        for round_no in range(1, settings.rounds + 1):
            rounds.append([
                runner.measure("baseline GET / (bench.hello)", hello, "/", round_no=round_no),
                # The same hello, inside the service: its middleware (request ids, metrics) included.
                runner.measure("baseline GET /healthz (token-service)", service, "/healthz", round_no=round_no),
                runner.measure("POST /v1/token", service, "/v1/token", BENCH / "token.lua",
                               lambda _phase: [str(pool), nthreads], redis_server.pid, round_no=round_no),
                runner.measure("POST /v1/token/refresh", service, "/v1/token/refresh", BENCH / "refresh.lua",
                               refresh_args, redis_server.pid, round_no=round_no),
            ])
        if runner.problems:
            log(f"token-service log tail:\n{service.log_tail()}")
    return rounds, runner.problems


def _interrupt(signum: int, _frame: FrameType | None) -> None:
    """SIGTERM unwinds like Ctrl-C, so every context manager stops what it started."""
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main() -> int:
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)  # a launcher in the background may hand us SIGINT ignored
    started = time.monotonic()
    try:
        settings = Settings.from_env(os.environ)
        header = [
            "## token-service throughput",
            "",
            *machine_lines(),
            f"- gunicorn: workers {settings.workers}, threads {settings.threads} (gthread), same for every target",
            f"- wrk {' '.join(settings.wrk_args(settings.duration))}, warm-up {settings.warmup}s per target, "
            f"{settings.rounds} rounds",
            f"- token pool {settings.pool} distinct users (RS256); {settings.refresh_tokens} refresh families "
            "per refresh run; rate limits on, 1000000 per 60 s per key",
            "",
        ]
        print("\n".join(header), flush=True)
        with tempfile.TemporaryDirectory(prefix="token-bench-") as tmp:
            rounds, problems = bench(settings, Path(tmp))
    except KeyboardInterrupt:
        log("interrupted; everything started was stopped")
        return 130
    except (BenchError, DevIdPError, RedisServerError) as exc:
        log(f"FAILED: {exc}")
        return 1
    print(report(rounds, time.monotonic() - started, problems), flush=True)
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
