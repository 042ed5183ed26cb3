"""EASY backfill: a reservation for the blocked head task, and the test later tasks must pass.

When the head of the queue does not fit, the engine computes when it *will* fit (the shadow
time) by releasing running tasks, in order of expected end, on a (copy-on-write) copy of the
pool, and
reserves the head's resources there. A later task may start now if it ends before the shadow
time (by its estimate) or if it also fits beside the head's reservation. Either way the head
starts no later than it would have without backfilling, so large tasks are never starved.
Running tasks without an estimate or timeout are assumed to run forever (the safe choice).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from matensemble.model import Placement, Resources, Task
from matensemble.resources import ResourcePool

__all__ = ["Reservation"]


class Reservation:
    """The head task's reserved start (``shadow``) and the pool as it will be then."""

    def __init__(
        self,
        head: Resources,
        pool: ResourcePool,
        running: Iterable[tuple[float, Placement]],
    ) -> None:
        """``running``: the running tasks' expected ends and placements, earliest first.

        Only as many are taken from it as the head needs, so a lazy iterator keeps the cost
        proportional to the tasks that must end, not to all that run.
        """
        self._pool = pool.copy()
        self.shadow = -math.inf
        ends = iter(running)
        while self._pool.allocate(head) is None:
            item = next(ends, None)
            if item is None:  # cannot happen for a task that fits the empty pool
                self.shadow = math.inf
                return
            end, placement = item
            self._pool.release(placement)
            self.shadow = end

    def admits(self, task: Task, placement: Placement, now: float) -> bool:
        """May ``task`` start now on ``placement`` without delaying the head? Books it if so.

        A task still running at the shadow time must leave the head's reservation alone: the
        exact ids it would run on must be free in the pool as it will be then.
        """
        if task.estimate is not None and now + task.estimate <= self.shadow:
            return True
        return self._pool.claim(placement)
