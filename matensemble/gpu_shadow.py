"""When a head task that needs GPUs on one node first fits, without releasing every task.

The backfill reservation of a head that needs one rank (c cores, g GPUs) releases running tasks,
in order of expected end, on a what-if view of the pool until some node holds the rank. When
GPUs are what is short, that walk releases hundreds of tasks that hold no GPU for each one that
does (70 % of the Frontier mix are 1-core tasks), and the head changes with every GPU task that
starts. Here the same answer comes from far fewer tasks:

- a node that has too few free GPUs now fits only after a task with GPUs on it ends, so the
  running tasks that hold GPUs are read in order of expected end, and each node they free GPUs
  on is planned from its own tasks (at most its core count);
- the nodes that have the GPUs but not the cores now are few when GPUs are short, and each is
  planned from its own tasks too (when they are many, ``first_fit`` gives up: the plain walk
  then ends after a few releases anyway).

The reading stops at the first task with GPUs that ends after the best node found. Ties are
broken as the walk breaks them: the earliest release, then the node the walk touched first.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from operator import itemgetter

from matensemble.model import Placement
from matensemble.resources import ResourcePool

__all__ = ["MAX_GPU_READY_NODES", "FirstFit", "FitRank", "NodeTasks", "first_fit"]

MAX_GPU_READY_NODES = 2048  # nodes with the GPUs but not the cores worth planning one by one

_Key = tuple[float, int, int]  # (expected end, start order, position in the placement)
# The running tasks on node number i: task -> its key (as ``NodeDrain.tasks_on`` keeps them).
NodeTasks = Callable[[int], Mapping[object, _Key]]
# The cores and GPUs a task holds at a position of its placement.
Held = Callable[[object, int], tuple[int, int]]
# The task on node number i that is expected to end first, and its key (None: none runs there).
FirstOn = Callable[[int], "tuple[object, _Key] | None"]
_second = itemgetter(1)
# Where a node stands among the others: the release that makes room there (expected end, start
# order), then its first release (the walk's order among nodes made to fit by one release).
FitRank = tuple[tuple[float, int], _Key]
# (shadow time, node booked, [free cores, free GPUs] there at the shadow, the node's rank), or
# None: walk.
FirstFit = tuple[float, int, list[int], FitRank | None] | None


def first_fit(
    cores: int,
    gpus: int,
    pool: ResourcePool,
    gpu_ends: Iterable[tuple[float, int, Placement]],
    node_tasks: NodeTasks,
    held: Held,
    first_on: FirstOn | None = None,
) -> FirstFit:
    """When a rank of ``cores`` and ``gpus`` (``gpus`` >= 1) first fits a node of ``pool``, if
    tasks end as expected, on which node, and what is free there then.

    ``gpu_ends``: the running tasks that hold GPUs, ``(expected end, start order, placement)``,
    earliest first (read lazily, only as far as needed). ``node_tasks``: every running task on
    a node; ``held``: what one of them holds there; ``first_on``: the one that ends first on a
    node (else found among ``node_tasks``). Returns ``None`` when too many nodes have the GPUs
    already (the caller walks). The pool must have no node that fits the rank now.
    """
    if first_on is None:

        def first_on(i: int) -> tuple[object, _Key] | None:
            tasks = node_tasks(i)
            return min(tasks.items(), key=_second) if tasks else None

    ready = pool.nodes_short_of_cores(cores, gpus, MAX_GPU_READY_NODES)
    if ready is None:
        return None
    best: tuple[tuple[float, int], _Key, int, list[int]] | None = None
    seen: set[int] = set()

    def plan(i: int) -> None:
        nonlocal best
        seen.add(i)
        first = first_on(i)
        if first is None or (best is not None and first[1][:2] > best[0]):
            return  # nothing runs there, or its first release comes after the best node's fit
        fit = _node_fit(pool, i, cores, gpus, first, node_tasks, held)
        if fit is not None and (best is None or fit[:2] < best[:2]):
            best = (fit[0], fit[1], i, fit[2])

    for i in ready:
        plan(i)
    for end, order, placement in gpu_ends:
        if best is not None and (end, order) > best[0]:
            break
        for slot in placement:
            if slot.gpus:
                i = pool.node_number(slot.node)
                if i not in seen:
                    plan(i)
    if best is None:
        return (float("inf"), -1, [], None)
    return best[0][0], best[2], best[3], (best[0], best[1])


def _node_fit(
    pool: ResourcePool,
    i: int,
    cores: int,
    gpus: int,
    first_task: tuple[object, _Key] | None,
    node_tasks: NodeTasks,
    held: Held,
) -> tuple[tuple[float, int], _Key, list[int]] | None:
    """Node ``i``'s first fit as its tasks end: the release that makes room, the node's first
    release (the walk's order among nodes made to fit by one release), and what is free then.
    ``first_task``: the task on it that ends first (``None``: nothing runs there)."""
    if first_task is None:
        return None
    free_c, free_g = pool.free_count(i)
    task, first = first_task
    c, g = held(task, first[2])
    if free_c + c >= cores and free_g + g >= gpus:  # the usual case: its first end is enough
        return first[:2], first, [free_c + c, free_g + g]
    for task, mine in sorted(node_tasks(i).items(), key=_second):
        c, g = held(task, mine[2])
        free_c += c
        free_g += g
        if free_c >= cores and free_g >= gpus:
            return mine[:2], first, [free_c, free_g]
    return None
