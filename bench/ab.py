"""A/B benchmark: this checkout's token-service against another checkout's, under the same load.

Why: ``make bench`` compares endpoints within one round, but comparing two *versions* across two
bench runs drowns in the machine's drift (on a shared 2-core machine, the same code measured 0.38x
and 0.49x in back-to-back runs). Here both versions run at once, against one Redis and one IdP,
with the same gunicorn settings and shape (this checkout's ``deploy/gunicorn.conf.py`` and the
``TOKEN_SERVICE_*`` variables); short wrk runs alternate between them (A B, then B A, ...), so drift
hits both alike. The report gives, per endpoint and version, the median req/s and the median CPU per
request summed over every server-side process (gunicorn master, workers, Redis), with each part and
the difference between the versions. The CPU per request is the steadier number: it is what a change
to the code moves.

Usage (from this checkout's root, after ``make install``)::

    git worktree add /tmp/base main        # or any directory holding another checkout
    .venv/bin/python -m bench.ab /tmp/base

The other checkout only lends its ``token_service`` package (and so its Lua scripts); its
dependencies must be installable in this checkout's venv. Each run is measured as ``make bench``
measures it (``bench/run.py``'s ``Bench.closed``: a warm-up in the first round, a run where a worker
sat idle measured again). Environment: ``AB_ROUNDS`` [4], ``AB_DURATION`` [6] seconds per run, plus
``bench/run.py``'s ``WRK_WARMUP``, ``TOKEN_SERVICE_*`` (the shape), ``BENCH_NGINX``, ``WRK_THREADS``,
``WRK_CONNECTIONS``, ``BENCH_POOL`` and ``BENCH_FAMILIES``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import statistics
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):  # `python bench/ab.py`: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import run  # noqa: E402  (re-runs under the project's venv when needed)
from bench.procs import BenchError  # noqa: E402
from devidp.harness import DevIdPError  # noqa: E402
from tests.redis_servers import RedisServerError  # noqa: E402

ENDPOINTS = ("token", "refresh")


def compare(other: Path, settings: run.Settings, workdir: Path) -> list[str]:
    """Run both versions side by side, ``settings.rounds`` times; return the report lines."""
    runner = run.Bench(settings.wrk(), settings.open_loop(), settings)
    samples: dict[tuple[str, str], list[run.Run]] = {}
    with contextlib.ExitStack() as stack:
        backends = run.start_backends(stack, settings, workdir)
        targets: dict[tuple[str, str], run.Target] = {}
        for version, checkout in (("this", run.ROOT), ("other", other)):
            service = run.start_service(stack, settings.shape, backends, checkout, f"-{version}")
            targets["token", version] = run.Target("token", f"token ({version})", service.address,
                                                   run.token_load(backends), service.cpu())
            targets["refresh", version] = run.Target(
                "refresh", f"refresh ({version})", service.address,
                run.refresh_load(service, backends, settings, f"-{version}"), service.cpu())
        for round_no in range(1, settings.rounds + 1):
            order = ("this", "other") if round_no % 2 else ("other", "this")
            for endpoint in ENDPOINTS:
                for version in order:
                    samples.setdefault((endpoint, version), []).append(
                        runner.closed(targets[endpoint, version], round_no))
    groups = list(next(iter(samples.values()))[0].cpu)
    lines = [
        "| endpoint | version | req/s | server CPU per request | " + " | ".join(groups) + " |",
        "| --- | --- | ---: | ---: | " + " | ".join("---:" for _ in groups) + " |",
    ]
    for endpoint in ENDPOINTS:
        for version, label in (("this", f"this ({run.ROOT})"), ("other", f"other ({other})")):
            runs = samples[(endpoint, version)]
            req_s = statistics.median(r.result.requests_per_sec for r in runs)
            total = statistics.median(r.cpu_us() for r in runs)
            parts = " | ".join(f"{statistics.median(r.cpu_us([g]) for r in runs):,.0f} µs" for g in groups)
            lines.append(f"| {endpoint} | {label} | {req_s:,.0f} | {total:,.0f} µs | {parts} |")
        this = statistics.median(r.cpu_us() for r in samples[endpoint, "this"])
        base = statistics.median(r.cpu_us() for r in samples[endpoint, "other"])
        lines.append(f"| {endpoint} | this vs other | | {100 * (this - base) / base if base else 0:+.1f} % | "
                     + " | ".join("" for _ in groups) + " |")
    lines += ["", f"- medians of {settings.rounds} alternating rounds of {settings.duration}s per endpoint and "
              "version; server CPU sums the gunicorn master, its workers and Redis"]
    lines += [f"- BROKEN: {problem}" for problem in runner.problems]
    return lines


def main() -> int:
    if len(sys.argv) != 2 or not (Path(sys.argv[1]) / "token_service" / "cli.py").is_file():
        print(f"usage: python -m bench.ab OTHER_CHECKOUT (a directory holding token_service/)\n\n{__doc__}",
              file=sys.stderr)
        return 2
    other = Path(sys.argv[1]).resolve()
    try:
        env = os.environ
        settings = dataclasses.replace(run.Settings.from_env(env), rounds=run._whole(env, "AB_ROUNDS", 4),
                                       duration=run._whole(env, "AB_DURATION", 6))
        with tempfile.TemporaryDirectory(prefix="token-bench-ab-") as tmp:
            lines = compare(other, settings, Path(tmp))
    except KeyboardInterrupt:
        run.log("interrupted; everything started was stopped")
        return 130
    except (BenchError, DevIdPError, RedisServerError) as exc:
        run.log(f"FAILED: {exc}")
        return 1
    print("\n".join(lines), flush=True)
    return 1 if any(line.startswith("- BROKEN") for line in lines) else 0


if __name__ == "__main__":
    raise SystemExit(main())
