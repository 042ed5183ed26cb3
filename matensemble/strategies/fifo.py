"""First in, first out: tasks start in the order they became ready."""

from __future__ import annotations

from typing import Any

from matensemble.model import Task
from matensemble.strategies.base import SubmissionOrder

__all__ = ["FIFO"]


class FIFO(SubmissionOrder):
    """The order in which tasks became ready (a retried task queues again at the back).

    With ``backfill=False`` a task that does not fit blocks all behind it.
    """

    name = "fifo"

    def key(self, task: Task) -> tuple[Any, ...]:
        return ()
