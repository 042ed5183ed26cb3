"""Exception types raised by MatEnsemble.

Every message names what is wrong (file, field path, task id) and, where it helps, what to do.
"""

from __future__ import annotations

__all__ = [
    "BackendError",
    "BackendUnavailable",
    "DependencyError",
    "JournalError",
    "LimitExceeded",
    "MatEnsembleError",
    "ResumeMismatch",
    "SpecError",
    "TaskRejected",
]


class MatEnsembleError(Exception):
    """Base class of every error MatEnsemble raises on purpose."""


class SpecError(MatEnsembleError, ValueError):
    """An ensemble file (or a task built from Python) is malformed.

    The message names the file and the field path, e.g. ``ensemble.toml: $.task[3].timeout``.
    ``field`` is the offending field of a ``Task`` or ``Resources`` built from Python (e.g.
    ``"timeout"``, ``"resources.ranks"``), so that a file loader can extend its path with it.
    """

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class LimitExceeded(MatEnsembleError, ValueError):
    """Input larger than a ceiling that protects the driver's memory (``matensemble.limits``).

    Raised before anything is allocated; the message names the limit and the setting that
    raises it.
    """


class TaskRejected(MatEnsembleError):
    """A task was refused at submission: bad id, duplicate id, or it can never fit."""

    def __init__(self, task_id: str, reason: str) -> None:
        super().__init__(f"task {task_id!r} rejected: {reason}")
        self.task_id = task_id
        self.reason = reason


class DependencyError(TaskRejected):
    """A prerequisite is unknown, or the prerequisites form a cycle."""


class JournalError(MatEnsembleError):
    """A run's journal cannot be used to resume it (missing, corrupt, another version/run)."""


class ResumeMismatch(MatEnsembleError):
    """The ensemble given for a resume differs from the one in the journal; says what changed."""


class BackendError(MatEnsembleError):
    """A backend failed as a whole (not one task): it cannot start, connect or continue."""


class BackendUnavailable(BackendError):
    """The backend cannot be used here (no Flux instance, package missing); says how to fix it."""
