"""Property tests of DESIGN.md's invariants 1-5 on random ensembles, machines and failures.

The simulated backend stands in for the cluster (it is the fake at the process boundary); the
engine, graph, pool and strategies are the real ones.
"""

from __future__ import annotations

import asyncio
import tempfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from matensemble import (
    DependencyError,
    Ensemble,
    Resources,
    SimulatedBackend,
    Task,
    TaskRejected,
    TaskState,
)
from matensemble.resources import ResourcePool
from matensemble.strategies import (
    FIFO,
    Adaptive,
    GPUFirst,
    LongestFirst,
    Priority,
    RetryPolicy,
    Waves,
)

from conftest import InvariantChecker

ORDERS = [FIFO, Priority, LongestFirst, GPUFirst]


@st.composite
def machines(draw: st.DrawFn) -> tuple[int, int, int]:
    return (
        draw(st.integers(1, 3)),
        draw(st.integers(1, 8)),
        draw(st.integers(0, 4)),
    )


@st.composite
def ensembles(draw: st.DrawFn, max_tasks: int = 30) -> list[Task]:
    n = draw(st.integers(1, max_tasks))
    tasks = []
    for i in range(n):
        ranks = draw(st.integers(1, 3))
        nodes = draw(st.sampled_from([None, None, 1, ranks]))
        res = Resources(
            ranks=ranks,
            cores_per_rank=draw(st.integers(1, 3)),
            gpus_per_rank=draw(st.sampled_from([0, 0, 0, 1, 2])),
            nodes=nodes,
            exclusive=draw(st.booleans()) and draw(st.booleans()),
        )
        after = draw(st.lists(st.integers(0, i - 1), max_size=3)) if i else []
        tasks.append(
            Task(
                id=f"t{i}",
                command=("sim",),
                resources=res,
                after=tuple(f"t{j}" for j in after),
                estimate=draw(st.sampled_from([0.0, 1.0, 2.5, 7.0])),
                timeout=draw(st.sampled_from([None, None, 5.0])),
                retries=draw(st.integers(0, 1)),
                priority=draw(st.integers(-2, 2)),
            )
        )
    return tasks


def run(coro: object) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    machine=machines(),
    tasks=ensembles(),
    failing=st.sets(st.integers(0, 29)),
    order=st.sampled_from(ORDERS),
    backfill=st.booleans(),
    waves=st.booleans(),
)
def test_invariants_hold_on_random_ensembles(
    machine: tuple[int, int, int],
    tasks: list[Task],
    failing: set[int],
    order: type,
    backfill: bool,
    waves: bool,
) -> None:
    nodes, cores, gpus = machine
    backend = SimulatedBackend(
        nodes,
        cores,
        gpus,
        returncode=lambda task, attempt: 1 if int(task.id[1:]) in failing and attempt == 1 else 0,
    )
    probe = ResourcePool([_node(f"n{i}", cores, gpus) for i in range(nodes)])
    never = [t.id for t in tasks if probe.why_never_fits(t.resources) is not None]
    checker = InvariantChecker(cores, gpus)
    ensemble = Ensemble(
        tasks,
        backend=backend,
        strategy=order(backfill=backfill),
        completion=Waves() if waves else Adaptive(),
        retry=RetryPolicy(),
        observers=[checker],
        run_dir=tempfile.mkdtemp(prefix="me-prop-"),
    )
    if never:
        # Invariant 5: a task that can never fit is refused at submission, and nothing runs.
        with pytest.raises(TaskRejected) as info:
            run(ensemble.run())
        assert info.value.task_id in never
        assert checker.started == []
        return
    summary = run(ensemble.run())
    results = summary.results  # type: ignore[attr-defined]
    # Invariant 2: exactly one terminal state each, with a reason unless it succeeded.
    assert set(results) == {t.id for t in tasks}
    assert set(checker.final) == set(results)
    assert checker.in_use == {}  # every granted id came back
    by_id = {t.id: t for t in tasks}
    for task_id, result in results.items():
        deps = [results[d].state for d in by_id[task_id].after]
        # Invariant 3 (checked at start time by the checker) and the failure cascade:
        if all(s is TaskState.SUCCEEDED for s in deps):
            assert result.state is not TaskState.SKIPPED
        else:
            assert result.state is TaskState.SKIPPED
        if int(task_id[1:]) in failing and by_id[task_id].retries == 0:
            assert result.state is not TaskState.SUCCEEDED


def _node(name: str, cores: int, gpus: int):  # type: ignore[no-untyped-def]
    from matensemble.resources import NodeSpec

    return NodeSpec(name, tuple(range(cores)), tuple(str(g) for g in range(gpus)))


@settings(max_examples=100, deadline=None)
@given(
    n=st.integers(2, 12),
    edges=st.lists(st.tuples(st.integers(0, 11), st.integers(0, 11)), min_size=1, max_size=30),
)
def test_cycles_are_always_rejected_and_acyclic_graphs_always_run(
    n: int, edges: list[tuple[int, int]]
) -> None:
    after: dict[int, set[int]] = {i: set() for i in range(n)}
    for a, b in edges:
        if a < n and b < n and a != b:
            after[a].add(b)
    tasks = [
        Task(id=f"t{i}", command=("sim",), after=tuple(f"t{j}" for j in sorted(after[i])))
        for i in range(n)
    ]
    ensemble = Ensemble(
        tasks, backend=SimulatedBackend(1, 2), run_dir=tempfile.mkdtemp(prefix="me-prop-")
    )
    if _has_cycle(after):
        with pytest.raises(DependencyError, match="cycle"):
            run(ensemble.run())
    else:
        summary = run(ensemble.run())
        assert summary.counts["succeeded"] == n  # type: ignore[attr-defined]


def _has_cycle(after: dict[int, set[int]]) -> bool:
    state: dict[int, int] = {}

    def visit(v: int) -> bool:
        state[v] = 1
        for w in after[v]:
            if state.get(w) == 1 or (w not in state and visit(w)):
                return True
        state[v] = 2
        return False

    return any(v not in state and visit(v) for v in after)


@settings(max_examples=60, deadline=None)
@given(
    durations=st.lists(st.sampled_from([0.5, 1.0, 3.0]), min_size=1, max_size=40),
    cores=st.integers(1, 6),
)
def test_adaptive_never_leaves_a_core_idle_while_a_task_waits(
    durations: list[float], cores: int
) -> None:
    """Invariant 4 (the refill half), in virtual time: a freed slot is refilled at once."""
    tasks = [Task(id=f"u{i}", command=("sim",), estimate=d) for i, d in enumerate(durations)]
    summary = run(
        Ensemble(
            tasks,
            backend=SimulatedBackend(1, cores),
            run_dir=tempfile.mkdtemp(prefix="me-prop-"),
        ).run()
    )
    results = sorted(summary.results.values(), key=lambda r: r.start_time)  # type: ignore[attr-defined]
    ends = sorted(r.end_time for r in results)
    for i, r in enumerate(results):
        # The i-th start happens when the (i - cores)-th slot freed up (or at time 0).
        expected = 0.0 if i < cores else ends[i - cores]
        assert r.start_time == pytest.approx(expected)
