"""Running attempts in order of expected end, read lazily off a heap with lazy deletion.

The dispatcher keeps a heap of ``(expected end, start order, attempt, record)`` per running
attempt and leaves an entry in place when its attempt ends; these walk it in order, skipping the
entries of attempts that ended, without copying it.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator

from matensemble.model import TaskState
from matensemble.record import Record

__all__ = ["in_order", "push", "still_running"]


def push(
    heap: list[tuple[float, int, int, Record]], entry: tuple[float, int, int, Record], kept: int
) -> int:
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


def in_order(
    heap: list[tuple[float, int, int, Record]], running: int
) -> Iterator[tuple[float, int, int, Record]]:
    """The entries of running attempts in ``heap``, earliest first, lazily: the heap is walked
    in order without copying it (a small heap of the positions next in line), so reading k
    entries costs O(k log k) however many run. ``running``: how many attempts in it run."""
    if len(heap) > 2 * running + 64:
        _drop_ended(heap)
    while heap and not still_running(heap[0]):
        heapq.heappop(heap)  # ended: at the top, every walk would step over it again
    size = len(heap)
    frontier: list[tuple[tuple[float, int, int, Record], int]] = []
    if size:
        frontier.append((heap[0], 0))
    while frontier:
        entry, at = heapq.heappop(frontier)
        for child in (2 * at + 1, 2 * at + 2):
            if child < size:
                heapq.heappush(frontier, (heap[child], child))
        if still_running(entry):
            yield entry


def _drop_ended(heap: list[tuple[float, int, int, Record]]) -> int:
    """Drop the entries of ended attempts from ``heap`` (O(h)); how many are left."""
    running = TaskState.RUNNING  # still_running, inlined: called for every entry
    heap[:] = [e for e in heap if e[3].state is running and e[3].attempts == e[2]]
    heapq.heapify(heap)
    return len(heap)


def still_running(entry: tuple[float, int, int, Record]) -> bool:
    rec = entry[3]
    return rec.state is TaskState.RUNNING and rec.attempts == entry[2]
