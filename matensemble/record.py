"""The engine's mutable run state of one task."""

from __future__ import annotations

from matensemble.model import Placement, Task, TaskResult, TaskState

__all__ = ["Record"]


class Record:
    """Mutable run state of one task (owned by the engine, never shown to users)."""

    __slots__ = (
        "attempts",
        "cancel_requested",
        "entry",
        "failures",
        "placement",
        "result",
        "start",
        "state",
        "task",
    )

    def __init__(self, task: Task) -> None:
        self.task = task
        self.state = TaskState.PENDING
        self.attempts = 0
        self.placement: Placement = ()
        self.result: TaskResult | None = None
        self.entry: int = -1  # sequence number of its live entry in the ready heap; -1: not queued
        self.start = 0.0
        self.cancel_requested = False
        self.failures = 0  # failed or timed-out attempts, across sessions of the run
