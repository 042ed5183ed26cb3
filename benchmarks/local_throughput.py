"""Local backend throughput and slot refill latency, side by side with xargs in one run.

    python benchmarks/local_throughput.py [--tasks 2000] [--repeat 3]

For each repetition it times ``seq N | xargs -P <cores> -n1 true`` and N ``true`` tasks through
``Ensemble`` + ``LocalBackend`` (each task with its own directory, stdout/stderr files, CPU
pinning, process group and pidfd), once with the run directory on tmpfs (/dev/shm: the engine
and spawn path alone) and once on the disk under the current directory (adds the file system's
metadata cost). Refill latency is, per core, the time from one task's exit being seen to the
next task's process existing on that core.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from matensemble import Ensemble, LocalBackend, Task


def xargs(n: int, cores: int) -> float:
    t0 = time.perf_counter()
    subprocess.run(
        f"seq {n} | xargs -P {cores} -n1 true", shell=True, check=True, executable="/bin/sh"
    )
    return time.perf_counter() - t0


async def engine(n: int, base: Path) -> tuple[float, list[float]]:
    tasks = [Task(id=f"t{i}", command=("true",)) for i in range(n)]
    with tempfile.TemporaryDirectory(dir=base) as run_dir:
        t0 = time.perf_counter()
        summary = await Ensemble(tasks, backend=LocalBackend(), run_dir=run_dir).run()
        elapsed = time.perf_counter() - t0
    assert summary.counts["succeeded"] == n, summary.counts
    by_core: dict[tuple[str, int], list[tuple[float, float]]] = {}
    for r in summary.results.values():
        assert r.start_time is not None
        assert r.end_time is not None
        for slot in r.placement:
            for core in slot.cores:
                by_core.setdefault((slot.node, core), []).append((r.start_time, r.end_time))
    gaps = []
    for runs in by_core.values():
        runs.sort()
        gaps += [nxt[0] - prev[1] for prev, nxt in itertools.pairwise(runs)]
    return elapsed, gaps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    n, cores = args.tasks, len(os.sched_getaffinity(0))
    places = {"tmpfs": Path("/dev/shm"), "disk": Path.cwd()}
    print(f"{n} `true` tasks on {cores} cores")
    for rep in range(args.repeat):
        raw = xargs(n, cores)
        line = f"[{rep}] xargs -P{cores}: {n / raw:7.0f}/s"
        for name, base in places.items():
            if not base.is_dir():
                continue
            elapsed, gaps = asyncio.run(engine(n, base))
            gaps.sort()
            p50 = statistics.median(gaps) * 1e3
            p99 = gaps[int(0.99 * (len(gaps) - 1))] * 1e3
            line += (
                f" | engine ({name}): {n / elapsed:6.0f}/s ratio {raw / elapsed:4.2f}"
                f" refill p50 {p50:.2f} ms p99 {p99:.2f} ms"
            )
        print(line)


if __name__ == "__main__":
    main()
