"""The second layer of the inventory that queue-ahead books on (no backend needed)."""

from __future__ import annotations

import pytest

from matensemble.dispatch import Record
from matensemble.model import Resources, Task
from matensemble.queue_ahead import LATE_START, QueueAhead
from matensemble.resources import NodeSpec, ResourcePool

NODES = [NodeSpec("a", (0, 1)), NodeSpec("b", (0, 1))]


def started(pool: ResourcePool, task_id: str, cores: int = 1) -> Record:
    rec = Record(Task(id=task_id, command=("true",), resources=Resources(cores_per_rank=cores)))
    placement = pool.allocate(rec.task.resources)
    assert placement is not None
    rec.attempts, rec.placement = 1, placement
    return rec


def test_booked_tasks_move_in_on_their_node_in_booking_order_as_far_as_they_fit() -> None:
    pool, ahead = ResourcePool(NODES), QueueAhead(NODES)
    running = [started(pool, f"r{i}") for i in range(4)]
    booked = [started(ahead.pool, f"q{i}") for i in range(4)]
    for rec in booked:
        ahead.book(rec)
    on_a = [rec for rec in booked if rec.placement[0].node == "a"]
    first_on_a = next(rec for rec in running if rec.placement[0].node == "a")
    pool.release(first_on_a.placement)
    moved = ahead.move_in(first_on_a.placement, pool)
    assert moved == on_a[:1]  # one core freed on a: the first booked there, nothing more
    assert moved[0].placement[0].node == "a" and not ahead.holds(moved[0])
    assert pool.free_cores == 0 and ahead.pool.free_cores == 1
    assert all(ahead.holds(rec) for rec in booked if rec is not moved[0])


def test_a_large_booked_task_holds_the_smaller_ones_behind_it_on_its_node() -> None:
    node = [NodeSpec("a", (0, 1, 2, 3))]
    pool, ahead = ResourcePool(node), QueueAhead(node)
    running = [started(pool, "r0", cores=2), started(pool, "r1", cores=2)]
    big, small = started(ahead.pool, "big", cores=3), started(ahead.pool, "small")
    ahead.book(big)
    ahead.book(small)
    pool.release(running[0].placement)
    assert ahead.move_in(running[0].placement, pool) == []  # two cores free: big waits
    assert pool.free_cores == 2 and ahead.holds(big) and ahead.holds(small)
    pool.release(running[1].placement)
    assert ahead.move_in(running[1].placement, pool) == [big, small]
    assert pool.free_cores == 0


def test_a_booked_task_that_ends_before_moving_in_gives_its_booking_back() -> None:
    pool, ahead = ResourcePool(NODES[:1]), QueueAhead(NODES[:1])
    running = [started(pool, "r0"), started(pool, "r1")]
    first, second = started(ahead.pool, "q0"), started(ahead.pool, "q1")
    ahead.book(first)
    ahead.book(second)
    ahead.drop(first)  # cancelled while queued
    assert ahead.pool.free_cores == 1 and not ahead.holds(first)
    pool.release(running[0].placement)
    assert ahead.move_in(running[0].placement, pool) == [second]


def test_exact_booked_tasks_move_in_on_their_own_ids_and_none_waits_for_another() -> None:
    node = [NodeSpec("a", (0, 1, 2, 3))]
    pool, ahead = ResourcePool(node), QueueAhead(node, exact=True)
    running = [started(pool, f"r{i}") for i in range(4)]  # cores 0, 1, 2, 3
    big = started(ahead.pool, "big", cores=2)  # booked on 0 and 1
    small = started(ahead.pool, "small")  # booked on 2
    ahead.book(big)
    ahead.book(small)
    pool.release(running[2].placement)  # core 2 frees: small moves in there, past big
    assert ahead.move_in(running[2].placement, pool) == [small]
    assert small.placement[0].cores == (2,) and pool.free_cores == 0
    pool.release(running[0].placement)  # core 0 alone: big waits for core 1
    assert ahead.move_in(running[0].placement, pool) == [] and ahead.holds(big)
    pool.release(running[1].placement)
    assert ahead.move_in(running[1].placement, pool) == [big]
    assert big.placement[0].cores == (0, 1) and pool.free_cores == 0


def test_exact_booking_on_ids_free_in_the_pool_claims_them_there_at_once() -> None:
    node = [NodeSpec("a", (0, 1))]
    pool, ahead = ResourcePool(node), QueueAhead(node, exact=True)
    started(pool, "r0")  # core 0
    booked = started(ahead.pool, "q0")  # core 0 on the second layer: busy in the pool
    assert not ahead.claim_at_once(booked.placement, pool)
    free = started(ahead.pool, "q1")  # core 1: free in the pool too
    assert ahead.claim_at_once(free.placement, pool)
    assert pool.free_cores == 0 and ahead.pool.free_cores == 1
    assert not QueueAhead(node).claim_at_once(booked.placement, ResourcePool(node))


def test_with_a_threshold_booking_waits_for_a_finished_task_and_follows_the_average() -> None:
    always, gated = QueueAhead(NODES), QueueAhead(NODES, below=0.5)
    assert always.booking and not gated.booking  # nothing known yet: no booking
    always.ran(100.0, 50.0)
    assert always.booking  # no threshold: it books whatever the tasks take
    gated.ran(0.05, 0.03)
    assert gated.booking and gated.average == 0.05
    gated.ran(3.0, 0.03)  # one long task moves the average by its weight, 0.2: to 0.64
    assert not gated.booking
    assert gated.average is not None and abs(gated.average - 0.64) < 1e-9
    for _ in range(2):
        gated.ran(0.05, 0.03)  # 0.522, then 0.4276
    assert gated.booking


