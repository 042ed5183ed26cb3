"""A blocked head's reservation is planned again only when something that can change it changed,
and the one kept is always the one a new plan would give."""

from __future__ import annotations

import gc
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_dispatch_shortcuts import ORDERS, Steering, crowds, schedule, sim_task

from matensemble import Resources, Task
from matensemble.model import TaskState
from matensemble.record import Record
from matensemble.reservation_planner import ReservationPlanner
from matensemble.resources import NodeSpec, ResourcePool
from matensemble.strategies import FIFO
from matensemble.strategies.backfill import Reservation


def _overdue_gpu_head() -> list[Task]:
    """Two nodes of 4 cores and 1 GPU. Node A holds a 3-core task until t=500 and a GPU task
    expected to end at t=10 that runs until t=100; node B a GPU task until t=300. The head
    (FIFO) needs a GPU: it fits on A once that GPU task ends. Behind it, 1-core tasks of one
    second keep B's three other cores busy, a pass for each end: from t=10 on, past the
    head's shadow time, the kept reservation is no longer taken as it is."""
    tasks = [
        sim_task("hog", 500.0, Resources(ranks=3, nodes=1), estimate=500.0),
        sim_task("late", 100.0, Resources(gpus_per_rank=1), estimate=10.0),
        sim_task("long", 300.0, Resources(gpus_per_rank=1), estimate=300.0),
        sim_task("head", 5.0, Resources(gpus_per_rank=1), estimate=5.0),
    ]
    tasks += [sim_task(f"s{i}", 1.0, Resources(), estimate=1.0) for i in range(330)]
    return tasks


def _count_plans(monkeypatch: pytest.MonkeyPatch) -> list[Resources]:
    """The heads of the reservations planned from here on (not those used again)."""
    planned: list[Resources] = []
    init = Reservation.__init__

    def counted(self: Reservation, head: Resources, *args: object, **kwargs: object) -> None:
        planned.append(head)
        init(self, head, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Reservation, "__init__", counted)
    return planned


