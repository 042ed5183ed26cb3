"""Highest ``Task.priority`` first."""

from __future__ import annotations

from typing import Any

from matensemble.model import Task
from matensemble.strategies.base import SubmissionOrder

__all__ = ["Priority"]


class Priority(SubmissionOrder):
    """Larger ``priority`` starts earlier; ``Ensemble.reprioritise`` changes it while queued."""

    name = "priority"

    def key(self, task: Task) -> tuple[Any, ...]:
        return (-task.priority,)
