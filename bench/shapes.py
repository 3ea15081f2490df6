"""The server-layer exploration: token-service under several gunicorn shapes, side by side.

Each shape (worker class, workers, threads, keep-alive, nginx in front or not) serves its own
token-service, all against one Redis and one dev IdP. In each round, every shape in turn (the order
rotates from round to round) gets: wrk on ``POST /v1/token`` and on ``POST /v1/token/refresh`` (the
peak), then the open loop on both at ``BENCH_OPEN_LOAD`` (70 %) of that peak. CPU per request sums the
master, the workers, Redis and nginx. Listing a shape twice (the default does) is an A/A comparison: the
difference between the two copies is the noise of the machine.

Usage (after ``make install``)::

    .venv/bin/python -m bench.shapes
    BENCH_SHAPES="gevent:3,gthread:3x4,sync:3+nginx" BENCH_ROUNDS=5 .venv/bin/python -m bench.shapes

A shape is ``CLASS:WORKERS[xTHREADS][:kaSECONDS][+nginx]``. Other variables as ``bench/run.py``'s
(WRK_*, BENCH_OPEN_*, BENCH_POOL, BENCH_FAMILIES); WRK_DURATION defaults to 8 s and BENCH_OPEN_DURATION
to 15 s here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from bench import run
from bench.loadgen import OpenLoopResult, WrkResult
from bench.procs import BenchError
from bench.servers import Shape, parse_shape

DEFAULT_SHAPES = "gevent:3,gevent:3,gevent:2,gthread:3x4,gthread:2x4,sync:3+nginx"


def shapes_from_env() -> list[Shape]:
    return [parse_shape(text) for text in os.environ.get("BENCH_SHAPES", DEFAULT_SHAPES).split(",") if text.strip()]


def _median(values: Iterable[float]) -> float:
    return run._median(values)


def exploration(settings: run.Settings, shapes: Sequence[Shape], workdir: Path) -> str:
    runner = run.Bench(settings.wrk(), settings.open_loop(), settings)
    started = time.monotonic()
    runs: dict[tuple[int, str], list[run.Run]] = {}
    with contextlib.ExitStack() as stack:
        backends = run.start_backends(stack, settings, workdir)
        targets: list[list[run.Target]] = []
        for i, shape in enumerate(shapes):
            service = run.start_service(stack, shape, backends, tag=f"-{i}")
            cpu = service.cpu()
            label = f"{shape.label} [{i}]"
            targets.append([
                run.Target("token", f"{label} token", service.address, run.token_load(backends), cpu),
                run.Target("refresh", f"{label} refresh", service.address,
                           run.refresh_load(service, backends, settings, tag=f"-{i}"), cpu),
            ])
        for round_no in range(1, settings.rounds + 1):
            shift = (round_no - 1) % len(shapes)
            for i in list(range(len(shapes)))[shift:] + list(range(len(shapes)))[:shift]:
                for target in targets[i]:
                    peak = runner.closed(target, round_no)
                    assert isinstance(peak.result, WrkResult)
                    opened = runner.open(target, settings.open_load * peak.result.requests_per_sec, round_no)
                    runs.setdefault((i, target.key), []).extend([peak, opened])
    return report(settings, shapes, runs, time.monotonic() - started, runner.problems)


def report(settings: run.Settings, shapes: Sequence[Shape], runs: dict[tuple[int, str], list[run.Run]],
           elapsed: float, problems: Sequence[str]) -> str:
    lines = [
        f"Medians of {settings.rounds} rounds. Closed loop: wrk -c{settings.connections}. Open loop: "
        f"{settings.open_load:.0%} of the same round's peak, {settings.open_connections} connections, latency "
        "from the intended send time. CPU: master + workers + Redis (+ nginx), per request. In the open loop, "
        "per request: the workers' context switches, and the time their threads waited runnable for a core.",
        "",
    ]
    for endpoint in ("refresh", "token"):
        lines += [
            f"#### `POST /v1/token{'/refresh' if endpoint == 'refresh' else ''}`",
            "",
            "| shape | peak req/s | CPU/req at peak | p99 at peak | open: p50 | p99 | p99.9 | CPU/req open "
            "| switches/req | run-queue wait/req | p99 per round |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
        ]
        for i, shape in enumerate(shapes):
            mine = runs.get((i, endpoint), [])
            closed = [r for r in mine if isinstance(r.result, WrkResult)]
            opened = [r for r in mine if isinstance(r.result, OpenLoopResult)]
            if not closed:
                continue
            lines.append(
                f"| {shape.label} [{i}] | {_median(r.result.requests_per_sec for r in closed):,.0f} "  # type: ignore[union-attr]
                f"| {_median(r.cpu_us() for r in closed):,.0f} µs | {_median(r.result.p99_ms for r in closed):.1f} ms "
                f"| {_median(r.result.p50_ms for r in opened):.2f} ms "
                f"| {_median(r.result.p99_ms for r in opened):.1f} ms "
                f"| {_median(r.result.p999_ms for r in opened):.1f} ms "  # type: ignore[union-attr]
                f"| {_median(r.cpu_us() for r in opened):,.0f} µs "
                f"| {_median(r.sched.switches for r in opened if r.sched):.1f} "
                f"| {_median(1000 * r.sched.run_delay for r in opened if r.sched):.2f} ms "
                f"| {' / '.join(f'{r.result.p99_ms:.0f}' for r in opened)} |"
            )
        lines.append("")
    lines += aa_lines(shapes, runs)
    lines.append(f"- total time {elapsed:.0f} s")
    lines += [f"- BROKEN: {problem}" for problem in problems]
    return "\n".join(lines)


def aa_lines(shapes: Sequence[Shape], runs: dict[tuple[int, str], list[run.Run]]) -> list[str]:
    """Shapes listed twice: how far apart the two copies measured (the noise floor of any comparison)."""
    lines = []
    for i, shape in enumerate(shapes):
        for j in range(i + 1, len(shapes)):
            if shapes[j] != shape:
                continue
            for endpoint in ("refresh", "token"):
                a, b = runs.get((i, endpoint), []), runs.get((j, endpoint), [])

                def med(rs: list[run.Run], closed: bool, what: str) -> float:
                    kind = WrkResult if closed else OpenLoopResult
                    chosen = [r for r in rs if isinstance(r.result, kind)]
                    if what == "cpu":
                        return _median(r.cpu_us() for r in chosen)
                    if what == "rps":
                        return _median(r.result.requests_per_sec for r in chosen)  # type: ignore[union-attr]
                    return _median(r.result.p99_ms for r in chosen)

                parts = []
                for what, closed, name in (("rps", True, "peak req/s"), ("cpu", True, "CPU/req at peak"),
                                           ("p99", False, "open-loop p99")):
                    x, y = med(a, closed, what), med(b, closed, what)
                    parts.append(f"{name} {x:,.1f} vs {y:,.1f} ({100 * (y - x) / x if x else 0:+.0f} %)")
                lines.append(f"- A/A, {shape.label} [{i}] vs [{j}], {endpoint}: " + "; ".join(parts))
    return lines


def main() -> int:
    env = dict(os.environ)
    env.setdefault("WRK_DURATION", "8")
    env.setdefault("BENCH_OPEN_DURATION", "15")
    try:
        settings = run.Settings.from_env(env)
        shapes = shapes_from_env()
    except BenchError as exc:
        run.log(f"FAILED: {exc}")
        return 1
    settings = dataclasses.replace(settings, shape=shapes[0])

    def header() -> list[str]:
        return ["## token-service: server shapes", "", *run.machine_lines(),
                "- shapes: " + ", ".join(f"[{i}] {s.label}" for i, s in enumerate(shapes)), ""]

    return run.main_with(lambda workdir: exploration(settings, shapes, workdir), header)


if __name__ == "__main__":
    raise SystemExit(main())
