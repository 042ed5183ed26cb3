"""Exception types raised by MatEnsemble.

Every message names what is wrong (file, field path, task id) and, where it helps, what to do.
"""

from __future__ import annotations

import errno

TYPE_CHECKING = False  # not from typing: a worker of a Python call starts faster

if TYPE_CHECKING:
    from pathlib import Path


__all__ = [
    "BackendError",
    "BackendUnavailable",
    "DependencyError",
    "DiskFull",
    "JournalError",
    "LimitExceeded",
    "MatEnsembleError",
    "ResultUnavailable",
    "ResumeMismatch",
    "RunDirectoryTaken",
    "SerialisationError",
    "SpecError",
    "TaskRejected",
    "UnsafeTaskPath",
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


class DiskFull(MatEnsembleError):
    """A run file could not be written: no space left on the device, or the disk quota is used up.

    The run stops cleanly: the journal ends on its last whole event (replayable), every
    unfinished task stays resumable, and ``matensemble resume`` continues once space is free.
    ``path`` is the file that could not be written.
    """

    def __init__(self, path: Path, error: OSError) -> None:
        self.path = path
        self.run_dir = path.parent
        why = error.strerror or str(error)
        super().__init__(
            f"{path}: {why}; the run was stopped. Free some space, then continue with: "
            f"matensemble resume {self.run_dir}"
        )

    @staticmethod
    def is_full(error: OSError) -> bool:
        """Is ``error`` "no space left" or "quota exceeded"?"""
        return error.errno in (errno.ENOSPC, errno.EDQUOT)


class SerialisationError(MatEnsembleError, TypeError):
    """A Python call's function, arguments or result cannot be serialised.

    The message names the task id and the path of the offending value (e.g. ``args[1]['lock']``).
    """

    def __init__(self, task_id: str, path: str, why: str) -> None:
        super().__init__(f"task {task_id!r}: {path} cannot be serialised: {why}")
        self.task_id = task_id
        self.path = path


class ResultUnavailable(MatEnsembleError):
    """A call's result file is missing, or refused (a link, or outside the run directory)."""


class RunDirectoryTaken(MatEnsembleError):
    """A run directory has a live owner (another driver), or a new run was given a directory
    that holds a run already; the message names the owner (pid, host) or says to resume."""


class UnsafeTaskPath(MatEnsembleError, OSError):
    """A task's directory or output file is not ours to write: a symbolic link (which could lead
    outside the run directory), or not a directory / regular file. The message names the path."""
