"""MatEnsemble: an asyncio, event-driven engine for ensembles of HPC tasks."""

from __future__ import annotations

from matensemble.backends.base import Backend
from matensemble.backends.simulated import SimulatedBackend
from matensemble.engine import Ensemble
from matensemble.errors import (
    BackendError,
    BackendUnavailable,
    DependencyError,
    LimitExceeded,
    MatEnsembleError,
    SpecError,
    TaskRejected,
)
from matensemble.model import Resources, Task, TaskResult, TaskState
from matensemble.summary import RunSummary

__all__ = [
    "Backend",
    "BackendError",
    "BackendUnavailable",
    "DependencyError",
    "Ensemble",
    "FluxBackend",
    "LimitExceeded",
    "LocalBackend",
    "MatEnsembleError",
    "Resources",
    "RunSummary",
    "SimulatedBackend",
    "SpecError",
    "Task",
    "TaskRejected",
    "TaskResult",
    "TaskState",
]

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    if name == "LocalBackend":
        from matensemble.backends.local import LocalBackend

        return LocalBackend
    if name == "FluxBackend":
        from matensemble.backends.flux import FluxBackend

        return FluxBackend
    raise AttributeError(name)
