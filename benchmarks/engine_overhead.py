"""Engine overhead: tasks per second through the real engine with an instant backend.

The simulated backend with zero durations does no work, so the figure is the engine's own
cost per task (validation, graph, strategy, allocation, journal, status, result) on one core.

    python benchmarks/engine_overhead.py [--tasks 100000] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import tempfile
import time

from matensemble import Ensemble, SimulatedBackend, Task


def independent(n: int) -> list[Task]:
    return [Task(id=f"t{i}", command=("true",)) for i in range(n)]


def dag(n: int) -> list[Task]:
    """Layers of 100 tasks; each task needs two tasks of the layer before."""
    width = 100
    tasks = []
    for i in range(n):
        layer, pos = divmod(i, width)
        after = (
            () if layer == 0 else (f"d{i - width}", f"d{(layer - 1) * width + (pos + 1) % width}")
        )
        tasks.append(Task(id=f"d{i}", command=("true",), after=after))
    return tasks


async def measure(tasks: list[Task], cores: int) -> tuple[float, dict[str, int]]:
    with tempfile.TemporaryDirectory() as run_dir:
        backend = SimulatedBackend(nodes=1, cores_per_node=cores)
        t0 = time.perf_counter()
        summary = await Ensemble(tasks, backend=backend, run_dir=run_dir).run()
        elapsed = time.perf_counter() - t0
    return elapsed, summary.counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--cores", type=int, default=64)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    for name, build in (("independent", independent), ("dag", dag)):
        tasks = build(args.tasks)
        if args.profile:
            prof = cProfile.Profile()
            prof.enable()
        elapsed, counts = asyncio.run(measure(tasks, args.cores))
        if args.profile:
            prof.disable()
            pstats.Stats(prof).sort_stats("tottime").print_stats(15)
        assert counts["succeeded"] == args.tasks, counts
        rate = args.tasks / elapsed
        print(f"{name:12s} {args.tasks:>8d} tasks  {elapsed:7.2f} s  {rate:9.0f} tasks/s")


if __name__ == "__main__":
    main()
