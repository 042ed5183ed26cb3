"""Which ready task starts next, and where: strategy order, EASY backfill, the deadline.

The engine owns run state; this module owns the ready queue in strategy order (a heap with
lazy deletion, so queueing and re-prioritising cost O(log n) and nothing is ever searched) and
the pass that reads it. The running tasks by expected end, and the reservation of a blocked head
planned from them, are ``reservation_planner``'s.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import math
from collections.abc import Callable
from typing import Any

from matensemble.model import Placement, Resources, TaskState
from matensemble.record import Record
from matensemble.reservation_planner import ReservationPlanner
from matensemble.resources import ResourcePool
from matensemble.strategies import CompletionPolicy, SubmissionOrder
from matensemble.strategies.backfill import Reservation
from matensemble.waiting_line import WaitingLine

__all__ = ["BACKFILL_WINDOW", "Dispatcher", "PassCounts", "Record"]

BACKFILL_WINDOW = 64  # how many queued tasks one pass looks past a blocked head
RUN_AT_LEAST = 64  # tasks made ready at once that are sorted into a run instead of the heap


class PassCounts:
    """What the passes did so far, for a benchmark to say which regime a run was in: passes,
    passes whose head did not fit (a reservation was asked for, under backfill), and the
    head's reservations built anew (``planned``; the others were kept ones used again)."""

    __slots__ = ("blocked", "passes", "planned")

    def __init__(self) -> None:
        self.passes = self.blocked = self.planned = 0


