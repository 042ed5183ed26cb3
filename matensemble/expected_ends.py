"""Running attempts in order of expected end, read lazily off a heap with lazy deletion.

The planner keeps a heap of ``(expected end, start order, 0, attempt, record)`` per running
attempt and leaves an entry in place when its attempt ends; these walk it in order, skipping the
entries of attempts that ended, without copying it.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator

from matensemble.model import TaskState
from matensemble.record import Record

__all__ = ["Entry", "in_order", "push", "still_running"]

# (expected end, start order, 0, attempt, record): a running attempt. Its first three fields
# are those of ``NodeDrain.started_on`` for the first node of its placement (position 0), so
# that the one tuple serves both (the attempt and record after them are never compared: the
# start order is unique).
Entry = tuple[float, int, int, int, Record]


def push(heap: list[Entry], entry: Entry, kept: int) -> int:
    """Push ``entry`` on ``heap``; first, when the heap holds more than twice the ``kept``
    entries left by the last such drop (and 64), drop the entries of ended attempts. Returns
    how many are left after the latest drop (``kept`` when there was none).

    Without this the entries of every attempt that ever ran would stay until a reservation
    walks the heap (with whole-node heads, it never does): a heap, and memory, that grow with
    the run instead of with what runs. Each drop costs O(h) after at least h/2 pushes.
    """
    if len(heap) > 2 * kept + 64:
        kept = _drop_ended(heap)
    heapq.heappush(heap, entry)
    return kept


def in_order(heap: list[Entry], running: int) -> Iterator[Entry]:
    """The entries of running attempts in ``heap``, earliest first, lazily: the heap is walked
    in order without copying it (a small heap of the positions next in line), so reading k
    entries costs O(k log k) however many run. ``running``: how many attempts in it run."""
    if len(heap) > 2 * running + 64:
        _drop_ended(heap)
    while heap and not still_running(heap[0]):
        heapq.heappop(heap)  # ended: at the top, every walk would step over it again
    size = len(heap)
    frontier: list[tuple[Entry, int]] = []
    if size:
        frontier.append((heap[0], 0))
    while frontier:
        entry, at = heapq.heappop(frontier)
        for child in (2 * at + 1, 2 * at + 2):
            if child < size:
                heapq.heappush(frontier, (heap[child], child))
        if still_running(entry):
            yield entry


def _drop_ended(heap: list[Entry]) -> int:
    """Drop the entries of ended attempts from ``heap`` (O(h)); how many are left."""
    running = TaskState.RUNNING  # still_running, inlined: called for every entry
    heap[:] = [e for e in heap if e[4].state is running and e[4].attempts == e[3]]
    heapq.heapify(heap)
    return len(heap)


def still_running(entry: Entry) -> bool:
    rec = entry[4]
    return rec.state is TaskState.RUNNING and rec.attempts == entry[3]
