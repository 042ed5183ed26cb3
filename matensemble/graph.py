"""Dependency edges: indegree counters, the failure cascade, cycle and unknown-id checks.

Each edge costs O(1) when it is added and O(1) when its prerequisite ends. Nothing here
recurses, so chains of any depth are fine.
"""

from __future__ import annotations

import difflib
import itertools
from collections.abc import Sequence

from matensemble.errors import DependencyError
from matensemble.model import Task

__all__ = ["DependencyGraph"]

_SUGGEST_FROM = 20_000  # ids searched for a did-you-mean (difflib is linear in them)


class DependencyGraph:
    """Which tasks wait on which, and which became ready or must be skipped.

    A task is *open* from ``add`` until its outcome is reported through ``succeeded`` or
    ``did_not_succeed``, or it is skipped by a cascade.
    """

    def __init__(self) -> None:
        self._waiting: dict[str, int] = {}  # open task -> prerequisites not yet succeeded
        self._dependents: dict[str, list[str]] = {}  # prerequisite -> open dependents
        self._outcome: dict[str, bool] = {}  # ended task -> did it succeed

    def __contains__(self, task_id: str) -> bool:
        return task_id in self._waiting or task_id in self._outcome

    def add(self, tasks: Sequence[Task]) -> tuple[list[str], list[tuple[str, str]]]:
        """Add a batch of new tasks; return (ready ids, [(skipped id, failed prerequisite)]).

        The whole batch is checked before anything changes: an unknown prerequisite or a
        cycle raises ``DependencyError`` and leaves the graph as it was.
        """
        self.check(tasks)
        ready: list[str] = []
        doomed: list[tuple[str, str]] = []
        for task in tasks:
            pending = 0
            failed = None
            for dep in dict.fromkeys(task.after) if task.after else ():  # repeats: one edge
                ok = self._outcome.get(dep)
                if ok is None:
                    pending += 1
                    self._dependents.setdefault(dep, []).append(task.id)
                elif not ok:
                    failed = dep
            self._waiting[task.id] = pending
            if failed is not None:
                doomed.append((task.id, failed))
            elif pending == 0:
                ready.append(task.id)
        skipped: list[tuple[str, str]] = []
        for task_id, failed in doomed:
            if task_id in self._waiting:  # not already taken by an earlier cascade
                skipped.append((task_id, failed))
                skipped.extend(self.did_not_succeed(task_id))
        return ready, skipped

    def check(self, tasks: Sequence[Task]) -> None:
        """Raise ``DependencyError`` if ``add(tasks)`` would meet an unknown id or a cycle."""
        batch = {t.id: t for t in tasks}
        for task in tasks:
            for dep in task.after:
                if dep not in batch and dep not in self:
                    known = itertools.islice(
                        itertools.chain(batch, self._waiting, self._outcome), _SUGGEST_FROM
                    )
                    close = difflib.get_close_matches(dep, list(known), n=1)
                    hint = f"; did you mean {close[0]!r}?" if close else ""
                    raise DependencyError(task.id, f"unknown prerequisite {dep!r}{hint}")
        _check_acyclic(tasks, batch)

    def restore(self, task_id: str, ok: bool) -> None:
        """Record the outcome of a task that ended in an earlier session (``resume``)."""
        self._outcome[task_id] = ok

    def succeeded(self, task_id: str) -> list[str]:
        """Record a success; return the dependents that now have every prerequisite met."""
        self._close(task_id, True)
        ready = []
        waiting = self._waiting
        for dep in self._dependents.pop(task_id, ()):
            left = waiting.get(dep)
            if left is None:
                continue  # already skipped through another prerequisite
            waiting[dep] = left - 1
            if left == 1:
                ready.append(dep)
        return ready

    def did_not_succeed(self, task_id: str) -> list[tuple[str, str]]:
        """Record a failure; return every open transitive dependent with its direct cause.

        The cascade walks an explicit stack, so it never recurses.
        """
        self._close(task_id, False)
        skipped: list[tuple[str, str]] = []
        stack = [task_id]
        while stack:
            upstream = stack.pop()
            for dep in self._dependents.pop(upstream, ()):
                if dep in self._waiting:
                    self._close(dep, False)
                    skipped.append((dep, upstream))
                    stack.append(dep)
        return skipped

    def _close(self, task_id: str, ok: bool) -> None:
        self._waiting.pop(task_id, None)
        self._outcome[task_id] = ok


def _check_acyclic(tasks: Sequence[Task], batch: dict[str, Task]) -> None:
    """Kahn's algorithm over the edges inside the batch (old tasks cannot point into it)."""
    linked = [t for t in tasks if t.after]
    if not linked:
        return  # no edge, no cycle
    indegree = {t.id: 0 for t in tasks}
    children: dict[str, list[str]] = {}
    for task in linked:
        for dep in dict.fromkeys(task.after):
            if dep in batch:
                indegree[task.id] += 1
                children.setdefault(dep, []).append(task.id)
    queue = [tid for tid, n in indegree.items() if n == 0]
    seen = 0
    while queue:
        tid = queue.pop()
        seen += 1
        for child in children.get(tid, ()):
            indegree[child] -= 1
            if indegree[child] == 0:
                queue.append(child)
    if seen == len(indegree):
        return
    cycle = _one_cycle({tid for tid, n in indegree.items() if n > 0}, batch)
    raise DependencyError(cycle[0], "prerequisites form a cycle: " + " -> ".join(cycle))


def _one_cycle(stuck: set[str], batch: dict[str, Task]) -> list[str]:
    """Follow prerequisites inside the stuck set until an id repeats: that is a cycle."""
    node = min(stuck)
    path: list[str] = []
    index: dict[str, int] = {}
    while node not in index:
        index[node] = len(path)
        path.append(node)
        node = next(d for d in batch[node].after if d in stuck)
    return [*path[index[node] :], node]
