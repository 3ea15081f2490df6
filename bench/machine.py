"""``python -m bench.machine``: how long this machine makes a runnable thread wait, by load.

A tail-latency target can be no shorter than the machine's own wait for a core. For each load (no
busy process, one per core at 85 %, one per core at 100 %), busy-loop processes run for a while and
a 2 ms sleeper (``bench.procs.WakeupProbe``) records how late it wakes; the host's stolen CPU comes
from /proc/stat. On a virtual machine whose host enforces a CPU quota, a guest that uses all of its
cores is paused for up to a quota period (about 100 ms): every request in flight then waits as long.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import time

from bench.procs import MachineTime, WakeupProbe

DURATION = float(os.environ.get("BENCH_MACHINE_SECONDS", "10"))
SLICE = 0.01  # a busy process's period: busy for duty * SLICE, then asleep for the rest


def busy(duty: float, seconds: float) -> None:
    """Keep one core ``duty`` busy for ``seconds``."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        start = time.perf_counter()
        while time.perf_counter() - start < duty * SLICE:
            pass
        if duty < 1:
            time.sleep((1 - duty) * SLICE)


def measure(processes: int, duty: float) -> str:
    workers = [multiprocessing.Process(target=busy, args=(duty, DURATION)) for _ in range(processes)]
    before = MachineTime.now()
    with WakeupProbe() as probe:
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    stolen = MachineTime.now().stolen_since(before)
    load = f"{processes} x {duty:.0%}" if processes else "idle"
    return (f"| {load} | {probe.percentile_ms(0.5):.2f} ms | {probe.percentile_ms(0.99):.2f} ms "
            f"| {probe.percentile_ms(1.0):.1f} ms | {stolen:.1%} |")


def main() -> int:
    cores = len(os.sched_getaffinity(0))
    print(f"## Wake-up lateness of a 2 ms sleeper on this machine ({cores} cores, {DURATION:g} s per load)\n")
    print("| busy processes | p50 | p99 | max | CPU stolen by the host |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for processes, duty in ((0, 0.0), (cores, 0.85), (cores, 1.0)):
        print(measure(processes, duty), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
