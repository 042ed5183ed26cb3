"""The function layer of one ensemble: calls become tasks, refs become edges, results values.

It uses only the engine's public API (``submit``, ``state``, ``result``, ``completed``,
``run_dir``). A call is written into its task directory (see ``files``) and submitted as an
ordinary command task running the worker (``python -c "...run()" <task-dir>``, the same as
``python -m matensemble.worker <task-dir>`` without ``runpy``), so it is journaled,
scheduled, retried, timed out, cancelled and resumed like any other task, and command tasks may
depend on it (``after=[ref.id]``) or it on them (``after=[...]``).
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from typing import Any, Protocol

from matensemble.errors import (
    MatEnsembleError,
    ResultUnavailable,
    SerialisationError,
    TaskRejected,
)
from matensemble.functions.files import CallSpec, read_call, read_error, read_value, write_call
from matensemble.functions.refs import TaskFailed, TaskRef
from matensemble.functions.serialisation import (
    describe_function,
    encode_arguments,
    fingerprint,
    unpicklable_path,
)
from matensemble.functions.worker import WORKER_ARGV
from matensemble.model import Resources, Task, TaskResult, TaskState
from matensemble.task_fields import validate_task_id

__all__ = ["AsCompleted", "CallOptions", "EnsembleAPI", "FunctionLayer"]

_NOT_ID = re.compile(r"[^A-Za-z0-9_.+=,@%~-]+")


class EnsembleAPI(Protocol):
    """The part of ``Ensemble`` the function layer uses (its public API)."""

    run_dir: Path

    @property
    def durable(self) -> bool: ...

    def submit(self, tasks: Task | Iterable[Task]) -> None: ...
    def state(self, task_id: str) -> TaskState: ...
    def result(self, task_id: str) -> TaskResult | None: ...
    def completed(self, *, start: int = 0) -> AsyncIterator[TaskResult]: ...


class CallOptions:
    """How a call runs: the ``Task`` fields a call may set, and ``warm``.

    The fields are checked by ``Task`` itself when the call becomes one (with the call's id in
    the message); here only their names and the type of ``resources``.

    Raises:
        TypeError: a name that is not an option of a call, or ``resources`` that is not a
            ``Resources``.
    """

    __slots__ = ("task_fields", "warm")

    def __init__(self, *, warm: bool | None = None, **task_fields: Any) -> None:
        unknown = sorted(set(task_fields) - _CALL_FIELDS)
        if unknown:
            raise TypeError(
                f"unknown option(s) of a call: {', '.join(unknown)} (the options are warm, "
                f"{', '.join(sorted(_CALL_FIELDS))})"
            )
        resources = task_fields.get("resources")
        if resources is not None and not isinstance(resources, Resources):
            raise TypeError(f"resources must be a Resources(...), got {type(resources).__name__}")
        # None stands for "not given" (the Task's default) in the keyword arguments of call().
        self.task_fields: dict[str, Any] = {k: v for k, v in task_fields.items() if v is not None}
        self.warm = warm

    @property
    def resources(self) -> Resources:
        resources: Resources = self.task_fields.get("resources", Resources())
        return resources


# What a call may set of its Task: the rest is the call's own (its id, the worker's command,
# its directory, the environment of the driver).
_CALL_FIELDS = frozenset(Task.__struct_fields__) - {"id", "command", "env", "inherit_env", "cwd"}


class FunctionLayer:
    """Turns calls into tasks for one ensemble and hands back their values."""

    def __init__(self, ensemble: EnsembleAPI) -> None:
        self.ensemble = ensemble
        self._counters: defaultdict[str, int] = defaultdict(int)
        self._functions: dict[int, tuple[Callable[..., Any], str, bytes | None]] = {}
        self._refs: dict[str, TaskRef] = {}
        self._values: dict[str, Any] = {}
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._watcher: asyncio.Task[None] | None = None
        self._seen = 0  # results the watcher has read from the engine (in its order)

    @property
    def run_dir(self) -> Path:
        return Path(os.path.abspath(self.ensemble.run_dir))

    # -- submitting -----------------------------------------------------------------------------

    def call(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        options: CallOptions,
        task_id: str | None = None,
    ) -> TaskRef:
        """Submit ``fn(*args, **kwargs)`` as a task; return its ``TaskRef`` at once.

        Raises:
            SerialisationError: the function or an argument cannot be pickled (names the path).
            TaskRejected: a bad id, an unknown prerequisite, a task that can never fit, or an id
                that is already used by another call (or, on resume, recorded with other
                arguments).
        """
        if not callable(fn):
            raise TypeError(f"call() needs a function, got {type(fn).__name__}")
        name, by_value = self._describe(fn)
        if task_id is None:
            task_id = self._next_id(fn)
        validate_task_id(task_id)
        fmt, data, refs = self._encode(task_id, args, kwargs)
        for ref_id in refs:
            if self._refs.get(ref_id) is None:
                raise TaskRejected(
                    task_id, f"an argument refers to {ref_id!r}, a call of another ensemble"
                )
        print_ = fingerprint(name, fmt, data)
        known = self._known(task_id, print_, name)
        if known is not None:
            return known
        task_dir = self.run_dir / "tasks" / task_id
        if task_dir.is_symlink():
            raise TaskRejected(task_id, f"its directory {task_dir} is a symbolic link")
        task_dir.mkdir(parents=True, exist_ok=True)
        spec = CallSpec(
            function=name,
            by_value=by_value is not None,
            args_format=fmt,
            fingerprint=print_,
            refs=tuple(refs),
            sys_path=_driver_path(),
            mpi=options.resources.mpi,
            durable=self.ensemble.durable,
        )
        write_call(task_dir, spec, data, by_value)
        fields = options.task_fields
        task = Task(
            **{
                **fields,
                "id": task_id,
                "command": (
                    sys.executable,
                    *WORKER_ARGV,
                    str(task_dir),
                    *{None: (), True: ("--warm",), False: ("--cold",)}[options.warm],
                ),
                "after": tuple(dict.fromkeys([*refs, *fields.get("after", ())])),
                "tags": {"function": name, **fields.get("tags", {})},
            }
        )
        self.ensemble.submit(task)
        ref = self._refs[task_id] = TaskRef(self, task_id)
        return ref

    def _describe(self, fn: Callable[..., Any]) -> tuple[str, bytes | None]:
        cached = self._functions.get(id(fn))
        if cached is not None and cached[0] is fn:
            return cached[1], cached[2]
        try:
            name, by_value = describe_function(fn)
        except Exception as exc:
            raise SerialisationError(
                getattr(fn, "__name__", "?"), "the function", f"{type(exc).__name__}: {exc}"
            ) from exc
        self._functions[id(fn)] = (fn, name, by_value)
        return name, by_value

    def _next_id(self, fn: Callable[..., Any]) -> str:
        target = getattr(fn, "__matensemble_function__", fn)
        base = (
            _NOT_ID.sub("_", getattr(target, "__name__", type(fn).__name__)).strip("_.") or "call"
        )
        self._counters[base] += 1
        return f"{base[:150]}-{self._counters[base]}"

    def _encode(
        self, task_id: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[Any, bytes, list[str]]:
        try:
            return encode_arguments(args, kwargs, TaskRef)
        except Exception as exc:
            named = [(f"args[{i}]", a) for i, a in enumerate(args)]
            named += [(f"kwargs[{k!r}]", v) for k, v in kwargs.items()]
            path = "the arguments"
            for label, value in named:
                try:
                    encode_arguments((value,), {}, TaskRef)
                except Exception:
                    path = unpicklable_path(value, label, TaskRef)
                    break
            raise SerialisationError(task_id, path, f"{type(exc).__name__}: {exc}") from exc

    def _known(self, task_id: str, print_: str, name: str) -> TaskRef | None:
        """The ref of an already submitted (or, on resume, recorded) identical call."""
        try:
            self.ensemble.state(task_id)
        except KeyError:
            return None
        recorded = read_call(self.run_dir, task_id)
        if recorded is None:
            raise TaskRejected(task_id, "a task with this id exists and is not a Python call")
        if recorded.fingerprint != print_:
            raise TaskRejected(
                task_id,
                f"this id is recorded for another call ({recorded.function} with other "
                f"arguments; now {name}). A resumed script must make the same calls in the same "
                "order; give a changed call its own id= to run it as a new task",
            )
        ref = self._refs.get(task_id)
        if ref is None:
            ref = self._refs[task_id] = TaskRef(self, task_id)
        return ref

    # -- values ---------------------------------------------------------------------------------

    async def value(self, task_id: str) -> Any:
        if task_id in self._values:
            return self._values[task_id]
        result = self.ensemble.result(task_id)
        if result is None:
            await self._finished(task_id)
            result = self.ensemble.result(task_id)
            assert result is not None
        return self._load(result)

    def _load(self, result: TaskResult) -> Any:
        task_id = result.id
        if result.ok:
            found, value = read_value(self.run_dir, task_id)
            if not found:
                raise ResultUnavailable(
                    f"task {task_id!r} succeeded but left no result in "
                    f"{self.run_dir / 'tasks' / task_id} (is it a Python call? the simulated "
                    "backend does not run calls)"
                )
            self._values[task_id] = value
            return value
        error = read_error(self.run_dir, task_id) if result.state is TaskState.FAILED else None
        if error is not None and error.attempt in (0, result.attempts):
            raise TaskFailed(
                result,
                remote_type=error.type,
                remote_message=error.message,
                remote_traceback=error.traceback,
                remote_rank=error.rank,
            )
        raise TaskFailed(result)

    async def _finished(self, task_id: str) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(task_id, []).append(future)
        if self._watcher is None:
            self._watcher = asyncio.ensure_future(self._watch())
        await future

    async def _watch(self) -> None:
        """Resolve the waiters from the engine's stream of results (one reader for all refs)."""
        error: BaseException | None = None
        # Results come in the same order to every reader: go on after the last one seen, so
        # that a run of N awaited calls costs O(N), not O(N^2).
        stream = self.ensemble.completed(start=self._seen)
        try:
            async for result in stream:
                self._seen += 1
                for future in self._waiters.pop(result.id, ()):
                    if not future.done():
                        future.set_result(None)
                if not self._waiters:
                    break
        except BaseException as exc:
            error = exc
        finally:
            self._watcher = None
            await stream.aclose()  # type: ignore[attr-defined]
            waiters, self._waiters = self._waiters, {}
            for task_id, futures in waiters.items():
                done = self.ensemble.result(task_id) is not None
                for future in futures:
                    if future.done():
                        continue
                    if done:
                        future.set_result(None)
                    elif isinstance(error, asyncio.CancelledError):
                        future.cancel()
                    else:
                        future.set_exception(
                            error
                            or MatEnsembleError(f"the ensemble stopped before {task_id!r} finished")
                        )

    def as_completed(self, refs: Iterable[TaskRef]) -> AsCompleted:
        return AsCompleted(self, refs)


