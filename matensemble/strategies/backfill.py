"""EASY backfill: a reservation for the blocked head task, and the test later tasks must pass.

When the head of the queue does not fit, the engine computes when it *will* fit (the shadow
time) by releasing running tasks, in order of expected end, on a what-if view of the pool, and
reserves the head's resources on the nodes where it would start then. A later task may start
now if it ends before the shadow time (by its estimate), or if it leaves the reserved nodes
enough room beside the head. Either way the head starts no later than it would have without
backfilling, so large tasks are never starved. Running tasks without an estimate or timeout
are assumed to run forever (the safe choice).

Costs: a head that needs nodes of its own (``exclusive``, or a share per node, or a rank, as
large as a node's cores) asks ``NodeDrain`` which nodes empty first: O(k log k) for k nodes,
however many tasks run. A head that needs GPUs on one node asks ``gpu_shadow.first_fit``,
which reads the running tasks that hold GPUs instead of all of them. Any other head releases
running tasks in order of expected end on a what-if view that holds only the nodes they touch
(nothing is copied), reading at most
``MAX_RELEASES`` of them. When the head needs more than that, the reservation is *bounded*: the
head cannot start before the last expected end read, so tasks that end before it are still
admitted, and no others.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from contextlib import closing

from matensemble.gpu_shadow import FirstFit
from matensemble.model import Placement, Resources, Task
from matensemble.node_drain import NodeDrain
from matensemble.resources import ResourcePool

__all__ = ["MAX_RELEASES", "GpuFit", "Reservation"]

# (cores, GPUs, pool) -> when and where a node first holds them, or None (then walk).
GpuFit = Callable[[int, int, ResourcePool], FirstFit]
MAX_RELEASES = 4096  # running tasks one reservation may read, earliest expected end first


class Reservation:
    """The head task's reserved start (``shadow``) and the room left beside it then.

    ``slack`` maps each node the head is reserved on to the cores and GPUs that stay free
    there at the shadow time once the head has its share; tasks that would still run then
    may use no more than that.
    """

    def __init__(
        self,
        head: Resources,
        pool: ResourcePool,
        running: Iterable[tuple[float, Placement]],
        drain: NodeDrain | None = None,
        gpu_fit: GpuFit | None = None,
    ) -> None:
        """``running``: the running tasks' expected ends and placements, earliest first.

        Only as many are taken from it as the head needs, so a lazy iterator keeps the cost
        proportional to the tasks that must end, not to all that run. ``drain``: when each
        node empties; a head that needs empty nodes is planned from it instead. ``gpu_fit``:
        when a node first holds ``(cores, gpus)`` (see ``matensemble.gpu_shadow``); a head of
        one node's worth of ranks with GPUs is planned from it, unless it returns ``None``.
        """
        self.shadow = -math.inf
        self.bounded = False
        self.slack: dict[int, list[int]] = {}
        # For a head of one empty node planned while none is empty: the node that empties
        # first, as ``NodeDrain.first`` gave it, and the room booked beside the head there.
        # The whole reservation follows from it (see ``same_as_new``).
        self._first: tuple[float, int, int] | None = None
        self._booked: list[int] = []
        need = _Need(head)
        future: dict[int, list[int]] = {}  # node -> [free cores, free GPUs] at the shadow
        total = need.now(pool)
        if drain is not None and need.empty_nodes_only(pool):
            if total == 0 and need.target == 1:
                self._first = drain.first()
            last = None
            with closing(drain.emptying()) as emptying:  # puts the nodes read back
                for end, order, i in emptying:
                    # Past the target, only nodes freed by the same task as the last one:
                    # the release that reached the target freed them too.
                    if total >= need.target and (end, order) != last:
                        break
                    empty = future[i] = list(pool.capacity(i))
                    total += need.value(pool, i, empty)
                    self.shadow, last = end, (end, order)
            if total < need.target:  # cannot happen for a task that fits the empty pool
                self.shadow = math.inf
                return
            self._reserve(need, pool, future)
            first = self._first
            if first is not None and list(self.slack) == [first[2]] and self.shadow == first[0]:
                self._booked = list(self.slack[first[2]])
            else:  # the node that empties first cannot hold the head: more than it counts
                self._first = None
            return
        if gpu_fit is not None and need.gpr and not need.whole and need.target == 1 and total == 0:
            fit = gpu_fit(*need.per_node, pool)
            if fit is not None:
                self.shadow, node, room, _ = fit
                if node >= 0:
                    self.slack[node] = need.book(room, 1)
                return
        ends = iter(running)
        released = 0
        while total < need.target:
            item = next(ends, None)
            if item is None:  # cannot happen for a task that fits the empty pool
                self.shadow = math.inf
                return
            if released == MAX_RELEASES:
                self.bounded = True
                return
            end, placement = item
            released += 1
            for slot in placement:
                i = pool.node_number(slot.node)
                free = future.get(i)
                if free is None:
                    free = future[i] = list(pool.free_count(i))
                total -= need.value(pool, i, free)
                free[0] += len(slot.cores)
                free[1] += len(slot.gpus)
                total += need.value(pool, i, free)
            self.shadow = end
        self._reserve(need, pool, future)

    def same_as_new(self, drain: NodeDrain | None) -> bool:
        """Would a reservation built now for the same head (still blocked: no node fits it)
        be this one? Then it is made so again (its booked room as new) and ``True``.

        Known only for a head of one empty node: such a reservation is the node that
        ``drain`` says empties first, read off its heap in O(1) instead of rebuilt, however
        the clock and the tasks on other nodes moved since.
        """
        first = self._first
        if first is None or drain is None or drain.first() != first:
            return False
        self.slack[first[2]][:] = self._booked
        return True

    def _reserve(self, need: _Need, pool: ResourcePool, future: dict[int, list[int]]) -> None:
        """Book the head on the nodes that became free first, then on nodes free already."""
        left = need.target
        taken: list[int] = []
        for i, free in future.items():
            if left <= 0:
                break
            value = need.value(pool, i, free)
            if value:
                self.slack[i] = need.book(free, min(value, left))
                left -= value
                taken.append(i)
        if left > 0:
            for i in pool.nodes_fitting(*need.per_node, whole=need.whole):
                if i in future:
                    continue
                free = list(pool.free_count(i))
                value = need.value(pool, i, free)
                self.slack[i] = need.book(free, min(value, left))
                left -= value
                if left <= 0:
                    break

    def admits(self, task: Task, placement: Placement, pool: ResourcePool, now: float) -> bool:
        """May ``task`` start now on ``placement`` without delaying the head? Books it if so."""
        if task.estimate is not None and now + task.estimate <= self.shadow:
            return True
        if self.bounded:
            return False
        slack = self.slack
        booked = []
        for slot in placement:
            room = slack.get(pool.node_number(slot.node))
            if room is not None:
                if len(slot.cores) > room[0] or len(slot.gpus) > room[1]:
                    return False
                booked.append((room, len(slot.cores), len(slot.gpus)))
        for room, cores, gpus in booked:
            room[0] -= cores
            room[1] -= gpus
        return True


class _Need:
    """What the head needs, counted per node: whole nodes, or ranks that fit."""

    def __init__(self, res: Resources) -> None:
        self.cpr, self.gpr = res.cores_per_rank, res.gpus_per_rank
        self.whole = res.exclusive
        self.per = res.ranks // res.nodes if res.nodes is not None else 0
        # With a node count, each node counts 1 if it holds its share; else nodes count ranks.
        self.target = res.nodes if res.nodes is not None else res.ranks
        self.per_node = (
            (self.per * self.cpr, self.per * self.gpr) if self.per else (self.cpr, self.gpr)
        )

    def empty_nodes_only(self, pool: ResourcePool) -> bool:
        """Does each unit of the need (a node's share, or a rank) take a node's every core,
        so that it fits only on nodes where nothing runs?"""
        return self.whole or (self.per or 1) * self.cpr >= pool.most_cores

    def value(self, pool: ResourcePool, i: int, free: list[int]) -> int:
        if self.whole and (free[0], free[1]) != pool.capacity(i):
            return 0
        ranks = _ranks_fitting(free[0], free[1], self.cpr, self.gpr)
        if self.per:
            return 1 if ranks >= self.per else 0
        return ranks

    def now(self, pool: ResourcePool) -> int:
        """The sum of ``value`` over the pool as it is, from its capacity buckets (those with
        room for less than a unit of the need count nothing, and are not read)."""
        total = 0
        for cores, gpus, count in pool.occupancy(*self.per_node, whole=self.whole):
            ranks = _ranks_fitting(cores, gpus, self.cpr, self.gpr)
            total += count * ((1 if ranks >= self.per else 0) if self.per else ranks)
        return total

    def book(self, free: list[int], value: int) -> list[int]:
        """Reserve ``value`` (a node, or ranks) out of ``free``; what stays free beside it."""
        if self.whole:
            return [0, 0]
        ranks = self.per if self.per else value
        return [free[0] - ranks * self.cpr, free[1] - ranks * self.gpr]


def _ranks_fitting(cores: int, gpus: int, cpr: int, gpr: int) -> int:
    by_cores = cores // cpr
    return by_cores if gpr == 0 else min(by_cores, gpus // gpr)
