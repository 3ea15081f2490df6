"""``make bench``: token-service side by side with the peers a user would pick instead, in one run.

Targets, each under the same server shape (the packaged gunicorn settings through
``deploy/gunicorn.conf.py``, or what the ``TOKEN_SERVICE_*`` variables make of them) wherever it is a
Python app:

- a bare Flask hello (``bench/hello.py``);
- the Twilio sample token server pattern (``bench/twilio_sample.py``: Flask + ``twilio`` ``AccessToken``
  and ``ChatGrant``, no auth, no store);
- token-service ``POST /v1/token`` (a pool of RS256 ID tokens of distinct users, forged with the dev
  IdP's key) and ``POST /v1/token/refresh`` (every refresh token used once, chained per family), with
  Redis, rate limits on at limits no run reaches (their code still runs), metrics on;
- oidc-provider's refresh_token grant (the dev IdP, ``devidp/``: rotation on, ES256 ID tokens, its
  in-memory adapter), with refresh tokens from real code + PKCE logins with ``offline_access``.

The peak (req/s, p50, p99) is wrk's, closed loop. Each round measures every target once (round 1 after
a warm-up), then runs the refresh open loop (``bench/openloop.c``) at 70 % of that round's peak refresh
rate, with latency from each request's intended send time. A shared machine drifts by tens of percent
between minutes, so a ratio is taken within a round and the report gives the median round's, with every
round's listed (their spread is the noise).

CPU per request sums every server-side process: gunicorn's master and workers (and Redis, and nginx
when in front) for token-service, the master and workers for the Flask peers, the node process for
oidc-provider. The load generators' own CPU is reported apart. Before the load, the Redis memory per
live family is read (``bench/redis_memory.py``).

A missed target still exits 0 (a benchmark, not a test); a non-2xx answer, a socket error, a broken
refresh chain or a server that does not start exits 1. Everything started is stopped on exit.

Environment (defaults in brackets):
    TOKEN_SERVICE_WORKER_CLASS, _WORKERS, _THREADS, _KEEPALIVE   the server shape [the packaged settings']
    BENCH_NGINX [0]                     1: nginx in front of token-service (its CPU counted)
    BENCH_ROUNDS [3]                    interleaved rounds
    WRK_DURATION [10s], WRK_WARMUP [3s], WRK_THREADS [2], WRK_CONNECTIONS [32], WRK_TIMEOUT [2s]
    BENCH_OPEN_LOAD [0.7]               open-loop rate as a share of the round's peak refresh rate
    BENCH_OPEN_DURATION [20], BENCH_OPEN_WARMUP [2], BENCH_OPEN_CONNECTIONS [64]   (seconds; keep-alive)
    BENCH_OPEN_NICE [-10 as root, else 0]   the open-loop generator's nice, and its session's (loadgen._prioritize)
    BENCH_POOL [2000]                   distinct users in the ID token pool
    BENCH_FAMILIES [1000]               token-service refresh families per run (fresh each run)
    BENCH_OIDC_FAMILIES [64]            oidc-provider grants per run, from new logins (see oidc_load)
    BENCH_MEMORY_FAMILIES [500], BENCH_MEMORY_PER_IDENTITY [2], BENCH_MEMORY_REFRESHES [16]
"""

from __future__ import annotations

import contextlib
import os
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

ROOT = Path(__file__).resolve().parent.parent
# `python bench/run.py` puts bench/ on sys.path, not the repository root that holds devidp/ and tests/.
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
VENV = ROOT / ".venv"


def _use_project_venv() -> None:
    """Re-run under the project's venv when started by a python without its packages."""
    try:
        import gunicorn  # type: ignore[import-untyped]  # noqa: F401
        import jwt  # noqa: F401
        import twilio  # noqa: F401
    except ImportError:
        python = VENV / "bin" / "python"
        if python.exists() and Path(sys.prefix).resolve() != VENV.resolve():
            os.execv(python, [str(python), str(Path(sys.argv[0]).resolve()), *sys.argv[1:]])
        raise SystemExit("the project's packages are missing: run `make install` first") from None


_use_project_venv()

import redis  # noqa: E402