def test_with_a_threshold_booking_stops_while_tasks_start_late() -> None:
    """Short tasks that the backend starts late (its own queue is long): booking cannot help."""
    gated = QueueAhead(NODES, below=0.5)
    gated.ran(0.05, 2.0)  # a short task, started 2 s after its cores were free
    assert not gated.booking
    for late in (0.5, 0.1, 0.0, -0.01):  # 1.7, 1.38, 1.104, 0.881
        gated.ran(0.05, late)
        assert not gated.booking
    for _ in range(6):  # down to 0.229 at the sixth
        gated.ran(0.05, -0.01)
    assert gated.booking and gated.late < LATE_START


def booked_on(ahead: QueueAhead, layer: int, task_id: str, cores: int = 1) -> Record:
    rec = started(ahead.layers[layer], task_id, cores)
    ahead.book(rec, layer)
    return rec


def test_two_deep_each_core_takes_its_booked_tasks_in_booking_order_one_at_a_time() -> None:
    node = [NodeSpec("a", (0, 1))]
    pool, ahead = ResourcePool(node), QueueAhead(node, exact=True, depth=2)
    running = [started(pool, "r0"), started(pool, "r1")]  # cores 0, 1
    first = [booked_on(ahead, 0, f"q{i}") for i in range(2)]  # layer 1: cores 0, 1
    second = [booked_on(ahead, 1, f"s{i}") for i in range(2)]  # layer 2: cores 0, 1
    assert all(layer.free_cores == 0 for layer in ahead.layers) and len(ahead) == 4
    pool.release(running[0].placement)
    assert ahead.move_in(running[0].placement, pool) == [first[0]]  # not s0 as well
    assert ahead.holds(second[0]) and ahead.layers[0].free_cores == 1
    pool.release(first[0].placement)
    assert ahead.move_in(first[0].placement, pool) == [second[0]]
    assert second[0].placement[0].cores == (0,) and len(ahead) == 2


def test_two_deep_a_task_booked_on_a_free_core_of_the_first_layer_waits_behind_the_second() -> None:
    """Per core, booking order is start order, whatever layer each booking took."""
    node = [NodeSpec("a", (0, 1))]
    pool, ahead = ResourcePool(node), QueueAhead(node, exact=True, depth=2)
    running = [started(pool, "r0"), started(pool, "r1")]
    booked_on(ahead, 0, "q1", cores=1)  # layer 1: core 0
    wide = booked_on(ahead, 1, "wide", cores=2)  # layer 2: cores 0 and 1
    late = booked_on(ahead, 0, "late")  # layer 1's core 1, booked after wide
    assert late.placement[0].cores == (1,)
    pool.release(running[1].placement)  # core 1 frees: wide is first there
    assert ahead.move_in(running[1].placement, pool) == []
    assert ahead.holds(wide) and ahead.holds(late) and pool.free_cores == 1


def test_two_deep_a_booking_dropped_lets_the_one_behind_it_in_on_free_ids() -> None:
    node = [NodeSpec("a", (0, 1))]
    pool, ahead = ResourcePool(node), QueueAhead(node, exact=True, depth=2)
    running = [started(pool, "r0"), started(pool, "r1")]
    wide = booked_on(ahead, 0, "wide", cores=2)  # cores 0 and 1
    behind = booked_on(ahead, 1, "behind")  # core 0, behind wide
    pool.release(running[0].placement)  # core 0 frees: wide waits for core 1
    assert ahead.move_in(running[0].placement, pool) == [] and pool.free_cores == 1
    assert not ahead.claim_at_once(behind.placement, pool, 1)  # wide is first on core 0
    ahead.drop(wide)  # withdrawn
    assert ahead.move_in(wide.placement, pool) == [behind]
    assert behind.placement[0].cores == (0,) and pool.free_cores == 0 and len(ahead) == 0


@pytest.mark.parametrize(("depth", "exact"), [(0, True), (2, False)])
def test_a_depth_below_one_or_above_one_without_the_same_ids_is_refused(
    depth: int, exact: bool
) -> None:
    with pytest.raises(ValueError, match=f"depth must be 1, or more on the same ids: {depth}"):
        QueueAhead(NODES, exact=exact, depth=depth)


def test_exact_a_booked_task_moves_in_when_its_gpu_frees_after_its_core() -> None:
    node = [NodeSpec("a", (0, 1), ("g0",))]
    pool, ahead = ResourcePool(node), QueueAhead(node, exact=True)
    gpu_task = Resources(cores_per_rank=1, gpus_per_rank=1)
    plain = started(pool, "plain")  # core 0
    holder = Record(Task(id="holder", command=("true",), resources=gpu_task))
    holder.attempts, holder.placement = 1, pool.allocate(gpu_task)  # type: ignore[assignment]
    waiter = Record(Task(id="waiter", command=("true",), resources=gpu_task))
    waiter.attempts, waiter.placement = 1, ahead.pool.allocate(gpu_task)  # type: ignore[assignment]
    assert (plain.placement[0].cores, holder.placement[0].cores) == ((0,), (1,))
    assert waiter.placement[0].cores == (0,) and waiter.placement[0].gpus == ("g0",)
    ahead.book(waiter)
    pool.release(plain.placement)  # its core frees: it waits for the GPU
    assert ahead.move_in(plain.placement, pool) == [] and ahead.holds(waiter)
    pool.release(holder.placement)  # the GPU frees, on another core
    assert ahead.move_in(holder.placement, pool) == [waiter]
    assert not ahead.holds(waiter) and pool.free_cores == 1
