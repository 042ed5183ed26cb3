"""When nodes empty, and the backfill reservation of a whole-node head planned from it."""

from __future__ import annotations

import heapq
import itertools
import math
import random
from contextlib import closing
from typing import Any

import pytest

from matensemble import node_drain
from matensemble.model import Placement, Resources
from matensemble.node_drain import NodeDrain
from matensemble.resources import NodeSpec, ResourcePool
from matensemble.strategies.backfill import Reservation


def _pool(nodes: int, cores: int, gpus: int = 0) -> ResourcePool:
    return ResourcePool(
        [
            NodeSpec(f"n{i}", tuple(range(cores)), tuple(str(g) for g in range(gpus)))
            for i in range(nodes)
        ]
    )


def test_nodes_come_out_in_the_order_their_last_task_is_expected_to_end_and_know_their_first() -> (
    None
):
    rng = random.Random(5)
    drain = NodeDrain(20)
    running: dict[int, tuple[list[int], float]] = {}
    for key in range(400):
        nodes = rng.sample(range(20), rng.choice((1, 1, 2)))
        end = float(rng.randrange(1000))
        drain.started(key, nodes, end, key)
        running[key] = (nodes, end)
        if rng.random() < 0.5:  # as many end as start, in no particular order
            gone = rng.choice(list(running))
            drain.ended(gone, running.pop(gone)[0])
        latest: dict[int, tuple[float, int, int]] = {}  # node -> (end, start order, position)
        for k, (nodes_of, end_of) in running.items():
            for pos, i in enumerate(nodes_of):
                latest[i] = max(latest.get(i, (-math.inf, -1, -1)), (end_of, k, pos))
        expected = [(end, k, i) for end, k, _, i in sorted((*t, i) for i, t in latest.items())]
        # A reader that stops early leaves every node in place for the next one.
        # The task that ends first on a node, as a look at all says: asked of some nodes now
        # and then (what a node last answered is kept while that task runs).
        for i in rng.sample(range(20), rng.randrange(21)):
            tasks = drain.tasks_on(i)
            first = min(tasks.items(), key=lambda item: item[1]) if tasks else None
            assert drain.first_on(i) == first
        assert drain.first() == (expected[0] if expected else None)
        some = rng.randrange(4)
        with closing(drain.emptying()) as first:
            assert list(itertools.islice(first, some)) == expected[:some]
        assert list(drain.emptying()) == expected


def _busy_pool(rng: random.Random) -> tuple[ResourcePool, list[tuple[float, Placement]]]:
    """A pool of 60 nodes x 8 cores, full of 1- and 3-core tasks with random expected ends."""
    pool = _pool(60, 8, 2)
    running: list[tuple[float, Placement]] = []
    while True:
        placement = pool.allocate(Resources(ranks=rng.choice((1, 1, 3))))
        if placement is None:
            break
        running.append((float(rng.randrange(1, 500)), placement))
    for _ in range(40):  # some room here and there
        _, placement = running.pop(rng.randrange(len(running)))
        pool.release(placement)
    return pool, running


def test_a_whole_node_head_gets_the_same_shadow_from_the_drain_as_from_releasing_tasks() -> None:
    rng = random.Random(11)
    for head in (
        Resources(ranks=8, nodes=1),
        Resources(ranks=16, nodes=2),
        Resources(ranks=2, nodes=1, exclusive=True),
        Resources(ranks=2, cores_per_rank=8),
    ):
        for _ in range(20):
            pool, running = _busy_pool(rng)
            drain = NodeDrain(len(pool.nodes))
            seq = itertools.count()
            for end, placement in running:
                n = next(seq)
                drain.started(n, [pool.node_number(s.node) for s in placement], end, n)
            by_end = sorted(running, key=lambda item: item[0])
            walked = Reservation(head, pool, by_end)
            planned = Reservation(head, pool, by_end, drain)
            assert planned.shadow == walked.shadow, head
            assert not planned.bounded
            assert planned.slack == walked.slack, head  # the same nodes, ties included