from bench import loadgen, pools, redis_memory, servers  # noqa: E402
from bench.loadgen import Load, OpenLoop, OpenLoopResult, Wrk, WrkResult  # noqa: E402
from bench.procs import (  # noqa: E402
    BenchError,
    CpuGroups,
    MachineTime,
    Scheduling,
    Server,
    WakeupProbe,
    process_tree,
)
from bench.servers import Shape  # noqa: E402
from devidp.harness import DevIdP, DevIdPError, discover, generate_keys  # noqa: E402
from tests.redis_servers import RedisServer, RedisServerError, ensure_redis_server  # noqa: E402

BUILD = ROOT / "build" / "bench"
MAX_ATTEMPTS = 3  # closed-loop runs per target when a worker sits idle
SKEW_FLOOR = 0.25  # a worker below this share of the mean worker CPU counts as idle
TARGETS = {"refresh_vs_oidc": 0.8, "token_vs_twilio": 1.2, "open_p99_ms": 10.0, "bytes_per_family": 400.0}


def log(message: str) -> None:
    """Progress goes to stderr, so stdout carries only the report."""
    print(f"[bench] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- settings


def _number(env: Mapping[str, str], name: str, default: float, minimum: float = 1) -> float:
    raw = env.get(name, str(default)).strip().removesuffix("s")
    try:
        value = float(raw)
    except ValueError:
        raise BenchError(f"{name}={env.get(name)!r} is not a number") from None
    if value < minimum:
        raise BenchError(f"{name} must be at least {minimum}")
    return value


def _whole(env: Mapping[str, str], name: str, default: int, minimum: int = 1) -> int:
    value = _number(env, name, default, minimum)
    if value != int(value):
        raise BenchError(f"{name} must be a whole number")
    return int(value)


@dataclass(frozen=True)
class Settings:
    """One set of server and load settings, applied to every target so the ratios compare like with like."""

    shape: Shape
    rounds: int
    duration: int
    warmup: int
    wrk_threads: int
    connections: int
    timeout: int
    open_load: float
    open_duration: float
    open_warmup: float
    open_connections: int
    open_nice: int
    pool: int
    families: int
    oidc_families: int
    memory_families: int
    memory_per_identity: int
    memory_refreshes: int

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        settings = cls(
            shape=servers.shape_from_env(env),
            rounds=_whole(env, "BENCH_ROUNDS", 3),
            duration=_whole(env, "WRK_DURATION", 10),
            warmup=_whole(env, "WRK_WARMUP", 3, minimum=0),
            wrk_threads=_whole(env, "WRK_THREADS", 2),
            connections=_whole(env, "WRK_CONNECTIONS", 32),
            timeout=_whole(env, "WRK_TIMEOUT", 2),
            open_load=_number(env, "BENCH_OPEN_LOAD", 0.7, minimum=0.01),
            open_duration=_number(env, "BENCH_OPEN_DURATION", 20),
            open_warmup=_number(env, "BENCH_OPEN_WARMUP", 2, minimum=0),
            open_connections=_whole(env, "BENCH_OPEN_CONNECTIONS", 64),
            open_nice=int(_number(env, "BENCH_OPEN_NICE", -10 if os.geteuid() == 0 else 0, minimum=-20)),
            pool=_whole(env, "BENCH_POOL", 2000),
            families=_whole(env, "BENCH_FAMILIES", 1000),
            oidc_families=_whole(env, "BENCH_OIDC_FAMILIES", 64),
            memory_families=_whole(env, "BENCH_MEMORY_FAMILIES", 500),
            memory_per_identity=_whole(env, "BENCH_MEMORY_PER_IDENTITY", 2),
            memory_refreshes=_whole(env, "BENCH_MEMORY_REFRESHES", 16, minimum=0),
        )
        if settings.connections < settings.wrk_threads:
            raise BenchError("WRK_CONNECTIONS must be at least WRK_THREADS (wrk gives each thread its share)")
        if settings.families < 2 * max(settings.connections, settings.open_connections):
            raise BenchError("BENCH_FAMILIES must be at least twice WRK_CONNECTIONS and BENCH_OPEN_CONNECTIONS, "
                             "or the refresh chains starve")
        if settings.oidc_families < 2 * settings.connections:
            raise BenchError("BENCH_OIDC_FAMILIES must be at least twice WRK_CONNECTIONS, or the chains starve")
        return settings

    def wrk(self) -> Wrk:
        return Wrk(loadgen.ensure_tool("wrk"), self.wrk_threads, self.connections, self.timeout)

    def open_loop(self) -> OpenLoop:
        return OpenLoop(loadgen.build_openloop(BUILD), self.open_connections, self.open_warmup, drain=5.0,
                        nice=self.open_nice)


def machine_lines() -> list[str]:
    """What the numbers were measured on: they mean little without it."""
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return [f"- machine: nproc {len(os.sched_getaffinity(0))}, CPU {model}, load average at start {load}",
            f"- python {sys.version.split()[0]}, gunicorn config {servers.GUNICORN_CONF.relative_to(ROOT)}"]


# --------------------------------------------------------------------------- targets and runs


def gunicorn_groups(server: Server) -> dict[str, Callable[[], Iterable[int]]]:
    """A gunicorn master and its workers, apart (the workers' split shows gthread's accept race)."""

    def master() -> list[int]:
        return [server.pid] if server.pid else []

    def workers() -> list[int]:
        return [pid for pid in server.pids() if pid != server.pid]

    return {"master": master, "workers": workers}


@dataclass(frozen=True)
class Target:
    """One thing measured: where the load goes, what it sends, which processes its CPU is summed over."""

    key: str
    label: str
    address: str
    load: Callable[[], Load]
    cpu: CpuGroups


@dataclass(frozen=True)
class Run:
    """One measured run of a target and the CPU each server-side group spent on it."""

    target: str
    round_no: int
    result: WrkResult | OpenLoopResult
    cpu: Mapping[str, float]
    worker_split: str = ""
    attempts: int = 1
    discarded: tuple[str, ...] = ()
    sched: Scheduling | None = None  # the workers' context switches and run-queue wait, per request
    stolen: float = 0.0  # the share of the machine's CPU time the hypervisor took during the run
    wakeup_ms: tuple[float, float] = (0.0, 0.0)  # a 2 ms sleeper's lateness during the run: p99, max

    @property
    def requests(self) -> int:
        return self.result.requests

    def cpu_us(self, groups: Iterable[str] | None = None) -> float:
        """Server CPU microseconds per request, over ``groups`` (all of them unless told)."""
        names = self.cpu if groups is None else groups
        return 1e6 * sum(self.cpu.get(name, 0.0) for name in names) / self.requests if self.requests else 0.0

    @property
    def client_us(self) -> float:
        return 1e6 * self.result.client_cpu / self.requests if self.requests else 0.0


def _split(per_pid: Mapping[int, float]) -> tuple[str, bool]:
    """The workers' shares of CPU (%), and whether one sat (nearly) idle: then the run measured gthread's
    accept race (one worker took all of wrk's keep-alive connections), not the app."""
    used = list(per_pid.values())
    total = sum(used)
    shares = sorted((100 * cpu / total if total else 0.0 for cpu in used), reverse=True)
    mean = total / len(used) if used else 0.0
    skewed = len(used) > 1 and mean > 0 and min(used) < SKEW_FLOOR * mean
    return "/".join(f"{share:.0f}" for share in shares), skewed


@dataclass
class Bench:
    """The load generators and the problems found so far."""

    wrk: Wrk
    open_loop: OpenLoop
    settings: Settings
    problems: list[str] = field(default_factory=list)

    def check(self, name: str, phase: str, result: WrkResult | OpenLoopResult) -> None:
        """Anything but a clean run means something broke: the numbers would not mean what they say."""
        issues = []
        if result.non_2xx:
            issues.append(f"{result.non_2xx} non-2xx answers")
        if isinstance(result, WrkResult):
            if result.total_socket_errors:
                issues.append(f"socket errors {result.socket_errors}")
            counts = result.script_counts
            if counts.get("failures") or counts.get("starved"):
                issues.append(f"refresh chain broke: {counts}")
        elif result.errors or result.starved:
            issues.append(f"{result.errors} lost requests, {result.starved} starved")
        if issues:
            self.problems.append(f"{name} ({phase}): {'; '.join(issues)}")

    def closed(self, target: Target, round_no: int) -> Run:
        """wrk for WRK_DURATION (after a warm-up in round 1); again, at most twice, if a worker sat idle."""
        settings = self.settings
        if settings.warmup and round_no == 1:
            log(f"{target.label}: warm-up {settings.warmup}s")
            self.check(target.label, "warm-up", self.wrk.run(target.address, target.load(), settings.warmup))
        discarded: list[str] = []
        for attempt in range(1, MAX_ATTEMPTS + 1):
            log(f"{target.label}: round {round_no}, closed loop {settings.duration}s"
                + (f" (attempt {attempt})" if attempt > 1 else ""))
            load = target.load()
            before = target.cpu.sample()
            result = self.wrk.run(target.address, load, settings.duration)
            after = target.cpu.sample()
            self.check(target.label, f"round {round_no}", result)
            workers = after.get("workers", {})
            split, skewed = _split({pid: cpu - before["workers"][pid] for pid, cpu in workers.items()
                                    if pid in before.get("workers", {})})
            run = Run(target.key, round_no, result, CpuGroups.used(before, after), split, attempt, tuple(discarded))
            if not skewed:
                break
            discarded.append(f"{result.requests_per_sec:,.0f} req/s with split {split}")
            log(f"{target.label}: a worker sat idle (split {split} %)"
                + (", measuring again" if attempt < MAX_ATTEMPTS else ", keeping this run"))
        return run

    def open(self, target: Target, rate: float, round_no: int) -> Run:
        settings = self.settings
        log(f"{target.label}: round {round_no}, open loop at {rate:,.0f} req/s for {settings.open_duration:g}s")
        load = target.load()
        workers = target.cpu.groups.get("workers", lambda: [])
        before, sched_before, machine = target.cpu.sample(), Scheduling.of(workers()), MachineTime.now()
        with WakeupProbe() as probe:
            result = self.open_loop.run(target.address, load, rate, settings.open_duration)
        after, sched = target.cpu.sample(), Scheduling.of(workers()) - sched_before
        self.check(f"{target.label} open loop", f"round {round_no}", result)
        count = max(result.requests, 1)
        return Run(target.key, round_no, result, CpuGroups.used(before, after),
                   sched=Scheduling(round(sched.switches / count), sched.run_delay / count),
                   stolen=MachineTime.now().stolen_since(machine),
                   wakeup_ms=(probe.percentile_ms(0.99), probe.percentile_ms(1.0)))


# --------------------------------------------------------------------------- set-up


@dataclass(frozen=True)
class Backends:
    """What every token-service under test shares: one Redis, the dev IdP, the ID tokens."""

    redis: RedisServer
    idp: DevIdP
    id_tokens: list[str]
    pool: Path  # the ID tokens, one per line
    identities: Path  # user0@example.com ..., one per line (the Twilio sample's callers)
    workdir: Path

    def config(self, nginx: bool, tag: str = "") -> Path:
        """The service config: this IdP as issuer, this Redis as store (one proxy trusted behind nginx)."""
        path = self.workdir / f"config{tag}.toml"
        servers.write_config(path, self.idp.issuer, self.redis_url(0), trusted_proxies=1 if nginx else 0)
        return path

    def redis_url(self, db: int) -> str:
        return f"redis://{servers.HOST}:{self.redis.port}/{db}"


def start_backends(stack: contextlib.ExitStack, settings: Settings, workdir: Path) -> Backends:
    """Start Redis and the dev IdP (stopped with ``stack``), mint the token pool."""
    ensure_redis_server()
    log("starting redis and the dev IdP")
    redis_server = stack.enter_context(RedisServer())
    idp = stack.enter_context(DevIdP(keys=generate_keys(), clients=pools.oidc_clients(),
                                     users=pools.oidc_users(settings.pool)))
    log(f"minting {settings.pool} RS256 ID tokens")
    id_tokens = pools.mint_id_tokens(idp, settings.pool)
    return Backends(
        redis_server, idp, id_tokens,
        loadgen.write_lines(workdir / "id-tokens.txt", id_tokens),
        loadgen.write_lines(workdir / "identities.txt", [f"user{i}@example.com" for i in range(settings.pool)]),
        workdir,
    )  # fmt: skip


def listening_pid(port: int) -> int:
    """The process listening on a loopback TCP port (the dev IdP's node), from /proc/net/tcp."""
    inode = None
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[3] == "0A" and int(fields[1].split(":")[1], 16) == port:
            inode = fields[9]
    for pid in (int(name) for name in os.listdir("/proc") if name.isdigit()):
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{pid}/fd/{fd}") == f"socket:[{inode}]":
                        return pid
    raise BenchError(f"no process found listening on port {port}")


@dataclass(frozen=True)
class ServiceUnderTest:
    """token-service in one shape: gunicorn, nginx in front or not, and the groups its CPU is summed over."""

    gunicorn: Server
    front: Server | None
    redis_pid: int

    @property
    def address(self) -> str:
        return (self.front or self.gunicorn).address

    @property
    def url(self) -> str:
        return (self.front or self.gunicorn).url

    def cpu(self) -> CpuGroups:
        groups = gunicorn_groups(self.gunicorn)
        groups["redis"] = lambda: [self.redis_pid]
        if self.front is not None:
            front = self.front
            groups["nginx"] = lambda: process_tree(front.pid) if front.pid else []
        return CpuGroups(groups)


def start_service(stack: contextlib.ExitStack, shape: Shape, backends: Backends, checkout: Path = ROOT,
                  tag: str = "") -> ServiceUnderTest:
    config = backends.config(shape.nginx, tag)
    gunicorn = stack.enter_context(servers.token_server(shape, backends.workdir, config, checkout, tag))
    front = stack.enter_context(servers.nginx_front(gunicorn, backends.workdir, tag=tag)) if shape.nginx else None
    assert backends.redis.pid is not None
    return ServiceUnderTest(gunicorn, front, backends.redis.pid)


def token_load(backends: Backends) -> Callable[[], Load]:
    load = Load("POST", "/v1/token", headers=("Authorization: Bearer {}",), items=backends.pool)
    return lambda: load


def refresh_load(
    service: ServiceUnderTest, backends: Backends, settings: Settings, tag: str = ""
) -> Callable[[], Load]:
    """Fresh families for each run, each from its own ``POST /v1/token``, cycling through the ID tokens."""
    issued = 0

    def make(count: int) -> list[str]:
        nonlocal issued
        sources = [backends.id_tokens[(issued + i) % len(backends.id_tokens)] for i in range(count)]
        issued += count
        return pools.issue_refresh_tokens(service.url, sources)

    supply = pools.RefreshTokenSupply(f"refresh{tag}", settings.families, make, backends.workdir)
    return lambda: Load("POST", "/v1/token/refresh", headers=("Content-Type: application/json",),
                        body='{"refresh_token":"{}"}', items=supply.next_file(log), chain="refresh_token")


def oidc_load(backends: Backends, settings: Settings) -> Callable[[], Load]:
    """oidc-provider's refresh grant, on grants from new logins for each run, each of another user.

    Few of them: the provider's in-memory adapter keeps 1,000 to 2,000 entries (an LRU), a login adds
    about ten, and a refresh about three. A grant not looked up for that long is gone, and its refresh
    fails (as 128 logins before a run made a few of the first ones do).
    """
    users = list(pools.oidc_users(settings.pool))
    logins = 0

    def make(count: int) -> list[str]:
        nonlocal logins
        chosen = [users[(logins + i) % len(users)] for i in range(count)]
        logins += count
        return pools.oidc_refresh_tokens(backends.idp, chosen)

    supply = pools.RefreshTokenSupply("oidc", settings.oidc_families, make, backends.workdir)
    return lambda: Load("POST", "/token", headers=("Content-Type: application/x-www-form-urlencoded",),
                        body=f"grant_type=refresh_token&client_id={pools.OIDC_CLIENT_ID}&refresh_token={{}}",
                        items=supply.next_file(log), chain="refresh_token")


# --------------------------------------------------------------------------- report


def _median(values: Iterable[float]) -> float:
    values = list(values)
    return statistics.median(values) if values else 0.0


def _spread(values: Sequence[float]) -> str:
    """Max - min over the median, in percent: how far the rounds agree."""
    middle = _median(values)
    return f"±{50 * (max(values) - min(values)) / middle:.0f} %" if middle and len(values) > 1 else "n/a"


def closed_table(labels: Mapping[str, str], runs: Sequence[Run]) -> list[str]:
    lines = [
        "| target | req/s | p50 | p99 | server CPU per request | of which | client CPU per request "
        "| rounds' CPU spread |",
        "| --- | ---: | ---: | ---: | ---: | --- | ---: | ---: |",
    ]
    for key, label in labels.items():
        mine = [r for r in runs if r.target == key]
        if not mine:
            continue
        groups = list(mine[0].cpu)
        parts = ", ".join(f"{name} {_median(r.cpu_us([name]) for r in mine):,.0f}" for name in groups)
        lines.append(
            f"| {label} | {_median(r.result.requests_per_sec for r in mine if isinstance(r.result, WrkResult)):,.0f} "
            f"| {_median(r.result.p50_ms for r in mine):.2f} ms | {_median(r.result.p99_ms for r in mine):.2f} ms "
            f"| {_median(r.cpu_us() for r in mine):,.0f} µs | {parts} | {_median(r.client_us for r in mine):,.0f} µs "
            f"| {_spread([r.cpu_us() for r in mine])} |"
        )
    return lines


def open_table(labels: Mapping[str, str], runs: Sequence[Run]) -> list[str]:
    lines = [
        "| target | round | offered | achieved | p50 | p99 | p99.9 | max | server CPU per request | run-queue wait "
        "| generator's send lag p99 | CPU stolen by the host | a sleeper's wake-up lateness p99, max |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for run in sorted(runs, key=lambda r: (list(labels).index(r.target), r.round_no)):
        res = run.result
        assert isinstance(res, OpenLoopResult)
        lines.append(
            f"| {labels[run.target]} | {run.round_no} | {res.rate:,.0f}/s | {res.achieved_rate:,.0f}/s "
            f"| {res.p50_ms:.2f} ms "
            f"| {res.p99_ms:.2f} ms | {res.p999_ms:.2f} ms | {res.max_ms:.2f} ms | {run.cpu_us():,.0f} µs "
            f"| {1000 * run.sched.run_delay if run.sched else 0:.2f} ms | {res.send_lag_p99_ms:.2f} ms "
            f"| {run.stolen:.1%} | {run.wakeup_ms[0]:.1f} ms, {run.wakeup_ms[1]:.1f} ms |"
        )
    return lines


def ratio_per_round(runs: Sequence[Run], numerator: str, denominator: str) -> list[float]:
    """CPU per request of ``numerator`` over ``denominator``, within each round."""
    by = {(r.target, r.round_no): r for r in runs}
    rounds = sorted({r.round_no for r in runs})
    return [by[numerator, n].cpu_us() / by[denominator, n].cpu_us() for n in rounds
            if (numerator, n) in by and (denominator, n) in by and by[denominator, n].cpu_us()]


def _rounds(ratios: Sequence[float]) -> str:
    """The median ratio, then each round's."""
    return f"{_median(ratios):.2f}x (rounds " + ", ".join(f"{r:.2f}" for r in ratios) + ")"


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def report(settings: Settings, labels: Mapping[str, str], closed: Sequence[Run], opened: Sequence[Run],
           memory: redis_memory.MemoryReport, elapsed: float, problems: Sequence[str]) -> str:
    refresh_ratio = ratio_per_round(closed, "refresh", "oidc")
    token_ratio = ratio_per_round(closed, "token", "twilio")
    open_p99 = _median(r.result.p99_ms for r in opened if r.target == "refresh")
    floor_p99 = _median(r.result.p99_ms for r in opened if r.target == "floor_refresh")
    floors = {"refresh": ratio_per_round(closed, "floor_refresh", "oidc"),
              "token": ratio_per_round(closed, "floor_token", "twilio"),
              "server": ratio_per_round(closed, "floor_hello", "oidc")}
    lines = [
        f"### Closed loop (wrk, {settings.connections} keep-alive connections; medians of {settings.rounds} rounds)",
        "",
        *closed_table(labels, closed),
        "",
        f"### Open loop: refresh at {settings.open_load:.0%} of each round's peak (token-service's, the floor's)",
        "",
        f"{settings.open_connections} keep-alive connections; latency from each request's intended send time; "
        f"{settings.open_duration:g} s measured after {settings.open_warmup:g} s of warm-up; generator at nice "
        f"{settings.open_nice}{' in a session of its own' if settings.open_nice else ''}. Run-queue wait: the "
        "time the service's threads waited runnable for a core, per request. The generator's send lag "
        "includes waiting for a free connection. CPU stolen: the share of the machine's CPU time the "
        "hypervisor gave to others during the run (/proc/stat). Wake-up lateness: how late a thread of the "
        "bench that sleeps 2 ms at a time woke up during the run, the machine's own wait for a core.",
        "",
        *open_table(labels, opened),
        "",
        "### Redis memory per live refresh family",
        "",
        f"- {memory.families} families, {memory.per_identity} per identity: {memory.fresh_bytes:,.0f} bytes per family "
        f"fresh ({memory.keys_per_family:.1f} keys each), {memory.refreshed_bytes:,.0f} bytes after "
        f"{memory.refreshes} refreshes each (the keys' MEMORY USAGE and their share of the key tables, per "
        "family; rate-limit buckets excluded)",
        f"- `used_memory` delta / families (less client buffers and cached scripts), which also moves with "
        f"allocations outside the keys: {memory.fresh_used_memory:,.0f} bytes fresh, "
        f"{memory.refreshed_used_memory:,.0f} after {memory.refreshes} refreshes",
        f"- MEMORY USAGE summed over every key: an identity with its first family adds "
        f"{memory.identity_first_family:,} bytes, a second family {memory.further_family:,} bytes fresh and "
        f"{memory.further_family_refreshed:,} bytes after {memory.refreshes} refreshes",
        "",
        "### Targets",
        "",
        f"- refresh CPU per request <= {TARGETS['refresh_vs_oidc']}x oidc-provider's ES256 refresh grant: "
        f"{verdict(_median(refresh_ratio) <= TARGETS['refresh_vs_oidc'])} ({_rounds(refresh_ratio)})",
        f"- token issue CPU per request <= {TARGETS['token_vs_twilio']}x the Twilio sample: "
        f"{verdict(_median(token_ratio) <= TARGETS['token_vs_twilio'])} ({_rounds(token_ratio)})",
        f"- the floor under both (bench/floor.py, none of the service's code): a refresh "
        f"{_rounds(floors['refresh'])} oidc-provider's grant, a token issue {_rounds(floors['token'])} the Twilio "
        f"sample (the server alone, a plain WSGI hello: {_rounds(floors['server'])} oidc-provider's grant); the "
        f"floor's refresh p99 at {settings.open_load:.0%} of its own peak: {floor_p99:.2f} ms (median of the rounds). "
        "A target its floor misses cannot be met by changing the service, only the stack under it",
        f"- refresh p99 <= {TARGETS['open_p99_ms']:g} ms at {settings.open_load:.0%} of peak: "
        f"{verdict(open_p99 <= TARGETS['open_p99_ms'])} ({open_p99:.2f} ms, median of the rounds)",
        f"- Redis <= {TARGETS['bytes_per_family']:g} bytes per live family: "
        f"{verdict(max(memory.fresh_bytes, memory.refreshed_bytes) <= TARGETS['bytes_per_family'])} "
        f"({memory.refreshed_bytes:,.0f} bytes after {memory.refreshes} refreshes, {memory.fresh_bytes:,.0f} fresh)",
        "",
    ]
    for run in closed:
        if run.attempts > 1:
            lines.append(f"- round {run.round_no}, {labels[run.target]}: measured {run.attempts} times because a "
                         f"worker sat idle (discarded: {'; '.join(run.discarded)})")
    lines.append("- workers' CPU split (%), per round: " + ", ".join(
        f"{labels[key]} {' '.join(r.worker_split for r in closed if r.target == key)}"
        for key in labels if any(r.worker_split for r in closed if r.target == key)))
    lines.append(f"- total time {elapsed:.0f} s")
    lines += [f"- BROKEN: {problem}" for problem in problems]
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


LABELS = {
    "hello": "bare Flask hello, `GET /`",
    "twilio": "Twilio sample pattern, `POST /token`",
    "token": "token-service `POST /v1/token`",
    "refresh": "token-service `POST /v1/token/refresh`",
    "oidc": "oidc-provider refresh_token grant (ES256, rotation)",
    "floor_hello": "floor: plain WSGI hello, `GET /`",
    "floor_token": "floor: plain WSGI, RS256 check + one Redis script + mint",
    "floor_refresh": "floor: plain WSGI, one Redis script + mint",
}


def bench(settings: Settings, workdir: Path) -> str:
    runner = Bench(settings.wrk(), settings.open_loop(), settings)
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        backends = start_backends(stack, settings, workdir)
        service = start_service(stack, settings.shape, backends)
        hello = stack.enter_context(servers.hello_server(settings.shape, workdir))
        twilio = stack.enter_context(servers.twilio_sample_server(settings.shape, workdir))
        issuer = backends.idp.issuer
        floor = stack.enter_context(servers.floor_server(
            settings.shape, workdir, backends.redis_url(1), issuer, discover(issuer)["jwks_uri"], pools.AUDIENCE))

        memory = redis_memory.measure(
            redis.Redis(host=servers.HOST, port=backends.redis.port), service.url,
            backends.id_tokens[-redis_memory.needed_identities(settings.memory_families,
                                                               settings.memory_per_identity):],
            settings.memory_families, settings.memory_per_identity, settings.memory_refreshes, log,
        )  # fmt: skip

        node = listening_pid(backends.idp.port)
        flask_cpu = {"hello": CpuGroups(gunicorn_groups(hello)), "twilio": CpuGroups(gunicorn_groups(twilio))}
        floor_cpu = {**gunicorn_groups(floor), "redis": lambda: [service.redis_pid]}
        targets = [
            Target("hello", LABELS["hello"], hello.address, lambda: Load("GET", "/"), flask_cpu["hello"]),
            Target("twilio", LABELS["twilio"], twilio.address,
                   lambda: Load("POST", "/token", headers=("Content-Type: application/json",),
                                body='{"identity":"{}"}', items=backends.identities), flask_cpu["twilio"]),
            Target("token", LABELS["token"], service.address, token_load(backends), service.cpu()),
            Target("refresh", LABELS["refresh"], service.address, refresh_load(service, backends, settings),
                   service.cpu()),
            Target("oidc", LABELS["oidc"], f"{servers.HOST}:{backends.idp.port}", oidc_load(backends, settings),
                   CpuGroups({"node": lambda: [node]})),
            Target("floor_hello", LABELS["floor_hello"], floor.address, lambda: Load("GET", "/"),
                   CpuGroups(gunicorn_groups(floor))),
            Target("floor_token", LABELS["floor_token"], floor.address,
                   lambda: Load("POST", "/token", headers=("Authorization: Bearer {}",), items=backends.pool),
                   CpuGroups(floor_cpu)),
            Target("floor_refresh", LABELS["floor_refresh"], floor.address,
                   lambda: Load("POST", "/refresh", headers=("Content-Type: application/json",),
                                body='{"refresh_token":"{}"}', items=backends.identities), CpuGroups(floor_cpu)),
        ]  # fmt: skip
        open_loop = [target for target in targets if target.key in ("refresh", "floor_refresh")]
        closed: list[Run] = []
        opened: list[Run] = []
        for round_no in range(1, settings.rounds + 1):
            for target in targets:
                closed.append(runner.closed(target, round_no))
            for target in open_loop:  # each at a share of its own peak in this round
                peak = next(r for r in closed if r.target == target.key and r.round_no == round_no).result
                assert isinstance(peak, WrkResult)
                opened.append(runner.open(target, settings.open_load * peak.requests_per_sec, round_no))
        if runner.problems:
            log(f"token-service log tail:\n{service.gunicorn.log_tail()}")
    return report(settings, LABELS, closed, opened, memory, time.monotonic() - started, runner.problems)


def header(settings: Settings) -> list[str]:
    return [
        "## token-service against its peers",
        "",
        *machine_lines(),
        f"- server shape for every Python target: {settings.shape.label} "
        f"(`TOKEN_SERVICE_WORKER_CLASS`, `_WORKERS`, `_THREADS`, `_KEEPALIVE`, `BENCH_NGINX`)",
        f"- wrk -t{settings.wrk_threads} -c{settings.connections} -d{settings.duration}s, warm-up "
        f"{settings.warmup}s per target in round 1; {settings.rounds} interleaved rounds",
        f"- token pool {settings.pool} distinct users (RS256); {settings.families} fresh refresh families per "
        f"token-service run; {settings.oidc_families} oidc-provider grants (new logins) per run; "
        "rate limits on at 1,000,000 per 60 s per key",
        "",
    ]


def _interrupt(signum: int, _frame: FrameType | None) -> None:
    """SIGTERM unwinds like Ctrl-C, so every context manager stops what it started."""
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main_with(body: Callable[[Path], str], header_lines: Callable[[], list[str]]) -> int:
    """Run ``body`` in a temp dir with signals and errors handled; print the header, then its report."""
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)  # a launcher in the background may hand us SIGINT ignored
    try:
        print("\n".join(header_lines()), flush=True)
        with tempfile.TemporaryDirectory(prefix="token-bench-") as tmp:
            text = body(Path(tmp))
    except KeyboardInterrupt:
        log("interrupted; everything started was stopped")
        return 130
    except (BenchError, DevIdPError, RedisServerError) as exc:
        log(f"FAILED: {exc}")
        return 1
    print(text, flush=True)
    return 1 if "- BROKEN:" in text else 0


def main() -> int:
    try:
        settings = Settings.from_env(os.environ)
    except BenchError as exc:
        log(f"FAILED: {exc}")
        return 1
    return main_with(lambda workdir: bench(settings, workdir), lambda: header(settings))


if __name__ == "__main__":
    raise SystemExit(main())
