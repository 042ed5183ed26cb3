"""The reservation of a head that needs GPUs on one node, read from the tasks that hold GPUs."""

from __future__ import annotations

import random
from collections.abc import Iterator

from matensemble.gpu_shadow import FirstFit, first_fit
from matensemble.model import Placement, Resources
from matensemble.node_drain import NodeDrain
from matensemble.resources import NodeSpec, ResourcePool
from matensemble.strategies.backfill import Reservation

SHAPES = (
    Resources(),
    Resources(),
    Resources(ranks=3),
    Resources(gpus_per_rank=1),
    Resources(cores_per_rank=2, gpus_per_rank=2),
    Resources(ranks=4, gpus_per_rank=1),  # may spread over nodes
)
HEADS = (
    Resources(gpus_per_rank=1),
    Resources(cores_per_rank=3, gpus_per_rank=2),
    Resources(ranks=2, nodes=1, gpus_per_rank=1),
    Resources(ranks=1, nodes=1, cores_per_rank=2, gpus_per_rank=3),
)


class Busy:
    """A pool of 40 nodes x 8 cores x 4 GPUs full of mixed tasks with random expected ends
    (ties included), and what the dispatcher keeps about them."""

    def __init__(self, rng: random.Random) -> None:
        self.pool = ResourcePool(
            [NodeSpec(f"n{i}", tuple(range(8)), tuple(str(g) for g in range(4))) for i in range(40)]
        )
        self.drain = NodeDrain(40)
        self.running: list[tuple[float, int, Placement]] = []  # (end, start order, placement)
        order = 0
        misses = 0
        while misses < 20:
            placement = self.pool.allocate(rng.choice(SHAPES))
            if placement is None:
                misses += 1
                continue
            self.running.append((float(rng.randrange(1, 60)), order, placement))
            order += 1
        for _ in range(rng.randrange(0, 30)):  # some room here and there
            _, _, placement = self.running.pop(rng.randrange(len(self.running)))
            self.pool.release(placement)
        self.running.sort(key=lambda item: item[:2])
        self.placements = {}
        for end, order, placement in self.running:
            self.placements[order] = placement
            nodes = [self.pool.node_number(slot.node) for slot in placement]
            self.drain.started(order, nodes, end, order)

    def by_end(self) -> Iterator[tuple[float, Placement]]:
        return ((end, placement) for end, _, placement in self.running)

    def gpu_fit(self, cores: int, gpus: int, pool: ResourcePool) -> FirstFit:
        def held(order: object, pos: int) -> tuple[int, int]:
            slot = self.placements[order][pos]  # type: ignore[index]
            return len(slot.cores), len(slot.gpus)

        with_gpus = (item for item in self.running if any(s.gpus for s in item[2]))
        drain = self.drain
        return first_fit(cores, gpus, pool, with_gpus, drain.tasks_on, held, drain.first_on)


def test_a_gpu_head_gets_the_same_reservation_from_the_tasks_with_gpus_as_from_releasing_all() -> (
    None
):
    rng = random.Random(7)
    planned_by_index = 0
    for _ in range(300):
        busy = Busy(rng)
        for head in HEADS:
            placement = busy.pool.allocate(head)
            if placement is not None:  # not blocked: no reservation to plan
                busy.pool.release(placement)
                continue
            walked = Reservation(head, busy.pool, busy.by_end())
            asked: list[FirstFit] = []

            def gpu_fit(
                cores: int,
                gpus: int,
                pool: ResourcePool,
                busy: Busy = busy,
                asked: list[FirstFit] = asked,
            ) -> FirstFit:
                asked.append(busy.gpu_fit(cores, gpus, pool))
                return asked[-1]

            # No running task is offered: only the tasks with GPUs can say where it fits.
            planned = Reservation(head, busy.pool, iter(()), None, gpu_fit)
            assert asked and asked[0] is not None
            planned_by_index += 1
            assert planned.shadow == walked.shadow, head
            assert planned.slack == walked.slack, head  # the same node, ties included
            assert not planned.bounded
    assert planned_by_index > 150  # enough blocked heads to say something


def test_the_tasks_with_gpus_are_read_only_up_to_the_first_node_that_fits() -> None:
    pool = ResourcePool([NodeSpec(f"n{i}", tuple(range(2)), ("0",)) for i in range(3)])
    running: list[tuple[float, int, Placement]] = []  # per node: a GPU task, then a core task
    for end in (5.0, 9.0, 7.0, 1.0, 2.0, 3.0):
        placement = pool.allocate(Resources(gpus_per_rank=1 if end > 4 else 0))
        assert placement is not None
        running.append((end, len(running), placement))
    read: list[float] = []

    def gpu_ends() -> Iterator[tuple[float, int, Placement]]:
        for end, order, placement in sorted(running[:3]):
            read.append(end)
            yield end, order, placement

    def node_tasks(i: int) -> dict[object, tuple[float, int, int]]:
        return {
            order: (end, order, 0)
            for end, order, placement in running
            if pool.node_number(placement[0].node) == i
        }

    def held(order: object, pos: int) -> tuple[int, int]:
        slot = running[order][2][pos]  # type: ignore[index]
        return len(slot.cores), len(slot.gpus)

    # The first GPU to come free is on n0 at 5.0, which has a free core by then (1.0).
    fit = first_fit(1, 1, pool, gpu_ends(), node_tasks, held)
    assert fit is not None and fit[:3] == (5.0, 0, [2, 1])
    assert read == [5.0, 7.0]  # 9.0, after the answer, is never read
