"""The engine at Frontier scale: 10^4 to 10^6 mixed tasks on a simulated 9,408-node machine.

Frontier's shape (9,408 nodes x 56 cores x 8 GPUs) and a mix of 70 % serial tasks, 15 % 8-rank
tasks, 10 % one-GPU tasks and 5 % whole-node 56-rank tasks; runtimes log-normal (sigma 0.5)
around per-kind medians, each task's estimate its runtime off by up to +-25 %. Every case runs in
a fresh process, so the peak RSS printed is that case's own; "engine B/task" is its growth while
the engine ran (records, results, queues; the task list itself was built before), per task.
The cost per task should stay flat as the number of tasks grows: every scheduling decision is
O(log n) or amortised O(1). A second table says which regime each case ran in, which is what
the curve is read against: the makespan in seconds (to compare orders and code versions to the
last digit), the most tasks that ran at once, passes of the dispatcher per task, the share of
them whose head did not fit (then backfill looks past it, against the head's reservation), and
reservations built anew per 1,000 tasks (the others were kept ones used again), and the time
the cyclic garbage collector took per task (timed by ``gc.callbacks``, inside the CPU time).

On the fixed machine the regime changes with the size: up to 10^5 every task starts at once,
from 3x10^5 on the machine is full and backfill plans around blocked heads. ``--scaled`` sizes
the machine with the tasks instead (9,408 nodes per 10^6 tasks, at least one), so that every size
runs in the regime of 10^6 tasks on Frontier: the curve then shows what a task costs as the
numbers of tasks, nodes and running tasks grow together, at the same share of blocked heads.

    python benchmarks/simulated_scale.py [--sizes 10000,100000,300000,1000000]
        [--orders fifo,longest-first] [--scaled] [--profile N]

``--profile N`` runs one FIFO+backfill case of N tasks under cProfile and prints the top entries.
To count instructions and cache misses per task (valgrind's cachegrind, see
docs/simulated-backend.md), ``--one N ORDER NODES`` runs one case in this process, and
``--tasks-only N`` only builds its N tasks: the counts of the first less those of the second.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import json
import pstats
import random
import resource
import subprocess
import sys
import tempfile
import time
from array import array

from matensemble import Ensemble, Resources, SimulatedBackend, Task
from matensemble.strategies import FIFO, LongestFirst, SubmissionOrder

NODES, CORES, GPUS = 9408, 56, 8
KINDS = [  # (share, id prefix, resources, median seconds)
    (0.70, "s", Resources(), 600.0),
    (0.15, "m", Resources(ranks=8), 900.0),
    (0.10, "g", Resources(gpus_per_rank=1), 1200.0),
    (0.05, "w", Resources(ranks=56, nodes=1), 1800.0),
]


def workload(n: int, seed: int = 1) -> tuple[list[Task], array[float]]:
    """``n`` tasks of the mix, and each one's true runtime (indexed by the number in its id)."""
    rng = random.Random(seed)
    runtimes = array("d")
    tasks = []
    command = ("sim",)
    for i in range(n):
        r = rng.random()
        kind = 0
        while kind < len(KINDS) - 1 and r >= KINDS[kind][0]:
            r -= KINDS[kind][0]
            kind += 1
        _, prefix, res, median = KINDS[kind]
        actual = median * rng.lognormvariate(0, 0.5)
        runtimes.append(actual)
        tasks.append(
            Task(
                id=f"{prefix}{i}",
                command=command,
                resources=res,
                estimate=round(actual * rng.uniform(0.8, 1.25)),
            )
        )
    return tasks, runtimes


def scaled_nodes(n: int) -> int:
    """The machine of ``--scaled``: Frontier's nodes per 10^6 tasks, at least one."""
    return max(1, round(NODES * n / 1_000_000))