class AsCompleted:
    """``async for ref in ens.as_completed(refs)``: each ref once its call finished, in the
    order they finish. ``add(ref)`` adds calls while iterating (a steering loop)."""

    def __init__(self, layer: FunctionLayer, refs: Iterable[TaskRef]) -> None:
        self._layer = layer
        self._pending: dict[str, TaskRef] = {}
        for ref in refs:
            self.add(ref)

    def add(self, ref: TaskRef) -> None:
        if not isinstance(ref, TaskRef):
            raise TypeError(f"as_completed() takes TaskRefs, got {type(ref).__name__}")
        self._pending[ref.id] = ref

    def __len__(self) -> int:
        return len(self._pending)

    async def __aiter__(self) -> AsyncIterator[TaskRef]:
        if not self._pending:
            return
        stream = self._layer.ensemble.completed()
        try:
            async for result in stream:
                ref = self._pending.pop(result.id, None)
                if ref is not None:
                    yield ref
                    if not self._pending:
                        return
        finally:
            await stream.aclose()  # type: ignore[attr-defined]
        left = ", ".join(repr(i) for i in list(self._pending)[:5])
        raise MatEnsembleError(f"the ensemble stopped before these calls finished: {left}")


def _driver_path() -> tuple[str, ...]:
    """The driver's ``sys.path[0]`` (its script's directory, or the working directory)."""
    first = sys.path[0] if sys.path else ""
    first = os.path.abspath(first or os.getcwd())
    return (first,) if os.path.isdir(first) else ()
