"""The user's side: ``ens.call``, ``@ens.function``, ``@task`` and ``ens.as_completed``.

``FunctionCalls`` is mixed into ``Ensemble``; it keeps one ``FunctionLayer`` per ensemble and
marks the ensemble in use (a context variable, set by ``async with Ensemble(...)``), which is
where calls of a module-level ``@task`` function go.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Generic, ParamSpec, TypeVar, overload

from matensemble.errors import MatEnsembleError
from matensemble.functions.calls import AsCompleted, CallOptions, EnsembleAPI, FunctionLayer
from matensemble.functions.refs import TaskRef
from matensemble.model import Resources

__all__ = ["FunctionCalls", "FunctionTask", "current_ensemble", "task"]

P = ParamSpec("P")
R = TypeVar("R")

_current: contextvars.ContextVar[FunctionCalls | None] = contextvars.ContextVar(
    "matensemble_current_ensemble", default=None
)


def current_ensemble() -> FunctionCalls | None:
    """The ensemble whose ``async with`` block the caller is in, or ``None``."""
    return _current.get()


class FunctionCalls:
    """Python functions as tasks (mixed into ``Ensemble``)."""

    _function_layer: FunctionLayer | None = None
    _context_tokens: list[contextvars.Token[FunctionCalls | None]] | None = None

    def _functions(self) -> FunctionLayer:
        if not getattr(self, "_started", True):
            raise MatEnsembleError(
                "call() needs a started ensemble: call inside `async with Ensemble(...) as ens:`"
            )
        if self._function_layer is None:
            api: EnsembleAPI = self  # type: ignore[assignment]  # Ensemble satisfies it
            self._function_layer = FunctionLayer(api)
        return self._function_layer

    def _enter_context(self) -> None:
        if self._context_tokens is None:
            self._context_tokens = []
        self._context_tokens.append(_current.set(self))

    def _leave_context(self) -> None:
        if self._context_tokens:
            token = self._context_tokens.pop()
            with contextlib.suppress(ValueError):  # left in another task's context: no undo
                _current.reset(token)

    def call(
        self,
        fn: Callable[..., Any],
        /,
        *args: Any,
        resources: Resources | None = None,
        timeout: float | None = None,
        id: str | None = None,
        after: Sequence[str] = (),
        retries: int = 0,
        priority: int = 0,
        estimate: float | None = None,
        tags: dict[str, str] | None = None,
        warm: bool | None = None,
        **kwargs: Any,
    ) -> TaskRef:
        """Run ``fn(*args, **kwargs)`` as a task; return its ``TaskRef`` at once.

        A ``TaskRef`` anywhere inside the arguments (lists, dicts, tuples, dataclasses) makes
        the call wait for that call and receive its value. The keyword arguments above set how
        the call runs (as for ``Task``; ``warm`` picks a warm worker of a ``WarmLocalBackend``,
        or a new interpreter); everything else goes to ``fn``. The id is the
        function's name and a counter (``fit-1``, ``fit-2``) unless ``id`` is given.

        Raises:
            SerialisationError: the function or an argument cannot be pickled (names the path).
            TaskRejected: a bad or reused id, an unknown prerequisite, a call that can never fit.
        """
        options = CallOptions(
            resources=resources,
            timeout=timeout,
            after=after,
            retries=retries,
            priority=priority,
            estimate=estimate,
            tags=tags,
            warm=warm,
        )
        return self._functions().call(fn, args, kwargs, options, id)

    @overload
    def function(self, fn: Callable[P, R], /) -> FunctionTask[P, R]: ...
    @overload
    def function(self, /, **options: Any) -> Callable[[Callable[P, R]], FunctionTask[P, R]]: ...
    def function(
        self, fn: Callable[P, R] | None = None, /, **options: Any
    ) -> FunctionTask[P, R] | Callable[[Callable[P, R]], FunctionTask[P, R]]:
        """Decorate a function so that calling it submits it to this ensemble.

        ``@ens.function(resources=Resources(ranks=2, mpi=True), timeout=60)``; the options are
        those of ``call`` (except ``id``).
        """
        return _decorate(fn, options, self)

    def as_completed(self, refs: Iterable[TaskRef] = ()) -> AsCompleted:
        """``async for ref in ens.as_completed(refs)``: the refs in the order their calls finish.

        The returned object's ``add(ref)`` adds calls while iterating, so that a steering loop
        can refill freed slots at once. It raises ``MatEnsembleError`` if the ensemble stops
        before every call finished.
        """
        return self._functions().as_completed(refs)


class FunctionTask(Generic[P, R]):
    """A function whose calls are submitted as tasks (see ``task`` and ``Ensemble.function``)."""

    def __init__(
        self, fn: Callable[P, R], options: dict[str, Any], ensemble: FunctionCalls | None
    ) -> None:
        if "id" in options:
            raise TypeError("a decorated function cannot fix one id for all its calls")
        self.__matensemble_function__ = fn
        self._options = CallOptions(**options)
        self._ensemble = ensemble
        functools.update_wrapper(self, fn)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> TaskRef:
        ens = self._ensemble or _current.get()
        if ens is None:
            name = getattr(self.__matensemble_function__, "__qualname__", "function")
            raise MatEnsembleError(
                f"{name}() is a @task: call it inside `async with Ensemble(...)` (or call the "
                f"plain function as {name}.__matensemble_function__(...))"
            )
        # Straight to the layer: every keyword argument of the call belongs to the function.
        return ens._functions().call(self.__matensemble_function__, args, kwargs, self._options)


@overload
def task(fn: Callable[P, R], /) -> FunctionTask[P, R]: ...
@overload
def task(**options: Any) -> Callable[[Callable[P, R]], FunctionTask[P, R]]: ...
def task(
    fn: Callable[P, R] | None = None, /, **options: Any
) -> FunctionTask[P, R] | Callable[[Callable[P, R]], FunctionTask[P, R]]:
    """Decorate a module-level function: each call runs as a task of the ensemble in use.

    ``@task`` or ``@task(resources=Resources(ranks=2, mpi=True), timeout=60)``; calls return a
    ``TaskRef`` and go to the ensemble of the enclosing ``async with Ensemble(...)``.
    """
    return _decorate(fn, options, None)


def _decorate(
    fn: Callable[P, R] | None, options: dict[str, Any], ensemble: FunctionCalls | None
) -> FunctionTask[P, R] | Callable[[Callable[P, R]], FunctionTask[P, R]]:
    if fn is not None:
        return FunctionTask(fn, options, ensemble)

    def decorate(inner: Callable[P, R]) -> FunctionTask[P, R]:
        return FunctionTask(inner, options, ensemble)

    return decorate
