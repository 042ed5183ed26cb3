"""The two strategy protocols: the order of submission, and what happens on completion.

Strategies see the engine only through ``EnsembleControl`` (``submit``, ``cancel``,
``reprioritise``, ``counts``, ``resources``, ``state``, ``result``), never through private state,
and never import the engine.
"""

from __future__ import annotations

import abc
from typing import Any

from matensemble.model import Task, TaskResult
from matensemble.strategies.control import EnsembleControl

__all__ = ["CompletionPolicy", "SubmissionOrder"]


class SubmissionOrder(abc.ABC):
    """Ranks ready tasks; the engine starts the lowest ``key`` first.

    Args:
        backfill: when the head task does not fit, start later tasks that fit, but only those
            that do not delay the head's reservation (EASY backfill). Without it the head blocks
            the queue (strict order, kept for comparison).
    """

    name: str = "order"

    def __init__(self, *, backfill: bool = True) -> None:
        self.backfill = backfill

    @abc.abstractmethod
    def key(self, task: Task) -> tuple[Any, ...]:
        """Sort key of a ready task; ties keep submission order."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(backfill={self.backfill})"


class CompletionPolicy:
    """Decides when the producer may start tasks and reacts to each result.

    The default (``Adaptive``) starts a task as soon as it fits and does nothing on results.
    Subclass and override ``on_result`` to steer: it runs on the event loop, once per task that
    reaches a terminal state, and may call ``ensemble.submit``/``cancel``/``reprioritise``.
    It must not block; long work belongs in a coroutine of your own.
    """

    name: str = "completion"

    def may_start(self, running: int) -> bool:
        """May the producer start another task now? ``running`` counts tasks in flight."""
        return True

    def blocked(self) -> None:
        """The producer found nothing more that fits (a batch is complete)."""

    def on_result(self, result: TaskResult, ensemble: EnsembleControl) -> None:
        """React to a terminal result (succeeded, failed, timed out, cancelled or skipped)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
