"""Queueing ahead with real processes on random ensembles: the local backend's accounts and the
engine's agree (no core or GPU ever runs two tasks at once, none is booked more deeply than
``Backend.queue_ahead_depth``), and every task ends (a booked task that never moved in would
hang the run)."""

from __future__ import annotations

import asyncio
import tempfile

import anyio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from matensemble import Ensemble, LocalBackend, Resources, Task, TaskState

from conftest import InvariantChecker

SCRIPTS = ["true", "sleep 0.02", "sleep 0.05"]


@st.composite
def ensembles(draw: st.DrawFn) -> list[Task]:
    tasks = []
    for i in range(draw(st.integers(4, 14))):
        after = draw(st.lists(st.integers(0, i - 1), max_size=2)) if i else []
        tasks.append(
            Task(
                id=f"t{i}",
                command=("sh", "-c", draw(st.sampled_from(SCRIPTS))),
                resources=Resources(
                    cores_per_rank=draw(st.sampled_from([1, 1, 1, 2])),
                    gpus_per_rank=draw(st.sampled_from([0, 0, 1])),
                ),
                after=tuple(f"t{j}" for j in sorted(set(after))),
            )
        )
    return tasks


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    tasks=ensembles(),
    spawners=st.sampled_from(["processes", "threads"]),
    gpus=st.sampled_from([["3"], ["3", "5"]]),
)
def test_booked_tasks_never_share_an_id_and_all_end(
    tasks: list[Task], spawners: str, gpus: list[str]
) -> None:
    backend = LocalBackend(cores=2, gpus=gpus, spawners=spawners, queue_ahead=True)
    checker = InvariantChecker(2, len(gpus), queue_ahead=backend.queue_ahead_depth)
    ensemble = Ensemble(
        tasks,
        backend=backend,
        observers=[checker],
        run_dir=tempfile.mkdtemp(prefix="me-ahead-prop-"),
    )

    async def run() -> object:
        with anyio.fail_after(60):  # a booked task that never moves in: the run would hang
            return await ensemble.run()

    summary = asyncio.run(run())  # type: ignore[arg-type]
    assert summary.counts["succeeded"] == len(tasks)  # type: ignore[attr-defined]
    assert set(checker.final) == {t.id for t in tasks}
    assert all(state is TaskState.SUCCEEDED for state in checker.final.values())
    assert checker.in_use == {}  # every id given back
