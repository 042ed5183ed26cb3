"""The simulated backend's pending events (launch ends, timers) in order of time, then sequence.

A binary heap of every running launch gives the same order, but at Frontier scale (10^5 launches
in flight) each pop walks ~17 levels of tuples scattered in memory: a cache miss or two per
level, so a pop costs several times more at 10^6 tasks than at 10^4. Here the events are filed
in buckets of one virtual second (a calendar queue): a push appends to its bucket, and a bucket
is sorted once, when the clock reaches it, then read in order. Only the bucket keys, one per
second that has events (a few thousand on a Frontier day), sit in a heap. The order is exactly
the heap's: the buckets in order of their seconds, each sorted by the whole entry.
"""

from __future__ import annotations

import heapq
import math
from typing import Any

__all__ = ["EventQueue"]

_TRIM = 4096  # entries read off the open bucket before its read part is let go (if half)


class EventQueue:
    """Entries (tuples that start with a time, then a unique sequence number), least first.

    Costs: ``push`` is O(1), or O(log b) for the first entry of a second (b: seconds that hold
    events), or O(log l) when it is due within the second being read (zero-length launches,
    immediate timers, launches shorter than a second: they go on a small heap of their own, of
    l entries, beside that second's sorted bucket). ``first`` and ``pop`` are O(1) (O(log l)
    for an entry of that small heap), plus sorting a bucket when the clock reaches it
    (O(k log k) for its k entries, which sit together in memory while they are sorted). A time
    that is not finite (a launch that never ends) has a bucket of its own, after every finite
    one.
    """

    def __init__(self) -> None:
        self._buckets: dict[float, list[tuple[Any, ...]]] = {}  # second -> entries, unsorted
        self._seconds: list[float] = []  # heap of the keys of ``_buckets``
        self._open: list[tuple[Any, ...]] = []  # the bucket being read, sorted, from ``_at``
        self._open_second = -math.inf  # its key
        self._at = 0
        # Entries pushed for that second (or before it) once it was open: a heap, so that a
        # second read while many short launches come and go is never re-sorted or shifted.
        self._late: list[tuple[Any, ...]] = []
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def push(self, entry: tuple[Any, ...]) -> None:
        """File ``entry`` (its time must not be NaN)."""
        time = entry[0]
        second = math.floor(time) if -math.inf < time < math.inf else time
        self._size += 1
        if second <= self._open_second:
            # Due within the second being read (or, for a time before it, sooner than all of
            # it): before every later bucket, merged with what is left of the open one.
            heapq.heappush(self._late, entry)
            return
        bucket = self._buckets.get(second)
        if bucket is None:
            self._buckets[second] = [entry]
            heapq.heappush(self._seconds, second)
        else:
            bucket.append(entry)

    def first(self) -> tuple[Any, ...] | None:
        """The least entry, or ``None`` if there is none."""
        late = self._late
        if self._at < len(self._open):
            entry = self._open[self._at]
            return late[0] if late and late[0] < entry else entry
        if late:
            return late[0]
        if not self._seconds:
            return None
        second = heapq.heappop(self._seconds)
        bucket = self._buckets.pop(second)
        bucket.sort()
        self._open, self._open_second, self._at = bucket, second, 0
        return bucket[0]

    def pop(self) -> tuple[Any, ...]:
        """Take the least entry off (there must be one: see ``first``)."""
        entry = self.first()
        assert entry is not None, "pop() from an empty EventQueue"
        self._size -= 1
        late = self._late
        if late and late[0] is entry:
            return heapq.heappop(late)
        at = self._at + 1
        if at >= _TRIM and 2 * at >= len(self._open):
            del self._open[:at]
            at = 0
        self._at = at
        return entry

    def clear(self) -> None:
        """Drop every entry."""
        self._buckets.clear()
        self._seconds.clear()
        self._late.clear()
        self._open, self._open_second, self._at, self._size = [], -math.inf, 0, 0
