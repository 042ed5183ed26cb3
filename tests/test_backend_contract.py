"""One contract, every backend: the same tasks through the real ``Ensemble`` on each.

Local runs real processes on this machine; simulated runs nothing and takes durations and exit
codes from the ``sim_duration`` / ``sim_exit`` tags, which every task here carries to match
its command; Flux runs real jobs in a private ``flux start --test-size=2`` instance (directly,
and in two partitions: child instances of one broker each) and is skipped when no ``flux``
command is on PATH.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest

from matensemble import Ensemble
from matensemble.backends.base import Backend
from matensemble.backends.simulated import SimulatedBackend
from matensemble.model import Resources, Task, TaskResult, TaskState

from conftest import InvariantChecker
from flux_instance import flux_python, flux_uri

__all__ = ["flux_python", "flux_uri"]  # fixtures, re-exported so pytest finds them

BackendFactory = Callable[[], Backend]


@pytest.fixture(
    params=[
        "local",
        "local-queue-ahead",
        "simulated",
        pytest.param("flux", marks=pytest.mark.flux),
        pytest.param("flux-partitions", marks=pytest.mark.flux),
    ]
)
def make_backend(request: pytest.FixtureRequest) -> BackendFactory:
    """A factory of fresh backends of one kind (an Ensemble opens its backend once)."""
    if request.param in ("local", "local-queue-ahead"):
        if len(os.sched_getaffinity(0)) < 2:
            pytest.skip("the contract needs at least 2 cores")
        from matensemble.backends.local import LocalBackend

        ahead = request.param == "local-queue-ahead"
        return lambda: LocalBackend(cores=2, queue_ahead=ahead)
    if request.param == "simulated":
        return lambda: SimulatedBackend(nodes=2, cores_per_node=2)
    uri = request.getfixturevalue("flux_uri")
    from matensemble.backends.flux import FluxBackend

    if request.param == "flux-partitions":  # one child instance per broker
        return lambda: FluxBackend(uri, partitions=2)
    return lambda: FluxBackend(uri)


def task(
    task_id: str,
    script: str,
    *,
    seconds: float = 0.0,
    exit_code: int = 0,
    **kwargs: object,
) -> Task:
    """A shell task, tagged so that the simulated backend plays it the same way."""
    return Task(
        id=task_id,
        command=("sh", "-c", script),
        tags={"sim_duration": str(seconds), "sim_exit": str(exit_code)},
        **kwargs,  # type: ignore[arg-type]
    )


async def run(make_backend: BackendFactory, tmp_path: Path, *tasks: Task) -> dict[str, TaskResult]:
    with anyio.fail_after(60):
        summary = await Ensemble(tasks, backend=make_backend(), run_dir=tmp_path / "run").run()
    return summary.results


async def test_success_fills_every_outcome_field(
    make_backend: BackendFactory, tmp_path: Path
) -> None:
    (result,) = (await run(make_backend, tmp_path, task("ok", "exit 0", seconds=0.1))).values()
    assert result.state is TaskState.SUCCEEDED
    assert result.returncode == 0
    assert result.reason is None
    assert result.attempts == 1
    assert result.start_time is not None and result.end_time is not None
    assert result.start_time <= result.end_time
    assert sum(len(slot.cores) for slot in result.placement) == 1


async def test_non_zero_exit_fails_with_its_returncode(
    make_backend: BackendFactory, tmp_path: Path
) -> None:
    results = await run(make_backend, tmp_path, task("bad", "exit 3", exit_code=3))
    assert results["bad"].state is TaskState.FAILED
    assert results["bad"].returncode == 3
    assert results["bad"].reason


async def test_failed_task_is_retried_and_counts_its_attempts(
    make_backend: BackendFactory, tmp_path: Path
) -> None:
    results = await run(make_backend, tmp_path, task("again", "exit 4", exit_code=4, retries=1))
    assert results["again"].state is TaskState.FAILED
    assert results["again"].attempts == 2


async def test_task_running_past_its_timeout_is_timed_out(
    make_backend: BackendFactory, tmp_path: Path
) -> None:
    results = await run(make_backend, tmp_path, task("slow", "sleep 30", seconds=30, timeout=0.5))
    assert results["slow"].state is TaskState.TIMED_OUT
    assert results["slow"].reason


async def test_cancelling_a_running_task_ends_it_cancelled(
    make_backend: BackendFactory, tmp_path: Path
) -> None:
    # The long task is surely running once the short one has finished beside it, on every
    # backend (the simulated clock included), so that is when the steering loop cancels it.
    short = task("short", "sleep 1", seconds=1)
    long = task("long", "exec sleep 60", seconds=60)
    with anyio.fail_after(30):
        async with Ensemble([short, long], backend=make_backend(), run_dir=tmp_path) as ens:
            async for result in ens.completed():
                if result.id == "short":
                    assert ens.state("long") is TaskState.RUNNING
                    ens.cancel("long")
    final = ens.result("long")
    assert final is not None
    assert final.state is TaskState.CANCELLED
    assert final.reason


async def test_resources_are_respected_and_placements_never_overlap(
    make_backend: BackendFactory, tmp_path: Path
) -> None:
    shapes = [
        Resources(),
        Resources(ranks=2),
        Resources(cores_per_rank=2),
        Resources(),
    ]
    tasks = [
        task(f"t{i}", "sleep 0.2", seconds=0.2, resources=shapes[i % len(shapes)])
        for i in range(12)
    ]
    checker = InvariantChecker(cores_per_node=1 << 20, gpus_per_node=0)
    backend = make_backend()
    # Queueing ahead journals a booked task's start when it is booked, behind a running one
    # on the same ids: only what ran (below) is checked then.
    observers = [] if backend.queue_ahead else [checker]
    with anyio.fail_after(60):
        summary = await Ensemble(
            tasks, backend=backend, run_dir=tmp_path, observers=observers
        ).run()
    assert summary.counts["succeeded"] == len(tasks)
    results = summary.results
    for t in tasks:
        placement = results[t.id].placement
        assert sum(len(slot.cores) for slot in placement) == t.resources.cores
        assert sum(len(slot.gpus) for slot in placement) == 0
    # What actually ran (as the backend reports it) never shared a core at the same time.
    for a, b in itertools.combinations(results.values(), 2):
        assert a.start_time is not None and a.end_time is not None
        assert b.start_time is not None and b.end_time is not None
        if a.start_time < b.end_time and b.start_time < a.end_time:
            used_a = {(s.node, c) for s in a.placement for c in s.cores}
            used_b = {(s.node, c) for s in b.placement for c in s.cores}
            assert not used_a & used_b, f"{a.id} and {b.id} shared {used_a & used_b}"