async def run_case(n: int, order: str, nodes: int = NODES) -> dict[str, float | int | str]:
    tasks, runtimes = workload(n)
    strategy: SubmissionOrder = (FIFO if order == "fifo" else LongestFirst)(backfill=True)
    backend = SimulatedBackend(
        nodes, CORES, GPUS, duration=lambda task, attempt: runtimes[int(task.id[1:])]
    )
    collecting = [0.0, 0.0]  # when the collection under way began, the collector's total

    def collector(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            collecting[0] = time.process_time()
        else:
            collecting[1] += time.process_time() - collecting[0]

    with tempfile.TemporaryDirectory() as run_dir:
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        gc.callbacks.append(collector)
        try:
            t0, c0 = time.perf_counter(), time.process_time()
            ensemble = Ensemble(tasks, backend=backend, strategy=strategy, run_dir=run_dir)
            summary = await ensemble.run()
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        finally:
            gc.callbacks.remove(collector)
    passes = ensemble._dispatch.counts  # the engine's own counters (no public API: diagnostics)
    assert summary.counts["succeeded"] == n, summary.counts
    return {
        "tasks": n,
        "nodes": nodes,
        "order": f"{strategy!r}",
        "wall": wall,
        "cpu": cpu,
        "makespan": summary.makespan,
        "cores": summary.core_utilisation,
        "gpus": summary.gpu_utilisation,
        "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_before_mib": rss0 / 1024,
        "most_running": backend.most_running,
        "passes": passes.passes,
        "blocked": passes.blocked,
        "planned": passes.planned,
        "gc": collecting[1],
    }


def one_case(n: int, order: str, nodes: int) -> None:
    print(json.dumps(asyncio.run(run_case(n, order, nodes))))


def profile(n: int) -> None:
    prof = cProfile.Profile()
    prof.enable()
    row = asyncio.run(run_case(n, "fifo"))
    prof.disable()
    print(row)
    pstats.Stats(prof).sort_stats("tottime").print_stats(25)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="10000,100000,300000,1000000")
    parser.add_argument("--orders", default="fifo,longest-first")
    parser.add_argument(
        "--scaled",
        action="store_true",
        help="size the machine with the tasks (9,408 nodes per 10^6), not Frontier at every size",
    )
    parser.add_argument("--profile", type=int, default=0)
    parser.add_argument(
        "--one",
        nargs="+",
        metavar="ARG",
        help="N ORDER [NODES]: run one case in this process, print it as JSON",
    )
    parser.add_argument(
        "--tasks-only", type=int, default=0, metavar="N", help="only build the N tasks of a case"
    )
    args = parser.parse_args()
    if args.tasks_only:
        tasks, _ = workload(args.tasks_only)
        print(f"{len(tasks)} tasks built")
        return
    if args.one:
        n, order = int(args.one[0]), args.one[1]
        one_case(n, order, int(args.one[2]) if len(args.one) > 2 else NODES)
        return
    if args.profile:
        profile(args.profile)
        return
    if args.scaled:
        print(
            f"machine scaled with the tasks: {NODES} nodes per 10^6 tasks x {CORES} cores x "
            f"{GPUS} GPUs, one process per case"
        )
    else:
        print(
            f"simulated Frontier: {NODES} nodes x {CORES} cores x {GPUS} GPUs, one process per case"
        )
    print(
        f"{'tasks':>9} {'nodes':>6} {'order':<30} {'wall s':>7} {'CPU s':>7} {'tasks/s':>8} "
        f"{'us/task':>8} {'makespan h':>10} {'cores':>6} {'GPUs':>6} {'peak RSS':>9} "
        f"{'engine B/task':>13}"
    )
    regimes = []
    for order in args.orders.split(","):
        for n in (int(s) for s in args.sizes.split(",")):
            nodes = scaled_nodes(n) if args.scaled else NODES
            out = subprocess.run(
                [sys.executable, __file__, "--one", str(n), order, str(nodes)],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            row = json.loads(out.strip().splitlines()[-1])
            wall, cpu = float(row["wall"]), float(row["cpu"])
            print(
                f"{n:>9} {nodes:>6} {row['order']:<30} {wall:>7.1f} {cpu:>7.1f} {n / wall:>8.0f} "
                f"{cpu / n * 1e6:>8.1f} {float(row['makespan']) / 3600:>10.2f} "
                f"{float(row['cores']):>6.1%} {float(row['gpus']):>6.1%} "
                f"{float(row['rss_mib']):>5.0f} MiB "
                f"{(float(row['rss_mib']) - float(row['rss_before_mib'])) * 2**20 / n:>13.0f}",
                flush=True,
            )
            regimes.append(row)
    print()
    print(
        f"{'tasks':>9} {'nodes':>6} {'order':<30} {'makespan s':>12} {'most running':>12} "
        f"{'passes/task':>11} {'head blocked':>12} {'plans/1000':>10} {'GC us/task':>10}"
    )
    for row in regimes:
        n, passes = int(row["tasks"]), int(row["passes"])
        print(
            f"{n:>9} {int(row['nodes']):>6} {row['order']:<30} {float(row['makespan']):>12.3f} "
            f"{int(row['most_running']):>12} {passes / n:>11.2f} "
            f"{int(row['blocked']) / max(passes, 1):>12.1%} {int(row['planned']) / n * 1e3:>10.2f} "
            f"{float(row['gc']) / n * 1e6:>10.2f}"
        )


if __name__ == "__main__":
    main()