def test_a_whole_node_reservation_reads_no_running_task() -> None:
    pool, running = _busy_pool(random.Random(2))
    drain = NodeDrain(len(pool.nodes))
    for key, (end, placement) in enumerate(running):
        drain.started(key, [pool.node_number(s.node) for s in placement], end, key)

    # No running task is offered: only the drain can say when a node empties.
    planned = Reservation(Resources(ranks=8, nodes=1), pool, iter(()), drain)
    assert 0 < planned.shadow < math.inf
    assert len(planned.slack) == 1


def test_a_kept_whole_node_reservation_is_the_same_as_new_exactly_while_the_first_node_is() -> None:
    rng = random.Random(8)
    pool = _pool(12, 8, 2)
    drain = NodeDrain(len(pool.nodes))
    running: dict[int, Placement] = {}
    keys = itertools.count()
    while (placement := pool.allocate(Resources(ranks=rng.choice((1, 2))))) is not None:
        key = next(keys)
        running[key] = placement
        drain.started(key, [pool.node_number(s.node) for s in placement], rng.random(), key)
    outcomes = {"the same": 0, "built anew": 0}
    for head in (Resources(ranks=8, nodes=1), Resources(ranks=1, exclusive=True)):
        kept = Reservation(head, pool, iter(()), drain)
        for _ in range(300):  # the pool stays full: one ends, one starts
            gone = rng.choice(list(running))
            placement = running.pop(gone)
            pool.release(placement)
            drain.ended(gone, [pool.node_number(s.node) for s in placement])
            placement = pool.allocate(Resources())
            assert placement is not None
            key = next(keys)
            running[key] = placement
            end = rng.random() * 2
            drain.started(key, [pool.node_number(s.node) for s in placement], end, key)
            for room in kept.slack.values():  # what tasks admitted beside the head booked
                room[1] = 0
            new = Reservation(head, pool, iter(()), drain)
            if kept.same_as_new(drain):
                assert (kept.shadow, kept.slack, kept.bounded) == (new.shadow, new.slack, False)
                outcomes["the same"] += 1
            else:
                kept = new
                outcomes["built anew"] += 1
    assert outcomes["the same"] and outcomes["built anew"]


def test_which_task_ends_first_on_a_node_is_looked_for_among_its_tasks_only_after_that_one_ended(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A GPU head's plan asks which task ends first on a node, many times over while the head
    stays blocked; the answer is kept while that task runs, so a start costs a comparison (not
    a push on a heap per node) and a node's tasks are looked at only after its first ended."""
    looked = pushes = 0
    second, push = node_drain._second, heapq.heappush

    def counted(item: Any) -> Any:
        nonlocal looked
        looked += 1
        return second(item)

    def counted_push(heap: list[Any], item: Any) -> None:
        nonlocal pushes
        pushes += 1
        push(heap, item)

    monkeypatch.setattr(node_drain, "_second", counted)
    monkeypatch.setattr(heapq, "heappush", counted_push)
    drain = NodeDrain(4)
    assert drain.first_on(0) is None
    for key in range(40):  # ten tasks per node, the later ones ending earlier
        drain.started(key, [key % 4], 100.0 - key, key)
    assert drain.first_on(0) == (36, (64.0, 36, 0))
    assert looked == 10  # its ten tasks, once
    pushes = 0
    for key in range(40, 50):  # more on node 0, none of them ending first or last there
        drain.started(key, [0], 70.0 - key % 3, key)
        assert drain.first_on(0) == (36, (64.0, 36, 0))
    assert pushes == 0
    drain.started(50, [0], 1.0, 50)
    assert drain.first_on(0) == (50, (1.0, 50, 0))
    drain.ended(0, [0])  # not the first: the answer stands
    assert drain.first_on(0) == (50, (1.0, 50, 0))
    assert looked == 10
    drain.ended(50, [0])
    assert drain.first_on(0) == (36, (64.0, 36, 0))
    assert looked == 10 + 19  # the nineteen tasks left on it, once
