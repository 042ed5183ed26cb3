"""Queueing ahead: each node's next tasks booked behind the ones running there.

A backend with a queue of its own (Flux: a job constrained to some broker ranks waits in the
instance's queue until they have room) starts a launch the moment the resources of the one
before it are free, without the round trip through the driver (the outcome, the engine's pass,
the submit, the scheduler). A backend asks for it with ``Backend.queue_ahead``; the engine then
keeps a second layer of the inventory here, and only ever queues a task with a placement it
accounted on that layer:

- **Booking.** When the free resources are taken, the producer books further ready tasks, in
  strategy order and without backfill (the first that does not fit the second layer ends the
  pass, so nothing overtakes a large task there), on the second layer. A booked task is
  launched at once and counts as running; its placement names the nodes it will run on.
- **Moving in.** When a task ends, the tasks booked on its nodes move into the pool, in the
  order they were booked, as far as the freed resources hold them: they take the free ids of
  the same nodes there, and from then on count for the backfill reservation and the node drain
  like any task that started. The backend starts them there (Flux frees the ranks, its queue
  starts the next job on them).
- **The same ids** (``exact``, for a backend that pins what it queues: the local backend). A
  booked task moves in on exactly the ids it was booked on, as soon as every one of them is
  free in the pool and it is the first task booked on each of its cores that has not moved
  in: per core, tasks start in the order they were booked (**per-core FIFO**, the order the
  backend gets them in), whatever waits elsewhere on its node. One booked on ids all free
  already, with nothing booked on them, moves in at once. The backend starts it on those ids
  when the processes holding them have ended, so its accounts and the engine's agree.
- **Depth** (``Backend.queue_ahead_depth``, with ``exact`` only). A layer books each id once,
  so a core has at most one task booked behind its running one per layer; with depth 3 (the
  local backend's helpers) the engine books the next layer once one is full, and a core has
  its next three tasks booked: the driver's round trip then has three tasks' run time to take
  an exit in and book again before the core waits. The layer a task was booked on only
  bounds how many wait per core; the order they start in is the booking order.
- **Only where it helps** (``Backend.queue_ahead_below``, the default ``queue_ahead="auto"``
  of Flux and the local backend). Queueing ahead saves each slot the driver's round trip
  between two tasks, which matters when the tasks are short and when that round trip, not
  the backend, is what limits; it costs the backend a second launch per slot. With a finite
  ``queue_ahead_below`` the engine keeps two running averages over the tasks that finished
  (weight ``AVERAGE_WEIGHT`` to the last): their run times (``end_time - start_time``), and
  how late they started after their resources were free in its accounts (``start_time``
  against the launch, or for a booked task the moment it moved in). It books only while the
  first is below ``queue_ahead_below`` and the second below ``LATE_START``: a backend that
  starts tasks later than that keeps a queue of its own already, and booking would only add
  to its work. Until a task has finished it does not book. Tasks booked stay booked when it
  stops.
- **Ending early.** A booked task that ends before it moved in (cancelled while queued, or
  refused) gives its booking back.
- **Taken back.** When resources stand idle with no ready task left for them, while tasks
  booked elsewhere wait behind running ones (a task booked behind a long one, at the end of
  a run or among tasks of different lengths), the engine asks a backend that can do it
  without a race (``Backend.can_withdraw``: the local backend, and Flux with
  ``queue_ahead="depend"``, see ``flux_takeback``) to withdraw those that fit
  the idle resources. A launch withdrawn before it started comes back ``withdrawn``: its
  booking (or, if it moved in meanwhile, its place) is given back and the task is ready
  again, on the same attempt number, to start on the idle resources; its journal shows a
  second ``task_started`` of that attempt. One that started first runs on where it was
  booked.

The cost, what is documented for Flux in ``docs/flux.md``: twice as many launches in the
backend as slots; the journal's ``task_started`` of a booked task is the moment it was
launched (its result's ``start_time`` is the backend's own start); the backfill reservation
plans with the booked tasks only once they moved in.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Iterator, Sequence

from matensemble.dispatch import Record
from matensemble.model import Placement, Slot
from matensemble.resources import NodeSpec, ResourcePool

__all__ = [
    "AUTO_BELOW",
    "AVERAGE_WEIGHT",
    "LATE_START",
    "QueueAhead",
    "queue_ahead_setting",
    "same_nodes",
]

_Key = tuple[str, int | str]  # an id in a line: (node, core) or (node, GPU)

AUTO_BELOW = 0.5
"""A backend's ``queue_ahead="auto"`` (the default of Flux and the local backend): queue ahead
while the tasks run shorter than this many seconds on average (``Backend.queue_ahead_below``)."""


def queue_ahead_setting(mode: bool | str, *modes: str) -> tuple[bool, float]:
    """A backend's ``queue_ahead`` argument as ``(Backend.queue_ahead,
    Backend.queue_ahead_below)``: ``True``, ``False``, ``"auto"`` (queue ahead below
    ``AUTO_BELOW``) or one of the backend's own ``modes`` (which queue ahead always).

    Raises:
        ValueError: ``mode`` is none of those.
    """
    if mode not in (True, False, *modes, "auto"):
        named = ", ".join(["True", "False", *map(repr, modes)])
        raise ValueError(f"queue_ahead must be {named} or 'auto': {mode!r}")
    return bool(mode), AUTO_BELOW if mode == "auto" else math.inf


AVERAGE_WEIGHT = 0.2
"""The weight of the last finished task in the running averages that decide, with a finite
``Backend.queue_ahead_below``, whether the engine books ahead."""

LATE_START = 0.25
"""With a finite ``Backend.queue_ahead_below``: no booking while tasks start this many seconds
(on average) after their resources were free in the engine's accounts."""


