"""The data model: tasks, their resources and results (the events a run emits: ``events``).

Everything here is a frozen ``msgspec.Struct``: cheap to build, validated the same way whether it
comes from Python or from a file, and encodable to JSON lines for the journal. A run keeps a
``Task``, a ``TaskResult`` and its ``Slot``s for every task, a million of them at scale: they
hold only strings, numbers and containers of them, so they can never be part of a reference
cycle, and are not tracked by the garbage collector (``gc=False``), whose full collections
would otherwise walk every one of them again and again.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Sequence
from typing import Any, NoReturn

import msgspec

from matensemble.errors import SpecError
from matensemble.task_fields import (
    as_tuple,
    check_positive,
    check_strings,
    check_utf8,
    validate_task_id,
)

__all__ = [
    "TERMINAL_STATES",
    "Placement",
    "Resources",
    "Slot",
    "Task",
    "TaskResult",
    "TaskState",
]


class TaskState(str, enum.Enum):
    """Where a task is in its life. The last five are terminal."""

    PENDING = "pending"  # waiting for prerequisites (or for a retry's backoff)
    READY = "ready"  # prerequisites met, waiting for resources
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"  # a prerequisite did not succeed

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATES


TERMINAL_STATES = frozenset(
    {
        TaskState.SUCCEEDED,
        TaskState.FAILED,
        TaskState.TIMED_OUT,
        TaskState.CANCELLED,
        TaskState.SKIPPED,
    }
)


class Resources(
    msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, omit_defaults=True
):
    """What one task needs: ``ranks`` processes, each with its cores and GPUs.

    Args:
        ranks: number of processes (MPI ranks, or plain copies when ``mpi`` is false).
        cores_per_rank: CPU cores pinned to each rank.
        gpus_per_rank: GPUs given to each rank.
        nodes: spread the ranks evenly over exactly this many nodes (``None``: wherever they fit).
        exclusive: take whole nodes, whatever the counts above leave free.
        mpi: launch through MPI (``mpiexec`` locally, PMI under Flux).
    """

    ranks: int = 1
    cores_per_rank: int = 1
    gpus_per_rank: int = 0
    nodes: int | None = None
    exclusive: bool = False
    mpi: bool = False

    def __post_init__(self) -> None:
        for name in ("ranks", "cores_per_rank"):
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise SpecError(
                    f"resources.{name} must be an integer >= 1, got {value!r}",
                    field=f"resources.{name}",
                )
        if type(self.gpus_per_rank) is not int or self.gpus_per_rank < 0:
            raise SpecError(
                f"resources.gpus_per_rank must be an integer >= 0, got {self.gpus_per_rank!r}",
                field="resources.gpus_per_rank",
            )
        for name in ("exclusive", "mpi"):
            value = getattr(self, name)
            if type(value) is not bool:
                raise SpecError(
                    f"resources.{name} must be true or false, got {value!r}",
                    field=f"resources.{name}",
                )
        if self.nodes is not None:
            if type(self.nodes) is not int or self.nodes < 1:
                raise SpecError(
                    f"resources.nodes must be an integer >= 1, got {self.nodes!r}",
                    field="resources.nodes",
                )
            if self.ranks % self.nodes:
                raise SpecError(
                    f"resources.ranks ({self.ranks}) must be a multiple of resources.nodes "
                    f"({self.nodes}) so that every node gets the same number of ranks",
                    field="resources.ranks",
                )

    @property
    def cores(self) -> int:
        """Cores over all ranks."""
        return self.ranks * self.cores_per_rank

    @property
    def gpus(self) -> int:
        """GPUs over all ranks."""
        return self.ranks * self.gpus_per_rank


class _EmptyReadOnly(dict[Any, Any]):
    """The one empty ``env``/``tags``/``times`` of every task and result that has none: a
    million tasks would otherwise carry a million empty dicts each (64 bytes apiece). Shared,
    so it refuses to change (``dict(task.env)`` makes a copy that can)."""

    __slots__ = ()

    def _refuse(self, *args: object, **kwargs: object) -> NoReturn:
        raise TypeError(
            "this empty env/tags/times is shared by every task and result without one and "
            "cannot change: build the task or result with its own dict "
            "(msgspec.structs.replace(task, tags={...}))"
        )

    __setitem__ = __delitem__ = __ior__ = _refuse
    clear = pop = popitem = setdefault = update = _refuse


_EMPTY = _EmptyReadOnly()


class Task(
    msgspec.Struct,
    frozen=True,
    kw_only=True,
    forbid_unknown_fields=True,
    omit_defaults=True,
    gc=False,
):
    """One unit of work: an argv command and what it needs.

    The command is executed directly (never through a shell unless ``command`` itself names
    one, e.g. ``["sh", "-c", "..."]``).

    Args:
        id: unique within the ensemble; becomes the task's directory name.
        command: argv list; ``command[0]`` is looked up on ``PATH``.
        resources: ranks, cores, GPUs, nodes (see ``Resources``).
        env: variables added to the task's environment.
        inherit_env: start from the driver's environment (``True``) or from an empty one.
        cwd: working directory; default is the task's own directory in the run directory.
        timeout: seconds before the task is killed and recorded as ``timed_out``.
        retries: how many more attempts after a failure or timeout.
        after: ids of prerequisites; the task starts when all of them succeeded.
        priority: larger runs earlier under the ``Priority`` order.
        estimate: expected runtime in seconds (``LongestFirst``, backfill, walltime checks).
        tags: free-form labels, kept in results and the journal.

    ``env`` and ``tags`` are read-only, like the task: a task without them shares one empty
    dict with every other such task, which raises ``TypeError`` on a change (build a new task
    with ``msgspec.structs.replace``).
    """

    id: str
    command: Sequence[str]
    resources: Resources = Resources()
    env: dict[str, str] = {}
    inherit_env: bool = True
    cwd: str | None = None
    timeout: float | None = None
    retries: int = 0
    after: Sequence[str] = ()
    priority: int = 0
    estimate: float | None = None
    tags: dict[str, str] = {}

    def __post_init__(self) -> None:
        task_id = validate_task_id(self.id)
        # Accept any sequence from Python callers; store tuples so tasks stay immutable.
        command = as_tuple(task_id, "command", self.command, "argv strings")
        if command is not self.command:
            msgspec.structs.force_setattr(self, "command", command)
        after = as_tuple(task_id, "after", self.after, "task ids")
        if after is not self.after:
            msgspec.structs.force_setattr(self, "after", after)
        if not command:
            raise SpecError(f"task {task_id!r}: command must not be empty", field="command")
        if not command[0]:
            raise SpecError(
                f"task {task_id!r}: command[0] (the program) must not be empty", field="command[0]"
            )
        if not isinstance(self.resources, Resources):
            raise SpecError(
                f"task {task_id!r}: resources must be a Resources(...), got "
                f"{type(self.resources).__name__}",
                field="resources",
            )
        check_strings(task_id, "env", self.env)
        for key in self.env:
            if not key or "=" in key or "\0" in key:
                raise SpecError(
                    f"task {task_id!r}: env name {key!r} is not a valid variable name (it must "
                    "be non-empty, without '=' or NUL)",
                    field=f"env[{key!r}]",
                )
        check_strings(task_id, "tags", self.tags)
        if type(self.inherit_env) is not bool:
            raise SpecError(
                f"task {task_id!r}: inherit_env must be true or false, got {self.inherit_env!r}",
                field="inherit_env",
            )
        if self.cwd is not None:
            cwd = self.cwd
            if isinstance(cwd, os.PathLike):
                cwd = os.fspath(cwd)
                msgspec.structs.force_setattr(self, "cwd", cwd)
            if not isinstance(cwd, str) or not cwd or "\0" in cwd:
                raise SpecError(
                    f"task {task_id!r}: cwd must be a non-empty path without NUL, got {cwd!r}",
                    field="cwd",
                )
        check_positive(task_id, "timeout", self.timeout)
        check_positive(task_id, "estimate", self.estimate, allow_zero=True)
        if type(self.retries) is not int or self.retries < 0:
            raise SpecError(
                f"task {task_id!r}: retries must be an integer >= 0, got {self.retries!r}",
                field="retries",
            )
        if type(self.priority) is not int:
            raise SpecError(
                f"task {task_id!r}: priority must be an integer, got {self.priority!r}",
                field="priority",
            )
        if task_id in after:
            raise SpecError(f"task {task_id!r} lists itself as a prerequisite", field="after")
        check_utf8(task_id, command, self.env, self.tags, self.cwd)
        if not self.env and self.env is not _EMPTY:
            msgspec.structs.force_setattr(self, "env", _EMPTY)
        if not self.tags and self.tags is not _EMPTY:
            msgspec.structs.force_setattr(self, "tags", _EMPTY)


class Slot(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """The exact resources granted on one node: core ids and GPU ids."""

    node: str
    cores: tuple[int, ...]
    gpus: tuple[str, ...] = ()


Placement = tuple[Slot, ...]


class TaskResult(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, gc=False):
    """The outcome of a task (its last attempt, for a task that was retried).

    ``returncode`` is the exit status; ``signal`` the signal that killed it, if one did.
    ``reason`` explains every state other than ``succeeded``. Times are seconds since the epoch
    on the backend's clock (virtual for the simulated backend); ``times`` holds what else the
    backend knows (under Flux: ``submit`` and ``alloc``), ``job_id`` its own id for the launch.
    """

    id: str
    state: TaskState
    attempts: int = 0
    returncode: int | None = None
    signal: int | None = None
    reason: str | None = None
    start_time: float | None = None
    end_time: float | None = None
    placement: Placement = ()
    tags: dict[str, str] = {}
    times: dict[str, float] = {}
    job_id: str | None = None

    def __post_init__(self) -> None:
        if not self.times and self.times is not _EMPTY:
            msgspec.structs.force_setattr(self, "times", _EMPTY)

    @property
    def ok(self) -> bool:
        return self.state is TaskState.SUCCEEDED

    @property
    def runtime(self) -> float | None:
        if self.start_time is None or self.end_time is None:
            return None
        return self.end_time - self.start_time
