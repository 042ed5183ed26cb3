"""When each node is expected to be empty: the latest expected end among the tasks on it.

The backfill reservation of a head task that needs whole nodes asks which nodes empty first.
Releasing running tasks in order of expected end until a node is empty answers it too, but on
a full machine of small tasks that takes thousands of releases for every such head, and the
number grows with the machine. Here each node keeps the expected ends of its running tasks,
and a heap orders the nodes by the latest of them, so the answer is read off the heap.

Costs: a start or an end is O(log N) per node it touches, amortised (when the task with a
node's latest end ends, the node's new latest is found among its at most c tasks, which happens
once per task at most); reading the k nodes that empty first is O(k log N) plus the stale heap
entries dropped on the way, each dropped once. The task that ends first on a node (for a GPU
head's plan) is kept as the node's answer while it runs: O(1) per start and end, and O(c) to
find it again after it ended, only when asked.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Generator, Iterable, Mapping, Sequence
from operator import itemgetter
from typing import Any

__all__ = ["NodeDrain"]


class NodeDrain:
    """Per node, the expected ends of its running tasks; the nodes by their latest end.

    Nodes whose latest ends are equal come out in the order their tasks started, and the
    nodes of one task in the order of its placement: the order in which releasing the tasks
    one by one would have freed them.
    """

    def __init__(self, nodes: int) -> None:
        # Per node: task key -> (expected end, start order, position in the placement).
        self._ends: list[dict[object, _Latest]] = [{} for _ in range(nodes)]
        self._latest: list[_Latest] = [_NOTHING] * nodes
        # (latest, node); an entry is stale once it differs from ``_latest[node]``.
        self._heap: list[tuple[_Latest, int]] = []
        self._heap_limit = 2 * nodes + 64
        # Per node, its task expected to end first, (key, (end, order, position)), kept while
        # that task runs; None where it is not known (never asked, or that task ended since):
        # then ``first_on`` finds it among the node's tasks. Only a GPU head's plan asks.
        self._first: list[tuple[object, _Latest] | None] = [None] * nodes

    def started(self, key: object, nodes: Sequence[int], end: float, order: int) -> None:
        """A task (``key``, any hashable; ``order``: the n-th start) started on ``nodes``,
        expected to end at ``end``."""
        for pos, i in enumerate(nodes):
            self.started_on(key, i, (end, order, pos))

    def started_on(self, key: object, node: int, mine: _Latest) -> None:
        """A task started on ``node`` (one of its nodes): ``mine`` is (expected end, start
        order, position in its placement) and may hold more after them, which is kept with it
        and never compared (the order makes it unique among other tasks')."""
        self._ends[node][key] = mine
        first = self._first[node]
        if first is not None and mine < first[1]:
            self._first[node] = (key, mine)
        if mine > self._latest[node]:
            self._latest[node] = mine
            self._push(mine, node)

    def ended(self, key: object, nodes: Iterable[int]) -> None:
        """The task ``key`` that ``started`` on ``nodes`` ended (or was cancelled)."""
        for i in nodes:
            self.ended_on(key, i)

    def ended_on(self, key: object, node: int) -> _Latest | None:
        """The task ``key`` on ``node`` ended (or was cancelled): what it ``started_on``
        there (``None``: it ran not there)."""
        ends = self._ends[node]
        mine = ends.pop(key, None)
        if mine is None:
            return None
        first = self._first[node]
        if first is not None and first[1] is mine:
            self._first[node] = None  # found again among the node's tasks when next asked
        latest = self._latest
        if mine < latest[node]:
            return mine
        new = max(ends.values(), default=_NOTHING)
        if new != latest[node]:
            latest[node] = new
            if new != _NOTHING:
                self._push(new, node)
        return mine

    def tasks_on(self, node: int) -> Mapping[object, _Latest]:
        """The tasks running on ``node``: key -> (expected end, start order, position)."""
        return self._ends[node]

    def first_on(self, node: int) -> tuple[object, _Latest] | None:
        """The task on ``node`` expected to end first, and its (expected end, start order,
        position); ``None`` if none runs there. O(1) while the task it gave last still runs
        (a start that ends sooner replaces it), else found among the node's tasks (O(c) for
        its c tasks, at most once per end on the node)."""
        first = self._first[node]
        if first is None:
            ends = self._ends[node]
            if not ends:
                return None
            first = self._first[node] = min(ends.items(), key=_second)
        return first

    def first(self) -> tuple[float, int, int] | None:
        """What ``emptying`` would yield first, or ``None``: O(1) amortised (the stale heap
        entries on top are dropped for good, as a walk would)."""
        heap, latest = self._heap, self._latest
        while heap:
            mine, i = heap[0]
            if mine == latest[i]:
                return mine[0], mine[1], i
            heapq.heappop(heap)
        return None

    def emptying(self) -> Generator[tuple[float, int, int], None, None]:
        """``(expected time, start order of the last task, node)`` for every node with running
        tasks, the earliest first.

        Lazy: the nodes are popped off the heap as they are read, and the stale entries met on
        the way are gone for good (each entry is dropped at most once, so the walks together
        cost no more than the pushes); the nodes read go back on the heap when the reader
        closes the iterator (``contextlib.closing``) or drops it. Reading k nodes costs
        O(k log N) plus the stale entries dropped.
        """
        heap, latest = self._heap, self._latest
        read: list[tuple[_Latest, int]] = []
        seen: set[int] = set()
        try:
            while heap:
                entry = heapq.heappop(heap)
                mine, i = entry
                if mine != latest[i] or i in seen:
                    continue  # stale, or a second entry of the same latest: gone for good
                seen.add(i)
                read.append(entry)
                yield mine[0], mine[1], i
        finally:
            for entry in read:
                heapq.heappush(heap, entry)

    def _push(self, mine: _Latest, node: int) -> None:
        heap = self._heap
        if len(heap) > self._heap_limit:  # mostly stale: rebuild from the truth
            heap[:] = [(t, i) for i, t in enumerate(self._latest) if t != _NOTHING and i != node]
            heapq.heapify(heap)
        heapq.heappush(heap, (mine, node))


# (expected end, start order, position in the placement), and what the caller keeps with them
# (``started_on``: e.g. the task's entry in a heap of its own, one tuple for both).
_Latest = tuple[Any, ...]
_NOTHING: _Latest = (-math.inf, -1, -1)  # no task runs on the node
_second = itemgetter(1)
