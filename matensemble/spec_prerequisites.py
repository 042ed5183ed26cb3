"""What an ensemble file's ``after`` entries name: task ids, sweep names and glob patterns.

An ``after`` entry can name a task defined later in the file, so the references are resolved
once every entry has been expanded; then the prerequisites are checked for a cycle, so that a
file whose tasks could never start is refused before any run begins.
"""

from __future__ import annotations

import difflib
import fnmatch
import itertools
from collections.abc import Sequence

from matensemble.model import Task
from matensemble.spec_schema import fail, short

__all__ = ["FileIds"]


class FileIds:
    """The ids a file defines and where, and its sweeps' names with their ids."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.where: dict[str, str] = {}  # id -> where it is defined
        self.sweeps: dict[str, list[str]] = {}  # sweep name -> its ids
        self._matches: dict[str, list[str]] = {}  # an ``after`` entry -> the ids it names

    def add(self, task_id: str, where: str) -> None:
        """Record the id ``task_id`` defined at ``where``; refuse it if it is taken."""
        first = self.where.get(task_id)
        if first is not None:
            same = first.split(" ")[0] == where.split(" ")[0]
            hint = " (the id template must use every parameter that varies, or {index})"
            fail(
                self.source,
                "",
                f"duplicate task id {task_id!r} at {where}; first defined at {first}"
                f"{hint if same else ''}",
            )
        self.where[task_id] = where

    def add_sweep(self, name: str, where: str) -> list[str]:
        """The list that collects the ids of the sweep ``name``, defined at ``where``."""
        if name in self.sweeps:
            fail(self.source, where, f"another sweep is already named {name!r}")
        group: list[str] = []
        self.sweeps[name] = group
        return group

    def check_names(self) -> None:
        """Refuse a sweep name that is also a task id: ``after`` could not tell them apart."""
        for name in self.sweeps:
            if name in self.where:
                fail(self.source, "", f"sweep name {name!r} is also a task id ({self.where[name]})")

    def prerequisites(self, task_id: str, where: str, refs: list[str]) -> tuple[str, ...]:
        """The ids the ``after`` entries ``refs`` of task ``task_id`` name, without repeats."""
        deps: dict[str, None] = {}
        for ref in refs:
            matched = self._matches.get(ref)
            if matched is None:
                matched = self._matches[ref] = self._lookup(ref)
            if ref not in self.where and ref not in self.sweeps:  # a glob: never the task itself
                matched = [m for m in matched if m != task_id]
            if not matched:
                fail(self.source, f"{where} (task {short(task_id)})", self._unknown(ref))
            deps.update(dict.fromkeys(matched))
        return tuple(deps)

    def check_acyclic(self, tasks: Sequence[Task]) -> None:
        """Refuse a cycle of prerequisites here, naming its places, before any run starts."""
        index = {t.id: i for i, t in enumerate(tasks)}
        waiting = [len(t.after) for t in tasks]  # ``after`` has no repeats by now
        dependents: list[list[int]] = [[] for _ in tasks]
        for i, task in enumerate(tasks):
            for dep in task.after:
                dependents[index[dep]].append(i)
        queue = [i for i, n in enumerate(waiting) if n == 0]
        while queue:
            for j in dependents[queue.pop()]:
                waiting[j] -= 1
                if waiting[j] == 0:
                    queue.append(j)
        stuck = {i for i, n in enumerate(waiting) if n > 0}
        if not stuck:
            return
        # Every stuck task waits on a stuck task: walk back until one repeats.
        node = min(stuck)
        seen: dict[int, int] = {}
        path: list[int] = []
        while node not in seen:
            seen[node] = len(path)
            path.append(node)
            node = next(index[d] for d in tasks[node].after if index[d] in stuck)
        cycle = [*path[seen[node] :], node]
        steps = " -> ".join(f"{tasks[i].id!r} ({self.where[tasks[i].id]})" for i in cycle[:-1])
        fail(
            self.source,
            "",
            f"prerequisites form a cycle: {steps} -> {tasks[cycle[-1]].id!r}; no task of it could "
            "ever start (remove one of these 'after' entries)",
        )

    def _lookup(self, ref: str) -> list[str]:
        if ref in self.where:
            return [ref]
        if ref in self.sweeps:
            return self.sweeps[ref]
        return fnmatch.filter(self.where, ref) if any(c in ref for c in "*?[") else []

    def _unknown(self, ref: str) -> str:
        candidates = list(itertools.islice(itertools.chain(self.sweeps, self.where), 20_000))
        close = difflib.get_close_matches(ref, candidates, n=1)
        maybe = f"; did you mean {close[0]!r}?" if close else ""
        return f"after names {ref!r}, which is no task id, sweep name or glob match here{maybe}"
