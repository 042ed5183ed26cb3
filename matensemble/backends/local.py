"""The local backend: every launch is a group of real processes on this machine.

The event loop thread plans a launch and opens its output files (a worker does, where the
file system is slow: see ``local_spawner``); a worker thread starts its processes
(``local_spawner``: one ``vfork``/``exec`` each, without a ``preexec_fn``), pinned by the
worker's own CPU mask, which a child inherits, and hands them back to the loop.

Waiting needs no thread, no coroutine and no polling: a ``pidfd`` turns readable when its
process exits, and every pidfd sits in one ``epoll`` set the event loop watches
(``local_exits``). Timeouts and the TERM-then-KILL escalation are ``loop.call_later`` handles
(``local_stopping``). So the engine's task group is not needed here.

Each process runs in its own session, so ``killpg`` reaches its whole tree, and Ctrl-C at the
terminal reaches only the driver, which cancels tasks itself. When a leader exits, whatever it
left running in its group is killed before the leader is reaped (a group id cannot be reused
while its leader is an unreaped zombie). A child that starts its own session (a daemon) escapes.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
from collections.abc import Sequence

from anyio.abc import TaskGroup

from matensemble.backends.base import Backend, Launch, LaunchKey, Outcome, Reporter, Sink
from matensemble.backends.local_ahead import QueuedLaunches
from matensemble.backends.local_exits import ExitWatch
from matensemble.backends.local_failures import LaunchError, describe_exit, open_outputs
from matensemble.backends.local_helpers import QUEUE_AHEAD_DEPTH, Helpers, cores_per_helper_for
from matensemble.backends.local_inventory import (
    check_platform,
    detect_gpus,
    kill_leftovers,
    select_cores,
    select_gpus,
)
from matensemble.backends.local_plan import LaunchPlanner, find_mpiexec
from matensemble.backends.local_run import Run, exit_seen, is_stopping
from matensemble.backends.local_spawner import (
    OPEN_INLINE_BELOW,
    InlineWhileQuick,
    Spawners,
    Started,
)
from matensemble.backends.local_stopping import Stopper
from matensemble.backends.task_files import TaskOutputs
from matensemble.errors import BackendError, BackendUnavailable
from matensemble.model import TaskState
from matensemble.queue_ahead import queue_ahead_setting
from matensemble.resources import NodeSpec

__all__ = ["LocalBackend"]


class LocalBackend(Backend):
    """Run tasks as subprocesses on this machine, pinned to the cores and GPUs they were given.

    Args:
        cores: ``None`` for every core this process may run on (``os.sched_getaffinity``), an
            int N for the first N of those, or the exact core ids to use.
        gpus: ``None`` to detect (``CUDA_VISIBLE_DEVICES``, then ``ROCR_VISIBLE_DEVICES`` and
            ``HIP_VISIBLE_DEVICES``, then ``nvidia-smi -L``), an int N for ids ``"0"``..N-1, or
            the exact ids.
        gpu_variable: the variable that carries a task's GPU ids; default: the one the ids were
            detected from, else ``CUDA_VISIBLE_DEVICES``. A task given no GPUs sees it set to the
            empty string when the node has GPUs or the driver's environment has the variable
            (e.g. ``gpus=0`` on a GPU node), so it cannot take a GPU that is not its own.
        mpiexec: the launcher for ``mpi`` tasks; default: ``mpiexec`` on ``PATH``, else next to
            the running Python (where the ``mpich`` wheel installs it).
        kill_grace: seconds from SIGTERM to SIGKILL when a launch is stopped.
        node_name: the node's name in the inventory; default: the host name.
        queue_ahead: launch each core's next task while the one before it still runs there,
            started the moment that one exits (see ``local_ahead``); ``"auto"`` (the
            default): while the tasks finishing run shorter than ``AUTO_BELOW`` (0.5) seconds
            on average, where the driver's round trip between two tasks of a core costs most,
            and not before a task has finished (see ``matensemble.queue_ahead``); ``False``:
            never.
        spawners: ``"processes"`` (the default: a helper process per core, or per group of
            cores, starts, waits for and reaps them: ``local_helpers``; three launches may be
            queued ahead on a core, ``Backend.queue_ahead_depth``) or ``"threads"`` (worker
            threads of the driver start the processes, the driver reaps them; one launch
            queued ahead per core).
        cores_per_helper: with ``spawners="processes"``, the cores each helper serves (it
            starts the launches whose first core is among them); default: 1 up to 128 cores,
            then as many as keep the helpers at most 128 (``local_helpers.HELPERS_AT_MOST``).

    Raises:
        ValueError: ``cores`` names more or other cores than this process may use, ``gpus``
            repeats an id, ``queue_ahead`` is not True, False or ``"auto"``, or
            ``cores_per_helper`` is not a positive int or is given with ``spawners="threads"``.
        LimitExceeded: (a ``ValueError``) ``gpus`` is more than ``matensemble.limits``
            allows per node (1,024 unless ``MATENSEMBLE_MAX_GPUS_PER_NODE`` says otherwise).

    A task queued ahead has its ``task_started`` written when it was queued.

    Outcomes: a process killed by a signal has ``returncode=None`` and ``signal`` set; a
    non-MPI task with ``ranks > 1`` runs one copy per rank and fails as soon as one copy fails
    (the others are stopped). A launch that was timed out or cancelled keeps that state even
    if its processes then exit 0.
    """

    name = "local"
    queue_ahead_same_ids = True  # a queued launch is pinned to the cores it was booked on
    can_withdraw = True  # whoever holds a queued launch (loop, worker, helper) starts or drops it

    def __init__(
        self,
        cores: int | Sequence[int] | None = None,
        gpus: int | Sequence[str] | None = None,
        *,
        gpu_variable: str | None = None,
        mpiexec: str | None = None,
        kill_grace: float = 5.0,
        node_name: str | None = None,
        queue_ahead: bool | str = "auto",
        spawners: str = "processes",
        cores_per_helper: int | None = None,
    ) -> None:
        if kill_grace < 0:
            raise ValueError(f"kill_grace must be >= 0, got {kill_grace!r}")
        if spawners not in ("threads", "processes"):
            raise ValueError(f"spawners must be 'threads' or 'processes', got {spawners!r}")
        self._helpers_wanted = spawners == "processes"
        # A helper chains what waits in it (``local_helper``). A worker thread takes a launch
        # booked ``after`` one that did not start as one whose cores are free, which is false
        # when two wait in a row: with threads, one launch at most waits on a core.
        self.queue_ahead_depth = QUEUE_AHEAD_DEPTH if self._helpers_wanted else 1
        self._cores = select_cores(cores)
        if cores_per_helper is not None and spawners != "processes":
            raise ValueError(
                f"cores_per_helper applies to spawners='processes' only, not {spawners!r}"
            )
        self._cores_per_helper = cores_per_helper_for(len(self._cores), cores_per_helper)
        self._gpus_given = select_gpus(gpus)
        self._gpu_variable_given = gpu_variable
        self._mpiexec_given = mpiexec
        self._kill_grace = kill_grace
        self._node_name = node_name
        self.queue_ahead, self.queue_ahead_below = queue_ahead_setting(queue_ahead)
        self._ahead: QueuedLaunches | None = None  # with queue_ahead, once open
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runs: dict[LaunchKey, Run] = {}
        self._closing = False
        self._reporter: Reporter | None = None
        self._gpus: tuple[str, ...] = ()
        self._planner: LaunchPlanner | None = None
        self._devnull = -1
        self._outputs = TaskOutputs()
        self._open_here = InlineWhileQuick(OPEN_INLINE_BELOW)  # where outputs are opened
        self._spawners: Spawners | Helpers | None = None
        self._exits: ExitWatch | None = None  # the pidfds of every unreaped process
        self._stopper: Stopper | None = None  # timeouts and stops, once open

    async def open(self, sink: Sink, task_group: TaskGroup) -> Sequence[NodeSpec]:
        """Read the inventory and take the environment tasks inherit (``os.environ`` now)."""
        if self._loop is not None:
            raise BackendError("LocalBackend.open() was called twice")
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise BackendUnavailable("LocalBackend needs anyio's asyncio backend") from None
        check_platform(self._cores)
        self._gpus, found_in = await detect_gpus(self._gpus_given)
        self._planner = LaunchPlanner(
            self._gpus,
            self._gpu_variable_given or found_in or "CUDA_VISIBLE_DEVICES",
            find_mpiexec(self._mpiexec_given),
        )
        if self._helpers_wanted:
            self._spawners = Helpers(
                self._cores,
                loop,
                self._started,
                self._exited,
                is_stopping,
                exit_seen,
                self._cores_per_helper,
            )
        else:
            self._devnull = os.open(os.devnull, os.O_RDONLY)
            self._exits = ExitWatch(loop, self._exited, self._take_in)
            self._spawners = Spawners(
                self._cores,
                self._devnull,
                self._exits.add,
                loop,
                self._started,
                is_stopping,
                exit_seen if self.queue_ahead else None,
            )
        if self.queue_ahead:
            self._ahead = QueuedLaunches(self._spawners)
        self._stopper = Stopper(loop, self._spawners, self._ahead, self._kill_grace, self._finish)
        self._loop = loop
        self._reporter = Reporter(sink, loop, lambda: len(self._runs))
        return [NodeSpec(self._node_name or socket.gethostname(), tuple(self._cores), self._gpus)]

    # -- starting -----------------------------------------------------------------------------

    def launch(self, launch: Launch) -> None:
        """Start the launch's process(es); a per-task problem becomes a ``failed`` outcome.

        Raises:
            BackendError: the backend was not opened.
            ValueError: a launch with the same key is still running (an engine bug).
        """
        if self._loop is None:
            raise BackendError("LocalBackend.launch() before open()")
        key = launch.key
        if key in self._runs:
            raise ValueError(f"launch {key} is already running")
        if self._closing:
            self._reports.soon(Outcome(key=key, state=TaskState.CANCELLED, reason="backend closed"))
            return
        outputs: tuple[int, int] | None = None
        planner = self._plans
        task_dir = planner.task_dir(launch)
        try:
            plan = planner.plan(launch, task_dir)
            if not self._helpers_wanted and self._open_here.inline():  # helpers open their own
                began = time.perf_counter()
                outputs = open_outputs(self._outputs, task_dir)
                self._open_here.took(time.perf_counter() - began)
        except LaunchError as exc:
            self._reports.soon(Outcome(key=key, state=TaskState.FAILED, reason=str(exc)))
            return
        run = Run(launch, len(plan))
        self._runs[key] = run
        assert self._spawners is not None
        cwd = launch.task.cwd or task_dir
        if self._ahead is not None and self._ahead.queue(run, (plan, cwd, task_dir, outputs)):
            return  # its timeout is set once it has started
        self._spawners.submit(run, plan, cwd, task_dir, outputs)
        if launch.task.timeout is not None:
            self._stops.time_out_in(run, launch.task.timeout)

    def _started(self, started: Started) -> None:
        """A worker started a launch's processes (already in the epoll set), or failed to."""
        run = started.token
        assert isinstance(run, Run)
        for rank, pid, pidfd in started.processes:
            run.procs.add(pid)
            if self._exits is not None:
                self._exits.watch(pidfd, run, pid, rank)
        run.start_time = started.start_time
        timeout = run.launch.task.timeout
        if run.queued and timeout is not None and run.procs and run.kill_timer is None:
            self._stops.time_out_in(run, timeout)
        if started.failure is not None:
            run.failure = run.failure or (None, None, started.failure)
        if not run.procs:
            self._finish(run)
        elif run.failure is not None or run.kill_timer is not None:
            # A later copy could not start, or the launch was stopped while it started: its
            # processes have no work to lose yet.
            self._stops.signal(run, signal.SIGKILL)

    def _take_in(self) -> None:
        if self._spawners is not None:
            self._spawners.hand_over()

    # -- ending -------------------------------------------------------------------------------

    def _exited(self, token: object, pid: int, rank: int, code: int | None) -> None:
        """``pid`` of a launch was reaped (what it left in its group killed): account for it."""
        run = token
        assert isinstance(run, Run)
        run.procs.discard(pid)
        if code != 0 and run.failure is None:
            run.failure = describe_exit(code, f"rank {rank} " if run.copies > 1 else "")
            if run.procs:  # the launch has failed: the other copies' work is wasted
                self._stops.terminate(run)
        if not run.procs:
            self._finish(run)

    def _finish(self, run: Run) -> None:
        for timer in (run.timer, run.kill_timer):
            if timer is not None:
                timer.cancel()
        del self._runs[run.launch.key]
        if self._ahead is not None:
            self._ahead.ended(run)
        self._reports.now(run.outcome())

    @property
    def _plans(self) -> LaunchPlanner:
        assert self._planner is not None, "LocalBackend used before open()"
        return self._planner

    @property
    def _reports(self) -> Reporter:
        assert self._reporter is not None, "LocalBackend used before open()"
        return self._reporter

    @property
    def _stops(self) -> Stopper:
        assert self._stopper is not None, "LocalBackend used before open()"
        return self._stopper

    # -- stopping -----------------------------------------------------------------------------

    def cancel(self, key: LaunchKey) -> None:
        """Stop one launch: SIGTERM to its process group(s), SIGKILL after ``kill_grace``."""
        run = self._runs.get(key)
        if run is not None:
            self._stops.stop(run, TaskState.CANCELLED, "cancelled")

    def withdraw(self, key: LaunchKey) -> None:
        """Take back a queued launch unless it has started (see ``Backend.withdraw``)."""
        run = self._runs.get(key)
        if run is None or self._ahead is None or self._loop is None or run.withdrawing:
            return
        self._take_in()  # what the workers started: those run on
        if self._ahead.withdraw(run):
            self._loop.call_soon(self._finish, run)  # it waited in the loop: it ends now

    async def close(self) -> None:
        """Cancel every running launch and return once each has reported its outcome.

        If this wait is itself cancelled, every process group is killed at once; the outcomes
        follow as the processes are reaped, for as long as the event loop runs (calling
        ``close()`` again waits for them).
        """
        if not self._closing:
            self._closing = True
            for run in list(self._runs.values()):
                self._stops.stop(run, TaskState.CANCELLED, "cancelled")
        try:
            if self._reporter is not None:
                await self._reporter.wait_drained()
        except BaseException:
            self.kill()  # the loop may end before a worker hands over what it is starting
            raise
        finally:
            if not self._runs:  # nothing is starting or running: let go of what helped
                self._release()

    def _release(self) -> None:
        self._outputs.close()
        if self._spawners is not None:
            self._spawners.close()
            self._spawners = None
        if self._exits is not None:
            self._exits.close()
            self._exits = None
        if self._devnull >= 0:
            os.close(self._devnull)
            self._devnull = -1

    def kill(self) -> None:
        """SIGKILL every running launch's process groups now (a forced exit of the driver)."""
        if self._spawners is not None:
            self._spawners.kill()  # and what is being started
            self._spawners.hand_over()
        for run in list(self._runs.values()):
            if run.queued and run.start_time is None and not run.procs:
                # Queued ahead and not started, as far as the loop knows: a helper reports it
                # never started (or kills it, if its start crossed the kill), a worker kills it
                # as it starts; one waiting in the loop never starts at all.
                run.verdict = run.verdict or (TaskState.CANCELLED, "killed with the run")
                if self._ahead is not None and self._ahead.drop_waiting(run):
                    if self._loop is not None:
                        self._loop.call_soon(self._finish, run)
                    continue
            self._stops.signal(run, signal.SIGKILL)

    async def recover(self, run_id: str, keys: Sequence[LaunchKey]) -> None:
        """Kill what an earlier, crashed driver of ``run_id`` left running, and wait for it.

        Task processes carry ``MATENSEMBLE_RUN_ID`` in their environment; a driver that was
        killed outright could not stop them, and they would otherwise hold cores the engine
        hands out again. Their process groups get SIGKILL, then this waits (on pidfds, for at
        most ``kill_grace`` + 5 s) until they are gone.
        """
        if keys:
            await kill_leftovers(run_id, within=self._kill_grace + 5.0)