class QueueAhead:
    """The further layers of the inventory, and the tasks booked on them, in booking order
    (per node, or with ``exact`` per id)."""

    def __init__(
        self,
        nodes: Sequence[NodeSpec],
        exact: bool = False,
        below: float = math.inf,
        depth: int = 1,
    ) -> None:
        if depth < 1 or (depth > 1 and not exact):
            raise ValueError(f"queue-ahead depth must be 1, or more on the same ids: {depth}")
        # One layer per launch a core may have queued behind its running one: each id is
        # booked at most once per layer. ``pool`` is the first.
        self.layers = [ResourcePool(nodes) for _ in range(depth)]
        self.pool = self.layers[0]
        self.exact = exact  # move in on the booked ids themselves
        self.below = below  # book only while tasks run shorter than this on average
        self.gated = below < math.inf  # whether finished tasks decide (``ran``)
        self.booking = not self.gated  # whether the engine books further tasks now
        self.average: float | None = None  # of the finished tasks' run times, if ``below``
        self.late = 0.0  # how late they started after their resources were free, on average
        self._booked: dict[str, tuple[int, ResourcePool]] = {}  # id -> attempt, layer; booked
        self._lines: dict[str, deque[tuple[Record, int]]] = {n.name: deque() for n in nodes}
        # With ``exact``: the tasks booked on each id, in booking order (per-core FIFO); keys
        # (node, core) and (node, gpu), an int and a str (``_ids``).
        self._id_lines: dict[_Key, deque[tuple[Record, int]]] = {}
        self.withdrawing: set[str] = set()  # ids of booked tasks asked back from the backend

    def __len__(self) -> int:
        return len(self._booked)

    def ran(self, seconds: float, late: float) -> None:
        """A task ran ``seconds``, started ``late`` seconds after its resources were free
        (the engine tells only a ``gated`` layer): book while tasks run shorter than ``below``
        and start on time."""
        if not self.gated:
            return  # no threshold: it books whatever the tasks take
        if self.average is None:
            self.average, self.late = seconds, late
        else:
            self.average += AVERAGE_WEIGHT * (seconds - self.average)
            self.late += AVERAGE_WEIGHT * (late - self.late)
        self.booking = self.average < self.below and self.late < LATE_START

    def book(self, rec: Record, layer: int = 0) -> None:
        """``rec`` (running attempt, ``rec.placement`` on ``layers[layer]``) is booked."""
        entry = (rec, rec.attempts)
        self._booked[rec.task.id] = (rec.attempts, self.layers[layer])
        if self.exact:
            lines = self._id_lines
            for key in _ids(rec.placement):
                line = lines.get(key)
                if line is None:
                    line = lines[key] = deque()
                line.append(entry)
            return
        for slot in rec.placement:
            self._lines[slot.node].append(entry)

    def claim_at_once(self, placement: Placement, pool: ResourcePool, layer: int = 0) -> bool:
        """With ``exact``: ``placement`` (just allocated on ``layers[layer]``) is free in
        ``pool`` too and no booked task waits for its cores: claim it there instead, and
        ``True`` (the task starts, it is not booked)."""
        if not self.exact or pool.free_cores < sum(len(slot.cores) for slot in placement):
            return False  # the common case: the pool is full, that is why it was booked
        for key in _ids(placement):
            if self._front(key) is not None:
                return False  # it queues behind that one
        if not pool.claim(placement):
            return False
        self.layers[layer].release(placement)
        return True

    def waiting(self) -> list[str]:
        """The ids of the tasks booked and not yet asked back, in the order they were booked."""
        return [task_id for task_id in self._booked if task_id not in self.withdrawing]

    def holds(self, rec: Record) -> bool:
        """Whether ``rec``'s running attempt is booked here (it has not moved in)."""
        return self._still_booked(rec, rec.attempts)

    def drop(self, rec: Record) -> None:
        """``rec``'s attempt ended while booked: give its booking back."""
        _, layer = self._booked.pop(rec.task.id)
        layer.release(rec.placement)
        # Its entries in the lines are skipped when they come to the front; with ``exact``,
        # ``move_in`` of its placement lets those behind it in.

    def move_in(self, freed: Iterable[Slot], pool: ResourcePool) -> list[Record]:
        """Move the tasks booked on the nodes of ``freed`` into ``pool``, each line in order,
        while they fit there; return them (``placement`` now in ``pool``)."""
        if self.exact:
            return self._move_in_exact(freed, pool)
        moved: list[Record] = []
        for slot in freed:
            line = self._lines[slot.node]
            while line:
                rec, attempt = line[0]
                if not self._still_booked(rec, attempt):
                    line.popleft()  # ended, or moved in through another of its nodes
                    continue
                placement = same_nodes(rec.placement, pool)
                if placement is None or not pool.claim(placement):
                    break  # the first in line waits for more room: so do those behind it
                line.popleft()
                del self._booked[rec.task.id]
                self.pool.release(rec.placement)
                rec.placement = placement
                moved.append(rec)
        return moved

    def _move_in_exact(self, freed: Iterable[Slot], pool: ResourcePool) -> list[Record]:
        """Each booked task first in line on an id of ``freed`` that is first in line on all
        its ids, and whose booked ids are all free in ``pool``."""
        moved: list[Record] = []
        booked = self._booked
        for key in _ids(freed):
            rec = self._front(key)
            if rec is None or not self._first_on_all(rec):
                continue
            if not pool.claim(rec.placement):
                continue  # its ids are not all free yet
            _, layer = booked.pop(rec.task.id)
            layer.release(rec.placement)
            for its in _ids(rec.placement):  # first in each of its lines: off them all
                self._id_lines[its].popleft()
            moved.append(rec)
        return moved

    def _front(self, key: _Key) -> Record | None:
        """The first task still booked in the line of the id ``key`` (entries of tasks that
        ended or moved in are dropped on the way), or ``None``."""
        line = self._id_lines.get(key)
        while line:
            rec, attempt = line[0]
            if self._still_booked(rec, attempt):
                return rec
            line.popleft()
        return None

    def _still_booked(self, rec: Record, attempt: int) -> bool:
        booked = self._booked.get(rec.task.id)
        return booked is not None and booked[0] == attempt

    def _first_on_all(self, rec: Record) -> bool:
        """Whether ``rec`` is first in the line of every id it is booked on."""
        placement = rec.placement
        if len(placement) == 1 and len(placement[0].cores) == 1 and not placement[0].gpus:
            return True  # the line it was found first in is its only one
        return all(self._front(key) is rec for key in _ids(placement))


def _ids(placement: Iterable[Slot]) -> Iterator[_Key]:
    """The keys of the ids of ``placement`` in the lines: (node, core), (node, gpu)."""
    for slot in placement:
        node = slot.node
        for core in slot.cores:
            yield node, core
        for gpu in slot.gpus:
            yield node, gpu


def same_nodes(booked: Placement, pool: ResourcePool) -> Placement | None:
    """As many free core and GPU ids of ``pool`` on each node as ``booked`` holds there;
    ``None`` if some node has not that many free."""
    slots = []
    for slot in booked:
        cores, gpus = pool.free_on(slot.node)
        if len(cores) < len(slot.cores) or len(gpus) < len(slot.gpus):
            return None
        slots.append(Slot(slot.node, cores[: len(slot.cores)], gpus[: len(slot.gpus)]))
    return tuple(slots)
