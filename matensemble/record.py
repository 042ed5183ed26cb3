"""The engine's mutable run state of one task."""

from __future__ import annotations

import msgspec

from matensemble.model import Placement, Task, TaskResult, TaskState

__all__ = ["Record"]


class Record(msgspec.Struct, eq=False, gc=False):
    """Mutable run state of one task (owned by the engine, never shown to users).

    A run keeps one per task, a million at scale, and the queues and heaps hold tuples that
    end in one. A record refers only to what can never lead back to it (the task, its result,
    its placement: frozen, untracked structs of strings and numbers), so it can never be part
    of a reference cycle, and is not tracked by the garbage collector (``gc=False``): nor are
    then the heap entries that hold it and numbers (the collector untracks a tuple of untracked
    items), which its full collections would otherwise walk again and again. ``eq=False``:
    records compare and hash by identity (they are dict keys in ``NodeDrain``).
    """

    task: Task
    state: TaskState = TaskState.PENDING
    attempts: int = 0
    placement: Placement = ()
    result: TaskResult | None = None
    entry: int = -1  # sequence number of its live entry in the ready heap; -1: not queued
    start: float = 0.0
    cancel_requested: bool = False
    failures: int = 0  # failed or timed-out attempts, across sessions of the run
