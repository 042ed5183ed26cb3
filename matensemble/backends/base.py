"""The backend protocol: the only thing the engine knows about where tasks run.

A backend is driven from the event loop thread, in this order:

1. ``await backend.open(sink, task_group)`` returns the inventory (nodes with core and GPU ids),
   read once. ``sink`` is a plain callable the backend calls, on the event loop thread, with one
   ``Outcome`` per launch. ``task_group`` belongs to the engine: a backend that needs a coroutine
   per task (subprocess waits) starts it there, so cancelling the engine cancels it too.
2. ``backend.launch(launch)`` starts one attempt of one task on the exact placement the engine
   allocated. It must not block; it must not raise for a per-task problem (a missing executable
   is a ``failed`` ``Outcome``, reported through ``sink``).
3. ``backend.cancel(key)`` asks for one launch to be stopped; its ``Outcome`` follows.
4. ``await backend.close()`` stops everything still running and returns when each launch has
   reported its ``Outcome`` (``cancelled``). The engine calls it once, shielded from
   cancellation, also after errors.

Every launch gets exactly one ``Outcome``, whatever happens. Conventions every backend keeps:
a process killed by a signal has ``returncode=None`` and ``signal`` set; only exit code 0 is
success; ``sink`` may call ``launch()`` again before it returns (the engine does not, but a
backend must not break if it does). If ``launch()`` raises anyway, the engine fails that one
task with the exception as the reason and goes on.
"""

from __future__ import annotations

import abc
import asyncio
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import msgspec
from anyio.abc import TaskGroup

from matensemble.model import Placement, Resources, Task, TaskState
from matensemble.resources import NodeSpec

__all__ = [
    "Backend",
    "Launch",
    "LaunchKey",
    "Outcome",
    "Reporter",
    "Sink",
    "TaskDirPaths",
    "task_environment",
    "task_variables",
]

LaunchKey = tuple[str, int]
"""(task id, attempt number): names one launch."""


class Launch(msgspec.Struct, frozen=True, kw_only=True):
    """One attempt of one task, placed on exact resources by the engine.

    ``tasks_dir`` is the run's ``tasks/`` directory; the task's own directory, ``task_dir``, is
    built from it when a backend asks (the simulated backend never does: a million paths made
    for nothing cost seconds).
    """

    task: Task
    attempt: int
    placement: Placement
    tasks_dir: Path
    run_id: str

    @property
    def key(self) -> LaunchKey:
        return (self.task.id, self.attempt)

    @property
    def task_dir(self) -> Path:
        """The task's own directory, ``tasks_dir / task.id``: its outputs and default cwd."""
        return self.tasks_dir / self.task.id

    @property
    def stdout(self) -> Path:
        return self.task_dir / "stdout"

    @property
    def stderr(self) -> Path:
        return self.task_dir / "stderr"


class Outcome(msgspec.Struct, frozen=True, kw_only=True):
    """What happened to one launch. ``state`` is one of the four states a launch can end in.

    ``placement`` is what actually ran (a backend such as Flux may report a different node
    than the engine accounted, or more detail); empty means "as launched".
    """

    key: LaunchKey
    state: TaskState  # SUCCEEDED, FAILED, TIMED_OUT or CANCELLED
    returncode: int | None = None
    signal: int | None = None
    reason: str | None = None
    start_time: float | None = None
    end_time: float | None = None
    placement: Placement = ()
    times: dict[str, float] = {}  # other moments the backend knows, e.g. submit, alloc
    job_id: str | None = None  # the backend's own name for the launch (a Flux job id)
    withdrawn: bool = False  # taken back by ``Backend.withdraw`` before it started


Sink = Callable[[Outcome], None]


