"""``TaskRef``: the handle ``ens.call`` returns at once for a call that runs later."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any, Protocol

from matensemble.errors import MatEnsembleError
from matensemble.model import TaskResult, TaskState

__all__ = ["TaskFailed", "TaskRef"]


class _Tracker(Protocol):
    """What a ref asks the ensemble: a task's state and its result once it ended."""

    def state(self, task_id: str) -> TaskState: ...

    def result(self, task_id: str) -> TaskResult | None: ...


class _Layer(Protocol):
    """What a ref needs of the function layer (``calls.FunctionLayer``), without importing it."""

    @property
    def ensemble(self) -> _Tracker: ...

    async def value(self, task_id: str) -> Any: ...


class TaskFailed(MatEnsembleError):
    """A Python call did not succeed: it raised, timed out, was cancelled or skipped.

    ``result`` is the task's ``TaskResult``; for a call that raised, ``remote_type``,
    ``remote_message`` and ``remote_traceback`` describe the exception in the worker (for an
    MPI call, on the rank that raised: ``remote_rank``).
    """

    def __init__(
        self,
        result: TaskResult,
        *,
        remote_type: str | None = None,
        remote_message: str | None = None,
        remote_traceback: str | None = None,
        remote_rank: int | None = None,
    ) -> None:
        if remote_type is not None:
            where = f" on rank {remote_rank}" if remote_rank else ""
            text = f"task {result.id!r} raised {remote_type}: {remote_message}{where}"
            if remote_traceback:
                text += "\n\nRemote traceback:\n" + remote_traceback.rstrip()
        else:
            text = f"task {result.id!r} {result.state.value}: {result.reason or 'no reason given'}"
        super().__init__(text)
        self.result = result
        self.remote_type = remote_type
        self.remote_message = remote_message
        self.remote_traceback = remote_traceback
        self.remote_rank = remote_rank


class TaskRef:
    """A call submitted to an ensemble: its task ``id``, its ``state``, and its value.

    ``await ref`` (or ``await ref.result()``) waits until the call finished and returns its
    value, or raises ``TaskFailed`` (the remote exception's type, message and traceback, or why
    the task timed out, was cancelled or skipped). Passing the ref inside the arguments of
    another call (``ens.call(fit, [ref1, ref2])``) makes a dependency edge; the worker receives
    the value in its place.
    """

    __slots__ = ("_layer", "id")

    def __init__(self, layer: _Layer, task_id: str) -> None:
        self._layer = layer
        self.id = task_id

    @property
    def state(self) -> TaskState:
        """The task's current state (``pending``, ``ready``, ``running``, or a terminal one)."""
        return self._layer.ensemble.state(self.id)

    def done(self) -> bool:
        """Whether the call reached a terminal state (its value or error is known)."""
        return self._layer.ensemble.result(self.id) is not None

    @property
    def task_result(self) -> TaskResult | None:
        """The task's ``TaskResult`` (times, placement, state) once it finished."""
        return self._layer.ensemble.result(self.id)

    async def result(self) -> Any:
        """The call's return value, once it finished.

        Raises:
            TaskFailed: the call raised, timed out, was cancelled or skipped.
            MatEnsembleError: the ensemble stopped before the call finished.
        """
        return await self._layer.value(self.id)

    def __await__(self) -> Generator[Any, None, Any]:
        return self.result().__await__()

    def __repr__(self) -> str:
        try:
            state = self.state.value
        except KeyError:
            state = "unknown"
        return f"TaskRef({self.id!r}, {state})"

    def __reduce__(self) -> Any:
        raise TypeError(
            f"a TaskRef ({self.id!r}) can only be pickled as an argument of ens.call(), where "
            "it becomes a dependency edge"
        )
