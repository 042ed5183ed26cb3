"""Longest runtime estimate first: the classic way to shorten the makespan."""

from __future__ import annotations

from typing import Any

from matensemble.model import Task
from matensemble.strategies.base import SubmissionOrder

__all__ = ["LongestFirst"]


class LongestFirst(SubmissionOrder):
    """Larger ``estimate x cores`` first, so long tasks do not start last and stretch the run.

    Tasks without an estimate go after those with one, in submission order.
    """

    name = "longest-first"

    def key(self, task: Task) -> tuple[Any, ...]:
        if task.estimate is None:
            return (1, 0.0)
        return (0, -task.estimate * task.resources.cores)
