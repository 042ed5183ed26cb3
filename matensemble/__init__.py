"""MatEnsemble: an asyncio, event-driven engine for ensembles of HPC tasks.

The public names are imported on first use, so that a process that needs only a part of the
package (the worker of a Python call) starts quickly.
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False  # not from typing: a worker of a Python call starts faster

if TYPE_CHECKING:
    from matensemble.backends.base import Backend
    from matensemble.backends.flux import FluxBackend
    from matensemble.backends.local import LocalBackend
    from matensemble.backends.simulated import SimulatedBackend
    from matensemble.engine import Ensemble
    from matensemble.errors import (
        BackendError,
        BackendUnavailable,
        DependencyError,
        DiskFull,
        LimitExceeded,
        MatEnsembleError,
        SerialisationError,
        SpecError,
        TaskRejected,
    )
    from matensemble.functions.front import task
    from matensemble.functions.refs import TaskFailed, TaskRef
    from matensemble.functions.warm import WarmLocalBackend
    from matensemble.model import Resources, Task, TaskResult, TaskState
    from matensemble.summary import RunFailed, RunSummary

__all__ = [
    "Backend",
    "BackendError",
    "BackendUnavailable",
    "DependencyError",
    "DiskFull",
    "Ensemble",
    "FluxBackend",
    "LimitExceeded",
    "LocalBackend",
    "MatEnsembleError",
    "Resources",
    "RunFailed",
    "RunSummary",
    "SerialisationError",
    "SimulatedBackend",
    "SpecError",
    "Task",
    "TaskFailed",
    "TaskRef",
    "TaskRejected",
    "TaskResult",
    "TaskState",
    "WarmLocalBackend",
    "task",
]

__version__ = "0.1.0"

_WHERE = {
    "Backend": "matensemble.backends.base",
    "FluxBackend": "matensemble.backends.flux",
    "LocalBackend": "matensemble.backends.local",
    "SimulatedBackend": "matensemble.backends.simulated",
    "Ensemble": "matensemble.engine",
    **dict.fromkeys(("RunFailed", "RunSummary"), "matensemble.summary"),
    **dict.fromkeys(("TaskFailed", "TaskRef"), "matensemble.functions.refs"),
    "task": "matensemble.functions.front",
    "WarmLocalBackend": "matensemble.functions.warm",
    **dict.fromkeys(("Resources", "Task", "TaskResult", "TaskState"), "matensemble.model"),
    **dict.fromkeys(
        (
            "BackendError",
            "BackendUnavailable",
            "DependencyError",
            "DiskFull",
            "LimitExceeded",
            "MatEnsembleError",
            "SerialisationError",
            "SpecError",
            "TaskRejected",
        ),
        "matensemble.errors",
    ),
}


def __getattr__(name: str) -> object:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'matensemble' has no attribute {name!r}")
    __import__(module)  # not importlib: a worker of a Python call starts faster without it
    value = getattr(sys.modules[module], name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
