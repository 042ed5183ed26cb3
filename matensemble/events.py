"""The events a run emits: the journal writes them as JSON lines, observers display them.

Each is a tagged, frozen ``msgspec.Struct``, so one decoder reads any journal line back.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from matensemble.model import Placement, Task, TaskResult

__all__ = [
    "Event",
    "RunFinished",
    "RunStarted",
    "TaskAdded",
    "TaskFinished",
    "TaskStarted",
    "TaskSubmitted",
    "TaskWithdrawn",
]


class RunStarted(msgspec.Struct, frozen=True, tag="run_started"):
    t: float
    run_id: str
    backend: str  # the backend's kind (``Backend.name``): a resume refuses another kind
    cores: int
    gpus: int
    nodes: int
    version: int = 1
    simulated: bool = False  # a virtual clock: nothing really ran, results are not real


class TaskAdded(msgspec.Struct, frozen=True, tag="task_added"):
    t: float
    task: Task


class TaskStarted(msgspec.Struct, frozen=True, tag="task_started"):
    t: float
    id: str
    attempt: int
    placement: Placement


class TaskSubmitted(msgspec.Struct, frozen=True, tag="task_submitted"):
    """The backend's own id for a launch (a Flux job id), so a resume can find it again."""

    t: float
    id: str
    attempt: int
    job_id: str


class TaskFinished(msgspec.Struct, frozen=True, tag="task_finished", omit_defaults=True):
    """A terminal result, or an attempt that failed and will be retried (``retry_in`` set).

    ``interrupted`` marks a task cancelled because the run was stopped (signal, walltime,
    error), not by the user: ``resume`` runs it again.
    """

    t: float
    result: TaskResult
    retry_in: float | None = None
    interrupted: bool = False


class TaskWithdrawn(msgspec.Struct, frozen=True, tag="task_withdrawn"):
    """A launch queued ahead was taken back before it started (``matensemble.queue_ahead``):
    the task holds nothing and is ready again; its next ``task_started`` has this attempt."""

    t: float
    id: str
    attempt: int


class RunFinished(msgspec.Struct, frozen=True, tag="run_finished"):
    t: float
    counts: dict[str, int]
    reason: Literal["completed", "interrupted", "cancelled", "error"] = "completed"


Event = (
    RunStarted
    | TaskAdded
    | TaskStarted
    | TaskSubmitted
    | TaskWithdrawn
    | TaskFinished
    | RunFinished
)
