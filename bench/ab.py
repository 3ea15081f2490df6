"""A/B benchmark: this checkout's token-service against another checkout's, under the same load.

Why: ``make bench`` compares endpoints within one round, but comparing two *versions* across two
bench runs drowns in the machine's drift (on a shared 2-core machine, the same code measured 0.38x
and 0.49x in back-to-back runs). Here both versions run at once, against one Redis and one IdP,
with the same gunicorn config (this checkout's ``deploy/gunicorn.conf.py``); short wrk runs
alternate between them (A B, then B A, ...), so drift hits both alike. The report gives, per
endpoint and version, the median req/s and the median worker and Redis CPU per request. The CPU
per request is the steadier number: it is what a change to the code moves.

Usage (from this checkout's root, after ``make install``)::

    git worktree add /tmp/base main        # or any directory holding another checkout
    .venv/bin/python -m bench.ab /tmp/base

The other checkout only lends its ``token_service`` package (and so its Lua scripts); its
dependencies must be installable in this checkout's venv. Each run is measured as ``make bench``
measures it (``bench/run.py``'s ``Bench.measure``: a warm-up in the first round, a run where a worker
sat idle measured again). Environment: ``AB_ROUNDS`` [4], ``AB_DURATION`` [6] seconds per run, plus
``bench/run.py``'s ``WRK_WARMUP``, ``TOKEN_SERVICE_WORKERS``, ``TOKEN_SERVICE_THREADS``,
``WRK_THREADS``, ``WRK_CONNECTIONS``, ``BENCH_POOL`` and ``BENCH_FAMILIES``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

if __package__ in (None, ""):  # `python bench/ab.py`: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import run  # noqa: E402  (re-runs under the project's venv when needed)
from devidp.harness import DevIdPError  # noqa: E402
from tests.redis_servers import RedisServerError  # noqa: E402

ENDPOINTS = {
    "token": ("/v1/token", run.BENCH / "token.lua"),
    "refresh": ("/v1/token/refresh", run.BENCH / "refresh.lua"),
}


def _positive(name: str, default: int) -> int:
    return run._positive(os.environ, name, default)


def _cpu_ms(target: run.Target, seconds: Callable[[run.Target], float | None]) -> float:
    return run.cpu_ms_per_request([target], seconds) or 0.0


def compare(other: Path, settings: run.Settings, workdir: Path) -> list[str]:
    """Run both versions side by side, ``settings.rounds`` times; return the report lines."""
    runner = run.Bench(run.ensure_wrk(), settings)
    samples: dict[tuple[str, str], list[run.Target]] = {}
    with contextlib.ExitStack() as stack:
        backends = run.start_backends(stack, settings, workdir)
        redis_server, config, id_tokens, pool = backends.redis, backends.config, backends.id_tokens, backends.pool
        servers = {
            "this": stack.enter_context(run.token_server(settings, workdir, config, run.ROOT, "-this")),
            "other": stack.enter_context(run.token_server(settings, workdir, config, other, "-other")),
        }
        script_args: dict[tuple[str, str], run.ScriptArgs] = {}
        for version, server in servers.items():
            script_args["token", version] = lambda _phase: [str(pool), str(settings.wrk_threads)]
            script_args["refresh", version] = run.RefreshTokenSupply(server, id_tokens, settings, workdir)
        for round_no in range(1, settings.rounds + 1):
            order = ("this", "other") if round_no % 2 else ("other", "this")
            for endpoint, (path, script) in ENDPOINTS.items():
                for version in order:
                    target = runner.measure(f"{endpoint} ({version})", servers[version], path, script,
                                            script_args[endpoint, version], redis_server.pid, round_no=round_no)
                    samples.setdefault((endpoint, version), []).append(target)
    lines = [
        "| endpoint | version | req/s | worker CPU per request | Redis CPU per request |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for endpoint in ENDPOINTS:
        for version, label in (("this", f"this ({run.ROOT})"), ("other", f"other ({other})")):
            runs = samples[(endpoint, version)]
            req_s = statistics.median(t.result.requests_per_sec for t in runs)
            worker = statistics.median(_cpu_ms(t, lambda t: sum(t.worker_cpu)) for t in runs)
            redis = statistics.median(_cpu_ms(t, lambda t: t.redis_cpu) for t in runs)
            lines.append(f"| {endpoint} | {label} | {req_s:,.0f} | {worker:.3f} ms | {redis:.3f} ms |")
    lines += ["", f"- medians of {settings.rounds} alternating rounds of {settings.duration}s per endpoint and version"]
    lines += [f"- BROKEN: {problem}" for problem in runner.problems]
    return lines


def main() -> int:
    if len(sys.argv) != 2 or not (Path(sys.argv[1]) / "token_service" / "cli.py").is_file():
        print(f"usage: python -m bench.ab OTHER_CHECKOUT (a directory holding token_service/)\n\n{__doc__}",
              file=sys.stderr)
        return 2
    other = Path(sys.argv[1]).resolve()
    try:
        settings = dataclasses.replace(
            run.Settings.from_env(os.environ), rounds=_positive("AB_ROUNDS", 4), duration=_positive("AB_DURATION", 6)
        )
        with tempfile.TemporaryDirectory(prefix="token-bench-ab-") as tmp:
            lines = compare(other, settings, Path(tmp))
    except KeyboardInterrupt:
        run.log("interrupted; everything started was stopped")
        return 130
    except (run.BenchError, DevIdPError, RedisServerError) as exc:
        run.log(f"FAILED: {exc}")
        return 1
    print("\n".join(lines), flush=True)
    return 1 if any(line.startswith("- BROKEN") for line in lines) else 0


if __name__ == "__main__":
    raise SystemExit(main())
