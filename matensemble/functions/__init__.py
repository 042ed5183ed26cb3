"""Python functions as tasks: ``ens.call``, ``TaskRef``, ``@task``, and the worker.

See ``docs/functions.md``. The worker (``python -m matensemble.worker``) imports only
``files``, ``serialisation`` and ``worker`` from here, so a call starts quickly.
"""

from __future__ import annotations

TYPE_CHECKING = False  # not from typing: a worker of a Python call starts faster

if TYPE_CHECKING:
    from matensemble.functions.front import FunctionTask, task
    from matensemble.functions.refs import TaskRef

__all__ = ["FunctionTask", "TaskRef", "task"]


def __getattr__(name: str) -> object:
    if name in ("FunctionTask", "task"):
        from matensemble.functions import front

        return getattr(front, name)
    if name == "TaskRef":
        from matensemble.functions.refs import TaskRef

        return TaskRef
    raise AttributeError(name)
