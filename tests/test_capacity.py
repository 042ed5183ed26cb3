"""The resource pool's index of nodes by free capacity: tightest fit, and never a wrong answer."""

from __future__ import annotations

import random
from collections.abc import Iterator

from matensemble.capacity import CapacityIndex
from matensemble.model import Resources, Slot
from matensemble.resources import NodeSpec, ResourcePool


def _pool(nodes: int, cores: int, gpus: int = 0) -> ResourcePool:
    return ResourcePool(
        [
            NodeSpec(f"n{i}", tuple(range(cores)), tuple(str(g) for g in range(gpus)))
            for i in range(nodes)
        ]
    )


def test_a_task_goes_to_the_node_it_fits_most_tightly() -> None:
    pool = _pool(3, 4)
    first = pool.allocate(Resources(ranks=2))
    second = pool.allocate(Resources(ranks=3))
    assert first is not None and second is not None
    assert first[0].node != second[0].node
    # One core left on the second node, two on the first: the lone core is used first.
    one = pool.allocate(Resources())
    assert one is not None
    assert one[0].node == second[0].node


def test_a_whole_node_task_finds_the_one_free_node_among_many_busy_ones() -> None:
    pool = _pool(500, 8, 2)
    for i in range(499):
        assert pool.claim([Slot(f"n{i}", (0,))])  # one core in use on each of 499 nodes
    whole = pool.allocate(Resources(ranks=8, nodes=1, exclusive=True))
    assert whole is not None
    assert whole[0].node == "n499"
    assert len(whole[0].cores) == 8 and len(whole[0].gpus) == 2
    assert pool.allocate(Resources(ranks=8, nodes=1)) is None


def test_allocation_succeeds_exactly_when_some_node_has_room_and_never_overcommits() -> None:
    rng = random.Random(3)
    pool = _pool(12, 8, 2)
    shapes = [
        Resources(),
        Resources(ranks=3),
        Resources(gpus_per_rank=1),
        Resources(ranks=2, cores_per_rank=2, gpus_per_rank=1),
        Resources(ranks=8, nodes=1),
        Resources(ranks=16, nodes=2),
    ]
    held = []
    for _ in range(3000):
        if held and rng.random() < 0.45:
            pool.release(held.pop(rng.randrange(len(held))))
            continue
        res = rng.choice(shapes)
        per = res.ranks // (res.nodes or 1)
        frees = [pool.free_on(f"n{i}") for i in range(12)]
        fitting = sum(
            1
            for cores, gpus in frees
            if len(cores) >= per * res.cores_per_rank and len(gpus) >= per * res.gpus_per_rank
        )
        full = pool.surely_full_for(res)
        placement = pool.allocate(res)
        assert not (full and placement is not None)  # "surely full" is never wrong
        if (res.nodes == 1 and not res.gpus_per_rank) or (res.ranks == 1 and not res.exclusive):
            assert full == (placement is None)  # known at once: no node has the room
        if res.nodes is not None:
            assert (placement is not None) == (fitting >= res.nodes)
        elif fitting:
            assert placement is not None and len(placement) == 1
        if placement is not None:
            held.append(placement)
        used: dict[str, set[int]] = {}
        for p in held:
            for slot in p:
                taken = used.setdefault(slot.node, set())
                assert not taken & set(slot.cores)  # no core granted twice
                taken |= set(slot.cores)
        assert pool.free_cores == 12 * 8 - sum(len(t) for t in used.values())


def churn(
    rng: random.Random, steps: int
) -> Iterator[tuple[CapacityIndex, dict[int, tuple[int, int]]]]:
    """An index of 20 nodes (8 cores, 2 GPUs) that come, go and change, and what it should
    hold, after each of ``steps`` random changes."""
    index = CapacityIndex(8, 2)
    free: dict[int, tuple[int, int]] = {}
    for _ in range(steps):
        node = rng.randrange(20)
        if rng.random() < 0.3:
            index.discard(node)
            free.pop(node, None)
        else:
            free[node] = (rng.randrange(9), rng.randrange(3))
            index.put(node, *free[node])
        yield index, free


def test_the_index_knows_whether_any_node_has_so_many_free_cores_as_nodes_come_and_go() -> None:
    for index, free in churn(random.Random(8), 3000):
        for cores in range(10):
            assert index.has_cores(cores) == any(c >= cores for c, _ in free.values())


def test_the_occupancy_above_a_floor_counts_exactly_the_nodes_with_that_much_room() -> None:
    rng = random.Random(5)
    for index, free in churn(rng, 2000):
        cores, gpus = rng.randrange(10), rng.randrange(4)
        expected: dict[tuple[int, int], int] = {}
        for c, g in free.values():
            if c >= cores and g >= gpus:
                expected[c, g] = expected.get((c, g), 0) + 1
        got = {(c, g): n for c, g, n in index.occupancy(cores, gpus)}
        assert got == expected
