"""When nodes empty, and the backfill reservation of a whole-node head planned from it."""

from __future__ import annotations

import itertools
import math
import random
from contextlib import closing

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
        for i in range(20):  # the task that ends first on each node, as a look at all says
            tasks = drain.tasks_on(i)
            first = min(tasks.items(), key=lambda item: item[1]) if tasks else None
            assert drain.first_on(i) == first
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