class Dispatcher:
    """The ready queue in strategy order, and the pass that starts what fits."""

    def __init__(self, strategy: SubmissionOrder, completion: CompletionPolicy) -> None:
        self.strategy = strategy
        self.completion = completion
        self._ready: list[tuple[Any, ...]] = []  # heap of (key..., seq, record)
        # Entries pushed since the last pass; a pass files them first: a large batch (the
        # tasks of a submission) is sorted once into ``_run``, read in order from ``_run_at``
        # on, instead of costing a heap push and a pop each (a heap of 10^6 entries: ~5 us).
        self._incoming: list[tuple[Any, ...]] = []
        self._run: list[tuple[Any, ...]] = []
        self._run_at = 0
        # Entries the last pass looked at and left waiting, in order: the next pass reads them
        # merged with the heap instead of pushing them back (no O(log n) per waiting entry).
        self._front = WaitingLine()
        # How many entries in the heap or the front may be stale (their task reprioritised or
        # cancelled since): while none is, a pass puts back a run of a full shape in one slice.
        self._stale = 0
        self._seq = itertools.count()
        # How many queued tasks have each shape (a record counts from its push until it starts,
        # or until a pass finds it no longer ready). A pass stops as soon as every shape that
        # waits has failed to fit: nothing behind could start, so looking further is waste.
        self._shapes: dict[Resources, int] = {}
        self._planner = ReservationPlanner()  # the running tasks, for the reservation
        # The planner follows the running tasks from the first pass that needs a reservation
        # on (a head blocked under backfill); until then, only which tasks run, and since
        # when, in the order they started, for it to take in then: a run whose head never
        # blocks (a local run of 1-core tasks) pays a dict entry per task, not the planner.
        self._planning = False
        self._unplanned: dict[Record, float] = {}
        self.counts = PassCounts()

    def use_pool(self, pool: ResourcePool) -> None:
        """Plan on ``pool`` (before any task starts or is adopted as running)."""
        self._planner.use_pool(pool)

    def push(self, rec: Record) -> None:
        """Queue a ready task (again: an older entry of it becomes stale and is skipped)."""
        if rec.entry < 0:  # not queued yet (else reprioritised: the same shape, counted)
            res = rec.task.resources
            self._shapes[res] = self._shapes.get(res, 0) + 1
        else:
            self._stale += 1  # its older entry
        seq = next(self._seq)
        rec.entry = seq
        self._incoming.append((*self.strategy.key(rec.task), seq, rec))

    def _file_incoming(self) -> None:
        """Put the entries pushed since the last pass in the heap, or, when they are many
        against what is left of the sorted run, sort them and merge them into the run."""
        incoming, self._incoming = self._incoming, []
        rest = len(self._run) - self._run_at
        if len(incoming) < RUN_AT_LEAST or 8 * len(incoming) < rest:
            for entry in incoming:
                heapq.heappush(self._ready, entry)
            return
        incoming.sort()
        if rest:
            incoming = list(heapq.merge(self._run[self._run_at :], incoming))
        self._run, self._run_at = incoming, 0

    def queued(self) -> bool:
        """Whether any task waits in the queue (as the last pass left it)."""
        return any(self._shapes.values())

    def unqueued(self, rec: Record) -> None:
        """A queued task left the queue without starting (it was cancelled): its entry is
        stale from now on (it is dropped when a pass reaches it)."""
        if rec.entry >= 0:
            self._stale += 1

    def running(self, rec: Record, now: float) -> None:
        """A task started (or was adopted) at ``now``: remember when it should end."""
        if self._planning:
            self._planner.running(rec, now)
        else:
            self._unplanned[rec] = now

    def ended(self, rec: Record) -> None:
        """A running task ended, or was cancelled (before ``rec.placement`` changes)."""
        if self._planning:
            self._planner.ended(rec)
        else:
            del self._unplanned[rec]

    def _plan_from_now_on(self) -> ReservationPlanner:
        """The planner, following the running tasks from now on: those that run already
        are handed to it in the order they started, as if it had followed them all along."""
        if not self._planning:
            self._planning = True
            planner, unplanned, self._unplanned = self._planner, self._unplanned, {}
            for rec, since in unplanned.items():
                planner.running(rec, since)
        return self._planner

    def select(
        self,
        pool: ResourcePool,
        now: float,
        deadline: float | None,
        in_flight: Callable[[], int],
        start: Callable[[Record, Placement], None],
        backfill: bool | None = None,
    ) -> bool:
        """Start ready tasks in strategy order while they fit, with backfill if enabled.

        ``start`` is called for each task chosen, with the placement allocated in ``pool``;
        ``in_flight`` counts running tasks for the completion policy; ``backfill`` overrides
        the strategy's (``False``: the first task that does not fit ends the pass). Returns
        whether the deadline held back a task that could not finish before it.
        """
        if backfill is None:
            backfill = self.strategy.backfill
        counts = self.counts
        counts.passes += 1
        if self._incoming:
            self._file_incoming()
        # The default policy lets every task start: then ask neither it nor the count.
        gated = type(self.completion).may_start is not CompletionPolicy.may_start
        if not gated and deadline is None and self._front_stays_blocked(pool):
            counts.blocked += 1  # its head does not fit
            self.completion.blocked()  # as the pass would: it puts back what it read
            return False
        heap, line = self._ready, self._front
        run, r = self._run, self._run_at  # the sorted run, read from ``r`` on
        end_of_run = len(run)
        front = line.entries
        at = 0  # next entry of ``front`` to read
        # What waits, in order (with their shapes): while that is the front's first entries,
        # it borrows them, and a pass that only puts back what it read from the front leaves
        # the front as it was, uncopied.
        put_back = WaitingLine(borrowing=line)
        reservation: Reservation | None = None
        head: Record | None = None
        no_room: set[Resources] = set()
        beside_head: set[Resources] = set()  # shapes whose placement the reservation refused
        latest_end = math.inf if deadline is None else deadline - now
        held = False
        blocked = False  # the pass ended with nothing more that fits (told once, below)
        waiting = len(front)  # ``front`` does not change during the pass
        pop = heapq.heappop
        shapes = self._shapes
        # Shapes still waiting that have not failed to fit in this pass; when none is left, the
        # pass ends. With a deadline every entry is looked at (it may be held back).
        undecided = len(shapes) if deadline is None else -1
        while at < waiting or heap or r < end_of_run:
            if gated and not self.completion.may_start(in_flight()):
                break
            # The least of the three ordered sources: the front, the run and the heap.
            if r < end_of_run and (not heap or run[r] < heap[0]):
                if at < waiting and front[at] < run[r]:
                    entry = front[at]
                    at += 1
                else:
                    entry = run[r]
                    r += 1
            elif at < waiting and (not heap or front[at] < heap[0]):
                entry = front[at]
                at += 1
            else:
                entry = pop(heap)
            rec: Record = entry[-1]
            if rec.entry != entry[-2] or rec.state is not TaskState.READY:
                if rec.entry == entry[-2]:  # its live entry: it left the queue (cancelled)
                    rec.entry = -1
                    self._forget(rec.task.resources)
                self._stale -= 1
                continue  # stale: reprioritised or cancelled since it was queued
            task = rec.task
            if (task.estimate or 0.0) > latest_end:
                put_back.add(entry, task.resources)  # cannot finish before the deadline: hold it
                held = True
                continue
            res = task.resources
            # Where the reservation would refuse any placement, only a task that ends before
            # the head's start can pass: no need to place it to know.
            if (
                reservation is not None
                and (reservation.bounded or res in beside_head)
                and (task.estimate is None or now + task.estimate > reservation.shadow)
            ):
                put_back.add(entry, res)
                if len(put_back) > BACKFILL_WINDOW:
                    break
                continue
            placement = None if res in no_room else pool.allocate(res)
            if placement is None:
                if res not in no_room:
                    no_room.add(res)  # the same shape will not fit either, in this pass
                    undecided -= 1
                put_back.add(entry, res)
                if undecided == 0:
                    break  # every shape that waits failed to fit: nothing more can start
                if head is None:
                    head = rec
                    counts.blocked += 1
                    if not backfill:
                        break
                    reservation = self._plan_from_now_on().still_kept(rec, now)
                if len(put_back) > BACKFILL_WINDOW or pool.free_cores == 0:
                    break
                if not gated and deadline is None:
                    bound = run[r] if r < end_of_run else None
                    if heap and (bound is None or heap[0] < bound):
                        bound = heap[0]
                    at = self._sweep(line, at, waiting, put_back, no_room, bound)
                    if len(put_back) > BACKFILL_WINDOW:
                        break
                continue
            if head is None:
                if self._planning:  # a task ahead of any blocked head changes the plan
                    self._planner.ahead_of_head()
            else:
                if reservation is None:
                    # Plan the head's start on the pool as it was before this candidate.
                    pool.release(placement)
                    reservation = self._planner.plan(head, pool, in_flight())
                    counts.planned += self._planner.planned_anew
                    placement = pool.allocate(res)
                    assert placement is not None
                if not reservation.admits(task, placement, pool, now):
                    pool.release(placement)
                    beside_head.add(res)  # the same shape would get the same placement
                    put_back.add(entry, res)
                    if len(put_back) > BACKFILL_WINDOW:
                        break
                    continue
            rec.entry = -1
            self._forget(res)
            start(rec, placement)
            if pool.free_cores == 0 and not gated and deadline is None:
                # Every task needs a core: nothing else fits now. The pass would read the next
                # entry, fail to place it and put it back, then end there or look further at
                # no gain (each shape fails in turn): end it now, as blocked as that pass.
                blocked = True
                break
        else:
            blocked = True  # read to the end
        if blocked or len(put_back):
            self.completion.blocked()  # once per pass, however it ended
        if r < end_of_run:
            if r >= 2 * (end_of_run - r) and r > 4096:
                del run[:r]  # the entries read: the run would keep them until its end
                r = 0
            self._run_at = r
        else:  # read to the end: let it go
            self._run, self._run_at = [], 0
        # What waits, in order: this pass's leftovers, then the front entries it did not read.
        put_back.add_from(line, at, waiting)
        self._front = put_back.settled()
        return held

    def _front_stays_blocked(self, pool: ResourcePool) -> bool:
        """Would a pass (with no deadline and no gate) start nothing and leave the queue as it
        is, because the entries it would read before it ends are all of one shape that
        cannot fit now? Answered in O(1), without reading them.

        That is the usual pass on a full machine under FIFO: whole-node tasks wait behind one
        that waits for a node to empty, and most ends free a core or a few, not a node. The
        pass would read the head, find that it does not fit, and end there if no other shape
        waits; else put back the run of its shape behind it up to the backfill window, and
        end there if the run is that long. Every entry must be live (none stale, so the head
        is of a shape that waits) for that to hold without looking at them.
        """
        if self._stale:
            return False
        shapes = self._shapes
        if len(shapes) == 1:  # the head is of this shape, and the pass ends where it fails
            return pool.surely_full_for(next(iter(shapes)))
        line = self._front
        if not line.ends or line.ends[0] <= BACKFILL_WINDOW:
            return False
        # The front's first run of one shape reaches past the window: the pass would stop
        # there, unless an entry of the heap or the run comes before the window's end.
        last = line.entries[BACKFILL_WINDOW]
        heap, run, r = self._ready, self._run, self._run_at
        if (heap and not last < heap[0]) or (r < len(run) and not last < run[r]):
            return False
        return pool.surely_full_for(line.shapes[0])

    def _sweep(
        self,
        line: WaitingLine,
        at: int,
        waiting: int,
        put_back: WaitingLine,
        no_room: set[Resources],
        bound: tuple[Any, ...] | None,
    ) -> int:
        """Put back the front entries from ``at`` on whose shape did not fit in this pass,
        as the pass would one by one (up to the window, before ``bound``, the least entry of
        the run and the heap, and up to the first entry that needs a closer look); return
        where to read on.

        While no queued entry can be stale, a run of one shape goes back in one slice: its
        entries are in order, so those before ``bound`` are found by bisection. Else each
        entry is looked at (a stale one is for the pass to drop).
        """
        front = line.entries
        upto = min(waiting, at + BACKFILL_WINDOW + 1 - len(put_back))
        if self._stale:
            ready = TaskState.READY
            while at < upto:
                entry = front[at]
                rec = entry[-1]
                res = rec.task.resources
                if (
                    rec.entry != entry[-2]
                    or rec.state is not ready
                    or res not in no_room
                    or (bound is not None and not entry < bound)
                ):
                    break
                put_back.add(entry, res)
                at += 1
            return at
        ends, shapes = line.ends, line.shapes
        k = bisect.bisect_right(ends, at) if at < upto else 0  # the run that holds ``at``
        while at < upto and shapes[k] in no_room:
            stop = min(ends[k], upto)
            if bound is not None and not front[stop - 1] < bound:
                stop = bisect.bisect_left(front, bound, at, stop)
                put_back.add_from(line, at, stop)
                return stop
            put_back.add_from(line, at, stop)
            at = stop
            k += 1
        return at

    def _forget(self, res: Resources) -> None:
        """One queued task of shape ``res`` left the queue."""
        left = self._shapes[res] - 1
        if left:
            self._shapes[res] = left
        else:
            del self._shapes[res]
