"""A launch of whole nodes waits for our exclusive jobs on them to be clean (``flux_holds``).

Fluxion denies as "unsatisfiable" a rank-constrained job with a ``node`` level whose node an
exclusive job holds; the engine places a task on a node as soon as the one before it there
reports at ``finish``, before Flux has freed it, and with ``queue_ahead`` on purpose.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from matensemble import Ensemble, Resources, Task
from matensemble.backends.base import Launch
from matensemble.backends.flux import FluxBackend
from matensemble.backends.flux_holds import NodeHolds
from matensemble.backends.flux_job import FluxJob
from matensemble.model import Slot, TaskState

from backend_harness import opened
from flux_instance import flux_python, flux_uri, running_instance

__all__ = ["flux_python", "flux_uri"]

pytestmark = pytest.mark.flux

WHOLE = Resources(ranks=1, cores_per_rank=4, nodes=1, exclusive=True)


def launch(task_id: str, res: Resources, node: str = "n0", cores: int = 4) -> Launch:
    task = Task(id=task_id, command=("true",), resources=res)
    placement = (Slot(node, tuple(range(cores))),)
    return Launch(task=task, attempt=1, placement=placement, tasks_dir=Path("/x"), run_id="r")


def test_parked_launches_go_in_order_and_one_that_holds_the_node_again_keeps_the_rest() -> None:
    holds, sent = NodeHolds(), []
    holder = FluxJob(launch("h", WHOLE))
    holds.held(holder)
    first, then = launch("a", WHOLE), launch("b", Resources(ranks=1, cores_per_rank=4, nodes=1))
    cores = launch("c", Resources(cores_per_rank=2), cores=2)
    assert holds.blocked(first) and holds.blocked(then)
    assert not holds.blocked(cores)  # a job of cores only waits in Flux as it should
    assert not holds.blocked(launch("d", WHOLE, node="n1"))

    def submit(which: Launch) -> None:
        sent.append(which.task.id)
        holds.held(FluxJob(which))

    holds.park(first, lambda: submit(first))
    holds.park(then, lambda: submit(then))
    holds.freed(holder)
    assert sent == ["a"]  # "a" holds n0 exclusively now: "b" waits for it
    holds.freed(FluxJob(first))  # not the same job: "a" still holds n0
    assert sent == ["a"]
    assert holds.unpark(then) and not holds.unpark(then)


@pytest.fixture(scope="module")
def fake4_uri(flux_python: None) -> Iterator[str]:
    """One broker with four fake nodes of four cores."""
    conf = ["fake-resources.nnodes=4", "fake-resources.cores-per-node=4"]
    with running_instance(1, conf=conf) as uri:
        yield uri


async def test_a_whole_node_launch_on_a_node_an_exclusive_job_holds_waits_for_it(
    fake4_uri: str, tmp_path: Path
) -> None:
    backend = FluxBackend(fake4_uri, attributes={"exec.test.run_duration": "0.2s"})
    async with opened(backend, tmp_path) as harness:
        first = harness.start(Task(id="first", command=("true",), resources=WHOLE))
        keys = [first.key]
        # The engine's accounting put "then" where "first" runs (as it does once "first"
        # reports at its finish, before Flux has freed the node): without the wait, Fluxion
        # denies it as unsatisfiable.
        for res in (WHOLE, Resources(ranks=1, cores_per_rank=2, nodes=1)):
            task = Task(id=f"then{res.cores_per_rank}", command=("true",), resources=res)
            then = Launch(
                task=task,
                attempt=1,
                placement=first.placement,
                tasks_dir=first.tasks_dir,
                run_id="test-run",
            )
            harness.placements[then.key] = ()  # its cores are first's, released with it
            backend.launch(then)
            keys.append(then.key)
        outcomes = [await harness.outcome(key) for key in keys]
    assert [o.state for o in outcomes] == [TaskState.SUCCEEDED] * 3, [o.reason for o in outcomes]
    ended = outcomes[0].end_time
    assert ended is not None
    assert all((o.start_time or 0) >= ended for o in outcomes[1:])
    assert {o.placement[0].node for o in outcomes} == {first.placement[0].node}


async def test_queueing_ahead_of_exclusive_tasks_runs_each_of_them(
    fake4_uri: str, tmp_path: Path
) -> None:
    tasks = [
        Task(id=f"x{i:02d}", command=("true",), resources=WHOLE, estimate=0.1) for i in range(24)
    ]
    for ahead in (True, "depend"):
        backend = FluxBackend(
            fake4_uri, queue_ahead=ahead, attributes={"exec.test.run_duration": "0.1s"}
        )
        with anyio.fail_after(60):
            summary = await Ensemble(tasks, backend=backend, run_dir=tmp_path / str(ahead)).run()
        failed = [r.reason for r in summary.results.values() if r.state is not TaskState.SUCCEEDED]
        assert not failed, (ahead, failed[:3])


@pytest.mark.parametrize("how", ["cancel", "withdraw"])
async def test_cancelling_or_withdrawing_a_parked_launch_ends_it_at_once_without_a_job(
    flux_uri: str, tmp_path: Path, how: str
) -> None:
    async with opened(FluxBackend(flux_uri), tmp_path) as harness:
        cores = len(harness.nodes[0].cores)
        whole = Resources(ranks=1, cores_per_rank=cores, nodes=1, exclusive=True)
        holder = harness.start(Task(id="holder", command=("sleep", "30"), resources=whole))
        parked = Launch(
            task=Task(id="parked", command=("true",), resources=whole),
            attempt=1,
            placement=holder.placement,
            tasks_dir=holder.tasks_dir,
            run_id="test-run",
        )
        harness.placements[parked.key] = ()
        harness.backend.launch(parked)
        t0 = time.monotonic()
        getattr(harness.backend, how)(parked.key)
        out = await harness.outcome(parked.key, within=10)
        assert out.state is TaskState.CANCELLED
        assert out.withdrawn is (how == "withdraw")  # withdrawn: ready again, same attempt
        assert out.job_id is None  # never submitted
        assert time.monotonic() - t0 < 5  # not after the holder's 30 s
        harness.backend.cancel(holder.key)
        assert (await harness.outcome(holder.key)).state is TaskState.CANCELLED
