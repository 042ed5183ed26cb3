"""What a completion policy may do to the run it steers: the ``EnsembleControl`` protocol.

Policies see this small interface, never the engine itself, so the strategies package depends
on nothing above it (the engine imports the strategies, not the other way round) and a policy
can be driven by anything that offers these calls. ``Ensemble`` satisfies it structurally.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from matensemble.model import Task, TaskResult, TaskState

__all__ = ["EnsembleControl"]


class EnsembleControl(Protocol):
    """The public calls of a running ensemble that a policy may use from ``on_result``."""

    def submit(self, tasks: Task | Iterable[Task]) -> None:
        """Add tasks; a bad batch raises ``TaskRejected`` and adds nothing."""

    def cancel(self, *task_ids: str) -> None:
        """Cancel open tasks by id (every open task when none is given); dependents are skipped."""

    def reprioritise(self, task_id: str, priority: int) -> None:
        """Change the priority of a task that has not started yet."""

    @property
    def counts(self) -> dict[str, int]:
        """Number of tasks in each state."""

    @property
    def resources(self) -> tuple[int, int, int, int]:
        """``(free_cores, total_cores, free_gpus, total_gpus)``."""

    def state(self, task_id: str) -> TaskState:
        """The current state of a task."""

    def result(self, task_id: str) -> TaskResult | None:
        """The final result of a task, or ``None`` while it is open."""
