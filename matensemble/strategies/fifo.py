"""First in, first out: tasks start in the order they became known."""

from __future__ import annotations

from typing import Any

from matensemble.model import Task
from matensemble.strategies.base import SubmissionOrder

__all__ = ["FIFO"]


class FIFO(SubmissionOrder):
    """Submission order. With ``backfill=False`` a task that does not fit blocks all behind it."""

    name = "fifo"

    def key(self, task: Task) -> tuple[Any, ...]:
        return ()
