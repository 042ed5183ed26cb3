"""What one task costs the engine does not grow with the machine and the number of tasks.

Speed is for the benchmark (``benchmarks/simulated_scale.py`` prints the time per task from 10^4
to 10^6); a test can hold the work. Under ``cProfile`` every function call is counted, so a
decision that scans the nodes or the running tasks, one call per node or task, shows up as calls
per task that grow with a machine ten times the size. The benchmark's own mix runs here on its
``--scaled`` machine (nodes in proportion to tasks, so both sizes run with the machine full and
heads blocked, as 10^6 tasks do on Frontier), at 2,000 and at 20,000 tasks.
"""

from __future__ import annotations

import asyncio
import cProfile
import functools
import importlib.util
import json
import pstats
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

import pytest

import matensemble
from matensemble.model import Placement, Resources
from matensemble.resources import ResourcePool

pytestmark = pytest.mark.slow

PACKAGE = Path(matensemble.__file__).resolve().parent
BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "simulated_scale.py"
SMALL, LARGE = 2_000, 20_000
# A function of the engine whose calls per task grow by more than both of these from SMALL to
# LARGE does more per task on a larger machine. The two sizes' regimes differ a little: here the
# functions with 0.5 calls per task more grow 1.25x at most (0.69 more calls), and the one that
# grows more than 2x (``NodeDrain.first_on``, 6x) makes 0.2 calls per task more. All the calls
# together: 308.6 -> 275.9 per task (FIFO), 213.1 -> 214.8 (longest-first).
MOST_GROWTH, MOST_MORE_CALLS = 2.0, 0.5


@functools.cache
def _benchmark() -> ModuleType:
    spec = importlib.util.spec_from_file_location("simulated_scale", BENCHMARK)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def calls_per_task(n: int, order: str) -> dict[tuple[str, str], float]:
    """Calls per task of every function, in a run of the benchmark's mix on its scaled machine."""
    bench = _benchmark()
    profile = cProfile.Profile()
    profile.enable()
    try:
        row = asyncio.run(bench.run_case(n, order, bench.scaled_nodes(n)))
    finally:
        profile.disable()
    assert row["tasks"] == n and float(row["makespan"]) > 0
    stats = pstats.Stats(profile).stats  # type: ignore[attr-defined]
    return {(where, name): calls / n for (where, _, name), (_, calls, *_) in stats.items()}


def grown(
    small: dict[tuple[str, str], float], large: dict[tuple[str, str], float]
) -> list[tuple[str, float, float]]:
    """The engine's functions whose calls per task grew past both bounds, with both counts."""
    out = []
    for (where, name), per_task in large.items():
        if not Path(where).resolve().is_relative_to(PACKAGE):
            continue
        before = small.get((where, name), 0.0)
        if per_task > MOST_GROWTH * before and per_task > before + MOST_MORE_CALLS:
            out.append((f"{Path(where).name}:{name}", before, per_task))
    return out


def total(counts: dict[tuple[str, str], float]) -> float:
    return sum(counts.values())


@pytest.mark.parametrize("order", ["fifo", "longest-first"])
def test_calls_per_task_stay_flat_on_a_machine_ten_times_the_size(order: str) -> None:
    small, large = calls_per_task(SMALL, order), calls_per_task(LARGE, order)
    assert grown(small, large) == []
    assert total(large) <= 1.1 * total(small), (total(small), total(large))


@contextmanager
def scanning_allocations() -> Iterator[None]:
    """The pool as it was before it had an index of nodes by free capacity: each allocation
    looks at every node's free room first."""
    allocate: Callable[[ResourcePool, Resources], Placement | None] = ResourcePool.allocate

    def scan_then_allocate(pool: ResourcePool, res: Resources) -> Placement | None:
        for i in range(len(pool.nodes)):
            pool.free_count(i)
        return allocate(pool, res)

    ResourcePool.allocate = scan_then_allocate  # type: ignore[method-assign]
    try:
        yield
    finally:
        ResourcePool.allocate = allocate  # type: ignore[method-assign]


def test_the_check_finds_an_allocation_that_scans_the_nodes() -> None:
    with scanning_allocations():
        small, large = calls_per_task(SMALL, "fifo"), calls_per_task(LARGE, "fifo")
    names = [name for name, _, _ in grown(small, large)]
    assert names == ["resources.py:free_count"]
    assert total(large) > 1.1 * total(small)


def test_the_two_command_lines_that_cachegrind_counts_run_a_case_and_only_its_tasks() -> None:
    """docs/simulated-backend.md counts instructions per task under valgrind as one case's
    process less one that only builds its tasks: both command lines, without valgrind."""
    nodes = _benchmark().scaled_nodes(SMALL)
    one = subprocess.run(
        [sys.executable, str(BENCHMARK), "--one", str(SMALL), "longest-first", str(nodes)],
        capture_output=True,
        text=True,
        check=True,
    )
    row = json.loads(one.stdout.strip().splitlines()[-1])
    assert (row["tasks"], row["nodes"]) == (SMALL, nodes) and nodes == 19
    assert row["order"] == "LongestFirst(backfill=True)"
    assert 0 <= row["gc"] <= row["cpu"]  # the collector's time is part of the run's
    built = subprocess.run(
        [sys.executable, str(BENCHMARK), "--tasks-only", str(SMALL)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert built.stdout == f"{SMALL} tasks built\n"
