"""When the running tasks should end, and the backfill reservation planned from that.

The dispatcher decides which ready task starts next; when the first task of a pass does not fit,
it asks this module for that head's reservation (``strategies.backfill.Reservation``). The
reservation needs the running tasks by expected end: all of them (a heap with lazy deletion,
walked in order by ``expected_ends``), those that hold GPUs (for ``gpu_shadow.first_fit``), and
per node (``NodeDrain``). This module keeps them as tasks start and end, and keeps the last
reservation while it is still what a new one would be, so that a head blocked for many passes is
not planned again on each.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Mapping
from typing import cast

from matensemble.expected_ends import Entry, in_order, push
from matensemble.gpu_shadow import MAX_GPU_READY_NODES, FirstFit, FitRank, first_fit
from matensemble.model import Placement, Resources
from matensemble.node_drain import NodeDrain
from matensemble.record import Record
from matensemble.resources import ResourcePool
from matensemble.strategies.backfill import Reservation

__all__ = ["ReservationPlanner"]


class ReservationPlanner:
    """The running tasks by expected end, and the reservation of the blocked head."""

    def __init__(self) -> None:
        self._ends: list[Entry] = []  # heap of (end, seq, 0, attempt, rec)
        self._gpu_ends: list[Entry] = []  # those that hold GPUs
        self._gpu_running = 0
        self._ends_kept = self._gpu_ends_kept = 0  # entries left by the last drop (``push``)
        self._starts = itertools.count()  # the order of starts (ties between equal ends)
        # The last reservation, kept while its head stays blocked at the head of the queue,
        # nothing starts ahead of it and the clock has not passed its shadow time: then every
        # task started since was admitted by it (and booked in it), so it is still right.
        # Else it is used again only where it is what a new one would be (``same_as_new``).
        self._kept: tuple[Record, int, Reservation] | None = None
        self._kept_intact = False  # False once a task started ahead of its head
        # The last GPU head's reservation (a first fit, ``gpu_shadow``) and what tells whether
        # a new plan for a head of its shape would be the same (see ``_KeptGpuFit``); None
        # once something may have changed it (then a new one is planned).
        self._gpu_kept: _KeptGpuFit | None = None
        self._gpu_asked: tuple[int, int, FirstFit] | None = None  # the last ``_gpu_fit``
        self._drain: NodeDrain | None = None  # when each node empties, once the pool is known
        self.planned_anew = False  # whether the last ``plan`` built a new reservation
        self._numbers: Mapping[str, int] = {}  # node name -> its number in the pool

    def use_pool(self, pool: ResourcePool) -> None:
        """Plan on ``pool`` (before any task starts or is adopted as running)."""
        self._numbers = pool.node_numbers
        self._drain = NodeDrain(len(pool.nodes))

    def running(self, rec: Record, now: float) -> None:
        """A task started (or was adopted) at ``now``: remember when it should end."""
        task = rec.task
        limit = task.estimate if task.estimate is not None else task.timeout
        end = now + limit if limit is not None else math.inf
        seq = next(self._starts)
        item = (end, seq, 0, rec.attempts, rec)  # also the first node's entry in the drain
        self._ends_kept = push(self._ends, item, self._ends_kept)
        placement = rec.placement
        one = len(placement) == 1
        if placement[0].gpus if one else _holds_gpus(placement):
            self._gpu_ends_kept = push(self._gpu_ends, item, self._gpu_ends_kept)
            self._gpu_running += 1
        drain = self._drain
        if drain is None:
            return
        gpu_kept = self._gpu_kept
        numbers = self._numbers
        if one:  # most placements: no loop, no tuple of node numbers
            node = numbers[placement[0].node]
            drain.started_on(rec, node, item)
            if gpu_kept is not None and gpu_kept.node == node:
                self._gpu_kept = None  # less room on the node booked: plan again
            return
        nodes = [numbers[slot.node] for slot in placement]
        drain.started_on(rec, nodes[0], item)
        for pos in range(1, len(nodes)):
            drain.started_on(rec, nodes[pos], (end, seq, pos))
        if gpu_kept is not None and gpu_kept.node in nodes:
            self._gpu_kept = None

    def ended(self, rec: Record) -> None:
        """A running task ended, or was cancelled (before ``rec.placement`` changes)."""
        placement = rec.placement
        one = len(placement) == 1
        if placement[0].gpus if one else _holds_gpus(placement):
            self._gpu_running -= 1
        drain = self._drain
        if drain is None:
            return
        numbers = self._numbers
        node = numbers[placement[0].node]
        mine = drain.ended_on(rec, node)
        nodes = (node,) if one else [numbers[slot.node] for slot in placement]
        for i in nodes[1:]:
            drain.ended_on(rec, i)
        gpu_kept = self._gpu_kept
        if gpu_kept is not None:
            if gpu_kept.node in nodes:
                self._gpu_kept = None  # the node booked changed: plan again
            elif mine is not None and mine[:2] > gpu_kept.rank[0]:
                gpu_kept.suspects.update(nodes)  # ended before it was expected to

    def ahead_of_head(self) -> None:
        """A task started ahead of any blocked head in a pass: the kept reservation may no
        longer hold as it is (it is used again only if it is what a new one would be)."""
        self._kept_intact = False

    def still_kept(self, head: Record, now: float) -> Reservation | None:
        """The kept reservation of ``head`` if it is surely still right: ``head`` (the same
        queue entry) stayed blocked at the head, nothing started ahead of it, and the clock
        has not passed its shadow time."""
        kept = self._kept
        if (
            kept
            and self._kept_intact
            and kept[0] is head
            and kept[1] == head.entry
            and now < kept[2].shadow
        ):
            return kept[2]
        return None

    def plan(self, head: Record, pool: ResourcePool, running: int) -> Reservation:
        """The reservation of the blocked ``head`` on ``pool`` as it is (``running``: how
        many tasks run): a kept one when it is what a new one would be, else a new one,
        kept from now on."""
        kept = self._kept
        res = head.task.resources
        self.planned_anew = False
        if kept and kept[0] is head and kept[1] == head.entry and kept[2].same_as_new(self._drain):
            reservation = kept[2]
        else:
            # A GPU head's plan depends on its shape, not on which task it is: under
            # longest-first, the next 1-GPU task takes the head as soon as one starts.
            again = self._kept_gpu_fit(res, pool)
            if again is not None:
                reservation = again
            else:
                self._gpu_asked = None
                self.planned_anew = True
                reservation = Reservation(
                    res,
                    pool,
                    self._expected_ends(running),
                    self._drain,
                    self._gpu_fit if self._drain is not None else None,
                )
                asked = self._last_gpu_fit()
                if asked is not None:  # planned from the tasks with GPUs
                    self._gpu_kept = self._keep_gpu_fit(reservation, res, *asked)
            self._kept = (head, head.entry, reservation)
        self._kept_intact = True
        return reservation

    def _last_gpu_fit(self) -> tuple[int, int, FirstFit] | None:
        """What ``_gpu_fit`` was asked and answered last (None: not since ``plan`` reset it)."""
        return self._gpu_asked

    def _keep_gpu_fit(
        self, reservation: Reservation, shape: Resources, cores: int, gpus: int, fit: FirstFit
    ) -> _KeptGpuFit | None:
        """What keeps a new reservation for a head of ``shape`` (from ``fit``, for a rank of
        ``cores`` and ``gpus``) right, or ``None`` where it is not worth keeping: no node fits,
        or the release that makes room there is a task on several nodes (another of them may
        tie with it once a task starts there)."""
        if fit is None or fit[1] < 0 or fit[3] is None or reservation.shadow != fit[0]:
            return None
        node, rank = fit[1], fit[3]
        drain = self._drain
        assert drain is not None
        for rec, mine in drain.tasks_on(node).items():
            if mine[:2] == rank[0]:
                if len(cast(Record, rec).placement) > 1:
                    return None
                break
        booked = list(reservation.slack[node])
        return _KeptGpuFit(reservation, shape, cores, gpus, node, rank, booked)

    def _kept_gpu_fit(self, shape: Resources, pool: ResourcePool) -> Reservation | None:
        """The kept GPU head's reservation if one planned now for a head of ``shape`` would
        be the same (its room booked anew), else ``None``.

        Since it was planned, no task started or ended on the node it booked, so that node
        fits no sooner or later; a start elsewhere makes its node fit later, if anything; an
        end makes its node fit sooner only if the task was expected to end after the release
        that makes room on the node booked (else that node's rank stays what it was): those
        nodes are ranked again here, O(1) each in the usual case, each once per such end.
        And ``first_fit`` must not give up (too many nodes with the GPUs but not the cores),
        as it would on a new plan.
        """
        kept = self._gpu_kept
        drain = self._drain
        if kept is None or drain is None or kept.shape != shape:
            return None
        if pool.count_short_of_cores(kept.cores, kept.gpus) > MAX_GPU_READY_NODES:
            self._gpu_kept = None
            return None
        release = kept.rank[0]
        for i in kept.suspects:
            if self._fits_before(pool, i, kept, release):
                self._gpu_kept = None
                return None
        kept.suspects.clear()
        reservation = kept.reservation
        reservation.slack[kept.node][:] = kept.booked
        return reservation

    def _fits_before(
        self, pool: ResourcePool, i: int, kept: _KeptGpuFit, release: tuple[float, int]
    ) -> bool:
        """Would node ``i`` (not the node booked) hold the kept head's rank once the tasks on
        it expected to end before ``release`` (the one that makes room on the node booked)
        have ended, so that it would rank first? (No other task ends at ``release``: that
        one holds a single node.) O(1) when no task on it is expected to end that early
        (its first end, off its heap, says so), else O(c) for its c tasks."""
        drain = self._drain
        assert drain is not None
        first = drain.first_on(i)
        if first is None or first[1][:2] > release:
            return False
        free_c, free_g = pool.free_count(i)
        for rec, mine in drain.tasks_on(i).items():
            if mine[:2] < release:
                c, g = _held(rec, mine[2])
                free_c += c
                free_g += g
        return free_c >= kept.cores and free_g >= kept.gpus

    def _expected_ends(self, running: int) -> Iterator[tuple[float, Placement]]:
        """Running tasks' expected ends (start + estimate, else timeout, else never), earliest
        first, lazily (see ``in_order``)."""
        for entry in in_order(self._ends, running):
            yield entry[0], entry[4].placement

    def _gpu_fit(self, cores: int, gpus: int, pool: ResourcePool) -> FirstFit:
        """When a node first holds ``cores`` and ``gpus``, from the tasks that hold GPUs."""
        drain = self._drain
        assert drain is not None
        gpu_ends = (
            (e[0], e[1], e[4].placement) for e in in_order(self._gpu_ends, self._gpu_running)
        )
        fit = first_fit(cores, gpus, pool, gpu_ends, drain.tasks_on, _held, drain.first_on)
        self._gpu_asked = (cores, gpus, fit)
        return fit


class _KeptGpuFit:
    """A GPU head's reservation as planned, and what tells whether it still holds: the head's
    shape and the rank (cores, GPUs) asked, the node booked, its rank among the nodes
    (``gpu_shadow.FitRank``), the room booked beside the head there, and the nodes to rank
    again before it is used again (where a task ended early; a set, so at most every node)."""

    __slots__ = ("booked", "cores", "gpus", "node", "rank", "reservation", "shape", "suspects")

    def __init__(
        self,
        reservation: Reservation,
        shape: Resources,
        cores: int,
        gpus: int,
        node: int,
        rank: FitRank,
        booked: list[int],
    ) -> None:
        self.reservation, self.shape = reservation, shape
        self.cores, self.gpus, self.node, self.rank = cores, gpus, node, rank
        self.booked = booked
        self.suspects: set[int] = set()


def _held(rec: object, pos: int) -> tuple[int, int]:
    """The cores and GPUs a running task holds at position ``pos`` of its placement."""
    slot = cast(Record, rec).placement[pos]
    return len(slot.cores), len(slot.gpus)


def _holds_gpus(placement: Placement) -> bool:
    """Whether any slot of ``placement`` holds a GPU (a loop: a generator costs more than the
    one slot most placements have)."""
    for slot in placement:  # noqa: SIM110
        if slot.gpus:
            return True
    return False
