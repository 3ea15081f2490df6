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
dependencies must be installable in this checkout's venv. Environment: ``AB_ROUNDS`` [4],
``AB_DURATION`` [6] seconds per run, plus ``bench/run.py``'s ``TOKEN_SERVICE_WORKERS``,
``TOKEN_SERVICE_THREADS``, ``WRK_THREADS``, ``WRK_CONNECTIONS`` and ``BENCH_POOL``.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):  # `python bench/ab.py`: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import run  # noqa: E402  (re-runs under the project's venv when needed)
from devidp.harness import DevIdP, DevIdPError, generate_keys  # noqa: E402
from tests.redis_servers import RedisServer, RedisServerError, ensure_redis_server  # noqa: E402

ENDPOINTS = {
    "token": ("/v1/token", run.BENCH / "token.lua"),
    "refresh": ("/v1/token/refresh", run.BENCH / "refresh.lua"),
}


def _positive(name: str, default: int) -> int:
    return run._positive(os.environ, name, default)


def compare(other: Path, settings: run.Settings, rounds: int, duration: int, workdir: Path) -> list[str]:
    """Run both versions side by side; return the report lines."""
    wrk = run.ensure_wrk()
    ensure_redis_server()
    samples: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
    problems = run.Bench(wrk, settings)
    with contextlib.ExitStack() as stack:
        redis_server = stack.enter_context(RedisServer())
        idp = stack.enter_context(DevIdP(keys=generate_keys()))
        config = workdir / "config.toml"
        run.write_config(config, idp.issuer, f"redis://{run.HOST}:{redis_server.port}/0")
        id_tokens = run.mint_id_tokens(idp, settings.pool)
        pool = run.write_lines(workdir / "id-tokens.txt", id_tokens)
        nthreads = str(settings.wrk_threads)
        servers = {
            "this": stack.enter_context(run.token_server(settings, workdir, config, run.ROOT, "-this")),
            "other": stack.enter_context(run.token_server(settings, workdir, config, other, "-other")),
        }
        for server in servers.values():  # warm-up: JWKS, connections, caches
            run.run_wrk(wrk, settings, server.url + "/v1/token", 2, ENDPOINTS["token"][1], [str(pool), nthreads])
        issued = 0
        for round_no in range(rounds):
            order = ("this", "other") if round_no % 2 == 0 else ("other", "this")
            for endpoint, (path, script) in ENDPOINTS.items():
                for version in order:
                    server = servers[version]
                    if endpoint == "token":
                        args = [str(pool), nthreads]
                    else:  # each run needs live refresh tokens of its own (see bench/refresh.lua)
                        sources = [id_tokens[(issued + i) % len(id_tokens)] for i in range(settings.refresh_tokens)]
                        issued += settings.refresh_tokens
                        tokens = run.issue_refresh_tokens(server.url, sources)
                        args = [str(run.write_lines(workdir / f"refresh-{version}-{round_no}.txt", tokens)), nthreads]
                    cpu_before, redis_before = server.worker_cpu(), run._cpu_seconds(redis_server.pid)
                    result = run.run_wrk(wrk, settings, server.url + path, duration, script, args)
                    cpu_after, redis_after = server.worker_cpu(), run._cpu_seconds(redis_server.pid)
                    problems.check(f"{endpoint} ({version})", f"round {round_no + 1}", result)
                    worker = sum(cpu_after[pid] - cpu_before[pid] for pid in cpu_after if pid in cpu_before)
                    redis = (redis_after or 0.0) - (redis_before or 0.0)
                    per_request = 1000 / max(1, result.requests)
                    samples.setdefault((endpoint, version), []).append(
                        (result.requests_per_sec, worker * per_request, redis * per_request)
                    )
                    run.log(f"round {round_no + 1}/{rounds} {endpoint} ({version}): "
                            f"{result.requests_per_sec:,.0f} req/s, worker {worker * per_request:.3f} ms/request")
    lines = [
        "| endpoint | version | req/s | worker CPU per request | Redis CPU per request |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for endpoint in ENDPOINTS:
        for version, label in (("this", f"this ({run.ROOT})"), ("other", f"other ({other})")):
            runs = samples[(endpoint, version)]
            lines.append(
                f"| {endpoint} | {label} | {statistics.median(r[0] for r in runs):,.0f} "
                f"| {statistics.median(r[1] for r in runs):.3f} ms | {statistics.median(r[2] for r in runs):.3f} ms |"
            )
    lines += ["", f"- medians of {rounds} alternating rounds of {duration}s per endpoint and version"]
    lines += [f"- BROKEN: {problem}" for problem in problems.problems]
    return lines


def main() -> int:
    if len(sys.argv) != 2 or not (Path(sys.argv[1]) / "token_service" / "cli.py").is_file():
        print(f"usage: python -m bench.ab OTHER_CHECKOUT (a directory holding token_service/)\n\n{__doc__}",
              file=sys.stderr)
        return 2
    other = Path(sys.argv[1]).resolve()
    try:
        settings = run.Settings.from_env(os.environ)
        rounds, duration = _positive("AB_ROUNDS", 4), _positive("AB_DURATION", 6)
        with tempfile.TemporaryDirectory(prefix="token-bench-ab-") as tmp:
            lines = compare(other, settings, rounds, duration, Path(tmp))
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