def test_a_gpu_heads_reservation_is_not_planned_again_while_only_other_nodes_change(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    planned = _count_plans(monkeypatch)
    kept = schedule(_overdue_gpu_head(), FIFO, None, machine=(2, 4, 1))
    gpu_head = Resources(gpus_per_rank=1)
    assert kept["head"][1] == 100.0  # it starts when the late GPU task ends
    # Planned when the head first blocked; used as it is until its shadow time (t=10); from
    # then on each pass (some ninety, a 1-core end each on the other node, none expected
    # before t=10) finds it still the plan a new one would be.
    assert planned.count(gpu_head) == 1
    # Planned anew on each pass, the schedule is the same.
    monkeypatch.setattr(ReservationPlanner, "_kept_gpu_fit", lambda self, shape, pool: None)
    planned.clear()
    assert schedule(_overdue_gpu_head(), FIFO, None, machine=(2, 4, 1)) == kept
    assert planned.count(gpu_head) > 80


def test_an_early_end_that_makes_another_node_fit_sooner_makes_the_reservation_planned_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two nodes of 4 cores and 1 GPU; the head needs 2 cores and a GPU. Node A: a 2-core task
    until t=500 and a 2-core GPU task expected to end at t=10 that runs until t=100, so the
    head is planned on A. Node B: a 1-core task expected to end at t=5 that runs until t=200,
    a GPU task expected to end at t=300 that ends at t=50.5, and 1-core tasks of one second.
    When B's GPU task ends, B has a core and the GPU free: not enough for the head now, but
    by the overdue task's expected end, before A's: a new plan books B and keeps the 1-core
    tasks off its free core; the reservation kept on A would let one in."""
    tasks = [
        sim_task("hog", 500.0, Resources(ranks=2), estimate=500.0),
        sim_task("late", 100.0, Resources(cores_per_rank=2, gpus_per_rank=1), estimate=10.0),
        sim_task("stuck", 200.0, Resources(), estimate=5.0),
        sim_task("early", 50.5, Resources(gpus_per_rank=1), estimate=300.0),
        sim_task("head", 5.0, Resources(cores_per_rank=2, gpus_per_rank=1), estimate=5.0),
    ]
    tasks += [sim_task(f"s{i}", 1.0, Resources(), estimate=1.0) for i in range(200)]
    kept = schedule(tasks, FIFO, None, machine=(2, 4, 1))
    assert kept["head"][1] == 51.0
    assert not any(start == 50.5 for _, start, _ in kept.values())  # B's free core waited
    monkeypatch.setattr(ReservationPlanner, "_kept_gpu_fit", lambda self, shape, pool: None)
    assert schedule(tasks, FIFO, None, machine=(2, 4, 1)) == kept


def test_the_next_gpu_head_of_the_same_shape_takes_over_the_reservation_where_it_still_holds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two nodes of 4 cores and 2 GPUs. Node A is full until t=1000 (two GPU tasks expected to
    end at t=10): both 1-GPU heads are planned on A. Node B: two GPU tasks expected to end at
    t=500 end at t=20 and t=40, and 1-core tasks of one second. At t=20 the first head starts
    on B's GPU; the second head's plan would be A's again (B's next GPU is expected back
    when the first head should end, t=25), so the one kept is used, not planned anew."""
    tasks = [
        sim_task("hog", 1000.0, Resources(ranks=2), estimate=1000.0),
        sim_task("late1", 1000.0, Resources(gpus_per_rank=1), estimate=10.0),
        sim_task("late2", 1000.0, Resources(gpus_per_rank=1), estimate=10.0),
        sim_task("early1", 20.0, Resources(gpus_per_rank=1), estimate=500.0),
        sim_task("early2", 40.0, Resources(gpus_per_rank=1), estimate=500.0),
        sim_task("head1", 100.0, Resources(gpus_per_rank=1), estimate=5.0),
        sim_task("head2", 100.0, Resources(gpus_per_rank=1), estimate=5.0),
    ]
    tasks += [sim_task(f"s{i}", 1.0, Resources(), estimate=1.0) for i in range(150)]
    planned = _count_plans(monkeypatch)
    kept = schedule(tasks, FIFO, None, machine=(2, 4, 2))
    assert (kept["head1"][1], kept["head2"][1]) == (20.0, 40.0)
    assert planned.count(Resources(gpus_per_rank=1)) == 1
    monkeypatch.setattr(ReservationPlanner, "_kept_gpu_fit", lambda self, shape, pool: None)
    planned.clear()
    assert schedule(tasks, FIFO, None, machine=(2, 4, 2)) == kept
    assert planned.count(Resources(gpus_per_rank=1)) > 20


GPU_SHAPES = [
    Resources(),
    Resources(),
    Resources(gpus_per_rank=1),
    Resources(ranks=3),
    Resources(cores_per_rank=2, gpus_per_rank=1),
    Resources(ranks=2, gpus_per_rank=1),  # may spread over two nodes
    Resources(ranks=8, nodes=1),
]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    tasks=crowds(shapes=GPU_SHAPES),
    order=st.sampled_from(ORDERS),
    machine=st.sampled_from([(2, 8, 2), (3, 8, 2), (4, 8, 1)]),
)
def test_every_reservation_used_again_is_the_one_a_new_plan_would_give(
    tasks: list[Task], order: type, machine: tuple[int, int, int]
) -> None:
    """Under churn (estimates off both ways, cancels and reprioritisations of queued and
    running tasks), each time the planner hands out a reservation it compares equal to one
    planned anew at that moment, and the schedule is the one where it is always planned anew."""
    plan = ReservationPlanner.plan

    def checked(self: ReservationPlanner, head: Record, pool: ResourcePool, running: int) -> object:
        got = plan(self, head, pool, running)
        fresh = Reservation(
            head.task.resources,
            pool,
            self._expected_ends(running),
            self._drain,
            self._gpu_fit if self._drain is not None else None,
        )
        assert (got.shadow, got.bounded, got.slack) == (fresh.shadow, fresh.bounded, fresh.slack)
        return got

    saved = ReservationPlanner.plan, ReservationPlanner._kept_gpu_fit
    try:
        ReservationPlanner.plan = checked  # type: ignore[assignment,method-assign]
        kept = schedule(tasks, order, None, Steering(tasks), machine=machine)
        ReservationPlanner.plan = plan  # type: ignore[method-assign]
        ReservationPlanner._kept_gpu_fit = lambda self, shape, pool: None  # type: ignore[assignment,method-assign]
        built = schedule(tasks, order, None, Steering(tasks), machine=machine)
    finally:
        ReservationPlanner.plan, ReservationPlanner._kept_gpu_fit = saved  # type: ignore[method-assign]
    assert kept == built


def test_a_running_task_costs_the_planner_one_tuple_for_its_end_and_its_node() -> None:
    """At Frontier scale half a million tasks run at once, and what the planner keeps for each
    is touched at its start and its end: its entry in the heap of expected ends is also its
    entry in the drain of the node it runs on, not a second tuple of the same numbers.
    Held per running task: the entry, its end and its start order (the dicts and heaps that
    hold them grow in blocks of their own, a few for thousands of tasks)."""
    pool = ResourcePool(
        [NodeSpec(f"n{i}", tuple(range(64)), tuple("01234567")) for i in range(100)]
    )
    planner = ReservationPlanner()
    planner.use_pool(pool)
    records = []
    for i in range(6000):
        rec = Record(sim_task(f"t{i}", 100.0 + i % 7, Resources(gpus_per_rank=int(i % 10 == 0))))
        placement = pool.allocate(rec.task.resources)
        assert placement is not None
        rec.placement, rec.state, rec.attempts = placement, TaskState.RUNNING, 1
        records.append(rec)
    gc.collect()
    before = sys.getallocatedblocks()
    for i, rec in enumerate(records):
        planner.running(rec, float(i))
    gc.collect()
    assert (sys.getallocatedblocks() - before) / len(records) < 3.1