class Reporter:
    """Hands a backend's outcomes to the engine's sink, and knows when none is outstanding.

    ``soon`` reports from a fresh event-loop callback, so that a backend never re-enters the
    engine from inside its own ``launch()``; ``wait_drained`` returns once ``in_flight()``
    (the backend's count of launches still running) is zero and nothing sent with ``soon`` is
    left: what ``close()`` waits for.
    """

    def __init__(
        self, sink: Sink, loop: asyncio.AbstractEventLoop, in_flight: Callable[[], int]
    ) -> None:
        self._sink = sink
        self._loop = loop
        self._in_flight = in_flight
        self._pending = 0  # outcomes scheduled with soon(), not yet reported
        self._drained = asyncio.Event()

    def now(self, outcome: Outcome) -> None:
        """Report at once (the launch must already be out of the backend's in-flight count)."""
        try:
            self._sink(outcome)
        finally:
            self.check()

    def soon(self, outcome: Outcome) -> None:
        """Report on the next turn of the event loop."""
        self._pending += 1
        self._loop.call_soon(self._later, outcome)

    def _later(self, outcome: Outcome) -> None:
        self._pending -= 1
        self.now(outcome)

    def check(self) -> None:
        """Wake ``wait_drained`` if nothing is outstanding (after the in-flight count fell)."""
        if not self._pending and not self._in_flight():
            self._drained.set()

    async def wait_drained(self) -> None:
        """Return once every launch has reported its outcome."""
        while self._pending or self._in_flight():
            self._drained.clear()
            await self._drained.wait()


class TaskDirPaths:
    """Each launch's task directory as an absolute string, for a backend's launch path.

    The run's ``tasks/`` directory is made absolute once (the engine hands every launch the same
    one), not a ``Path`` and an ``abspath`` per launch, which cost the event loop several
    microseconds.
    """

    __slots__ = ("_prefix", "_tasks_dir")

    def __init__(self) -> None:
        self._tasks_dir: Path | None = None  # the last launch's, and its absolute path + "/"
        self._prefix = ""

    def __call__(self, launch: Launch) -> str:
        tasks_dir = launch.tasks_dir
        if tasks_dir is not self._tasks_dir:
            self._tasks_dir = tasks_dir
            self._prefix = os.path.join(os.path.abspath(tasks_dir), "")
        return self._prefix + launch.task.id


def task_environment(
    launch: Launch, base: Mapping[str, str], task_dir: str | None = None
) -> dict[str, str]:
    """The environment every backend gives a launch (before its own variables, e.g. GPUs).

    ``base`` (the driver's environment, taken once) when the task inherits it, then
    ``task_variables(launch, task_dir)``.
    """
    env = dict(base) if launch.task.inherit_env else {}
    env.update(task_variables(launch, task_dir))
    return env


def task_variables(launch: Launch, task_dir: str | None = None) -> dict[str, str]:
    """What a launch's environment sets over the driver's: the task's ``env``, then
    ``MATENSEMBLE_TASK_ID``, ``_ATTEMPT``, ``_RUN_ID`` and ``_TASK_DIR`` (``task_dir``, the
    absolute task directory, where the caller has it already), and ``OMP_NUM_THREADS`` = cores
    per rank unless the task's own ``env`` sets it (the driver's value was meant for the
    driver)."""
    task = launch.task
    env = dict(task.env)
    env["MATENSEMBLE_TASK_ID"] = task.id
    env["MATENSEMBLE_ATTEMPT"] = str(launch.attempt)
    env["MATENSEMBLE_RUN_ID"] = launch.run_id
    env["MATENSEMBLE_TASK_DIR"] = task_dir or os.path.abspath(launch.task_dir)
    if "OMP_NUM_THREADS" not in task.env:
        env["OMP_NUM_THREADS"] = str(task.resources.cores_per_rank)
    return env


