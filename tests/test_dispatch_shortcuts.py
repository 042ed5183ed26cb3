"""The dispatcher's shortcuts change no decision: every task starts when and where it would if
each pass looked at every task it reaches one by one.

A pass ends early once every ``Resources`` shape that waits has failed to fit, and puts back runs
of queued tasks of such shapes in one sweep. A walltime makes the pass look at each task
(any of them might be held back by the deadline), so a run with a walltime far in the future is
the plain walk; the schedules must be equal.
"""

from __future__ import annotations

import asyncio
import tempfile

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from matensemble import Ensemble, Resources, SimulatedBackend, Task, TaskResult
from matensemble.strategies import FIFO, GPUFirst, LongestFirst, Priority, SubmissionOrder

SHAPES = [
    Resources(),
    Resources(ranks=3),
    Resources(gpus_per_rank=1),
    Resources(ranks=8, nodes=1),
    Resources(ranks=2, cores_per_rank=2, gpus_per_rank=1, nodes=1),
    Resources(ranks=12),
]
ORDERS = [FIFO, Priority, LongestFirst, GPUFirst]


@st.composite
def crowds(draw: st.DrawFn) -> list[Task]:
    """More tasks than fit at once, of a few shapes, with estimates that are off."""
    n = draw(st.integers(20, 120))
    tasks = []
    for i in range(n):
        estimate = draw(st.sampled_from([1.0, 2.0, 5.0, 9.0, 20.0]))
        tasks.append(
            Task(
                id=f"t{i}",
                command=("sim",),
                resources=draw(st.sampled_from(SHAPES)),
                estimate=estimate,
                priority=draw(st.integers(-2, 2)),
                after=(f"t{i - 1}",) if i and draw(st.integers(0, 9)) == 0 else (),
                tags={"sim_duration": str(estimate * draw(st.sampled_from([0.5, 1.0, 1.5])))},
            )
        )
    return tasks


def schedule(
    tasks: list[Task], order: type[SubmissionOrder], walltime: float | None
) -> dict[str, object]:
    async def main() -> list[TaskResult]:
        with tempfile.TemporaryDirectory() as run_dir:
            ens = Ensemble(
                tasks,
                backend=SimulatedBackend(2, 8, 2),
                strategy=order(backfill=True),
                run_dir=run_dir,
                walltime=walltime,
                console_log=False,
            )
            await ens.run()
            return [ens.result(t.id) for t in tasks]

    return {r.id: (r.state, r.start_time, r.placement) for r in asyncio.run(main())}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tasks=crowds(), order=st.sampled_from(ORDERS))
def test_every_task_starts_when_and_where_the_plain_walk_would_start_it(
    tasks: list[Task], order: type[SubmissionOrder]
) -> None:
    assert schedule(tasks, order, None) == schedule(tasks, order, 1e9)