class Backend(abc.ABC):
    """Runs launches on some resources and reports one ``Outcome`` per launch."""

    name: str = "backend"

    def now(self) -> float:
        """Seconds since the epoch on this backend's clock (virtual for simulation)."""
        return time.time()

    @abc.abstractmethod
    async def open(self, sink: Sink, task_group: TaskGroup) -> Sequence[NodeSpec]:
        """Connect, read the inventory once, and remember where to report outcomes."""

    @abc.abstractmethod
    def launch(self, launch: Launch) -> None:
        """Start one launch; never blocks, never raises for a per-task problem."""

    @abc.abstractmethod
    def cancel(self, key: LaunchKey) -> None:
        """Ask for one running launch to stop; a no-op if it already ended."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Cancel everything still running and wait for each launch's outcome."""

    queue_ahead: bool = False
    """True when the backend holds launches in a queue of its own and starts each on its
    placement as soon as the launches before it there have ended (Flux): the engine then books
    each node's next tasks behind the running ones and launches them early (see
    ``matensemble.queue_ahead``)."""

    queue_ahead_below: float = math.inf
    """With ``queue_ahead``: book only while the tasks finishing run shorter than this many
    seconds on average (``inf``: always; see ``matensemble.queue_ahead``)."""

    queue_ahead_same_ids: bool = False
    """With ``queue_ahead``: True when the backend starts a queued launch on exactly the ids
    of its placement (the local backend pins them), so a booked task moves in on those ids."""

    queue_ahead_depth: int = 1
    """With ``queue_ahead_same_ids``: how many launches the backend accepts on a core ahead of
    the one running there. Launches on a core start there in the order they arrived (per-core
    first in, first out): a queued launch starts when none of its cores is held and it is the
    earliest launch still waiting for each of them; one that ends before it started (withdrawn,
    cancelled, refused) lets the next ones on its cores go."""

    can_withdraw: bool = False
    """With ``queue_ahead``: True when ``withdraw`` can take back a queued launch that has not
    started, with no race against its start (the engine then moves booked tasks to resources
    that stand idle, see ``matensemble.queue_ahead``)."""

    def withdraw(self, key: LaunchKey) -> None:
        """Take back a queued launch that has not started yet: it never starts, and its
        ``Outcome`` (``cancelled``, ``withdrawn=True``) follows. One that has started, or
        starts before the request reaches whoever starts it, runs on and reports as usual.
        Only called where ``can_withdraw``; a no-op for a launch that already ended."""
        raise NotImplementedError(f"the {self.name} backend cannot withdraw a launch")

    virtual_clock: bool = False
    """True when ``now()`` is not wall-clock time (the engine then sets no real timers)."""

    def call_later(self, delay: float, callback: Callable[[], None]) -> None:
        """Call ``callback`` on the event loop thread ``delay`` seconds later on this backend's
        clock (a retry's backoff). A backend with a virtual clock must override it, so that
        the wait is virtual too and counts in the makespan."""
        asyncio.get_running_loop().call_later(delay, callback)

    job_ids: Callable[[LaunchKey, str], None] | None = None
    """Set by the engine: call it with a launch's key and the backend's own id for it (a Flux
    job id) as soon as that is known, so the journal can find the job again after a crash."""

    async def adopt(self, launches: Sequence[tuple[Launch, str]]) -> set[LaunchKey]:
        """Hook for ``resume``: take over launches of a crashed session that still run.

        ``launches`` pairs each launch (as the crashed driver made it) with its job id. Return
        the keys taken over: each must later get its ``Outcome`` like any launch. The default
        takes over nothing (the engine then runs those tasks again).
        """
        return set()

    async def recover(self, run_id: str, keys: Sequence[LaunchKey]) -> None:  # noqa: B027
        """Hook for ``resume``: launches of an earlier session of ``run_id`` that may still run.

        Called once, after ``open()``, with the launches whose end the journal does not know.
        A backend should make sure none of them still holds resources (the engine runs them
        again). The default does nothing.
        """

    def kill(self) -> None:  # noqa: B027 - optional hook, deliberately empty by default
        """Kill everything still running at once, without waiting (the driver exits next)."""

    def deadline(self) -> float | None:
        """When the allocation ends (seconds since the epoch), if the backend knows it."""
        return None

    def why_never_fits(self, resources: Resources) -> str | None:
        """Hook: why a task needing ``resources`` can never run here although the inventory
        holds enough (e.g. Flux partitions: a job runs in one instance); ``None`` if it can.
        Asked once per shape at submission, so such a task is rejected before the run."""
        return None

    def idle(self) -> None:  # noqa: B027 - optional hook, deliberately empty by default
        """Hook: the engine has nothing more to start until some launch ends.

        Real backends ignore it; the simulated backend advances its virtual clock here.
        """
