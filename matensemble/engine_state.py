"""The run state an ``Ensemble`` owns, and the only code that changes a task's state.

``RunState`` is the bottom layer of the engine (``engine_state`` → ``engine_loop`` →
``engine_stop`` → ``engine_start`` → ``engine``): the records of every task, the counts per
state, the dependency graph, the resource pool, the dispatcher, and the events that tell the
producer and the consumer there is work. Its methods are the state transitions (ready, started
elsewhere, terminal, skipped, cancelled) and the event stream to the observers: every change of
a record goes through here, so the counts, the journal and the waiters never disagree.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import deque
from collections.abc import Container, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from anyio.abc import TaskGroup

from matensemble.backends.base import Backend, Outcome
from matensemble.dispatch import Dispatcher, Record
from matensemble.errors import MatEnsembleError, TaskRejected
from matensemble.events import Event, TaskAdded, TaskFinished
from matensemble.graph import DependencyGraph
from matensemble.journal import Journal
from matensemble.logging import EnsembleLogger
from matensemble.model import Resources, Task, TaskResult, TaskState
from matensemble.observer import Observer
from matensemble.queue_ahead import QueueAhead
from matensemble.resources import ResourcePool
from matensemble.rundir import RunDirectoryLock
from matensemble.strategies import CompletionPolicy, RetryPolicy, SubmissionOrder

if TYPE_CHECKING:
    from matensemble.strategies.control import EnsembleControl

__all__ = ["RunState"]


class RunState:
    """What one run knows: its configuration, every task's record, and the state transitions.

    Built by ``Ensemble.__init__`` once its arguments are checked; the layers above add the
    producer and consumer, the stopping and the start-up.
    """

    def __init__(
        self,
        initial: list[Task],
        *,
        backend: Backend,
        strategy: SubmissionOrder,
        completion: CompletionPolicy,
        retry: RetryPolicy,
        run_dir: Path | None,
        run_id: str | None,
        observers: Sequence[Observer],
        console_log: bool,
        resume: bool,
        add_new: bool,
        walltime: float | None,
        durable: bool | None,
        handle_signals: bool,
        allow_backend_change: bool,
    ) -> None:
        self.backend = backend
        self.strategy = strategy
        self.completion = completion
        self.retry = retry
        self._resume = resume
        self._add_new = add_new
        self._walltime = walltime
        self._durable = durable
        self._handle_signals = handle_signals
        self.run_id = run_id or time.strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)
        self._given_run_dir = run_dir
        self._allow_backend_change = allow_backend_change
        self._owner: RunDirectoryLock | None = None
        self.run_dir = self._given_run_dir or Path("runs") / self.run_id
        self._tasks_dir = self.run_dir / "tasks"
        self._extra_observers = list(observers)
        self._console_log = console_log
        self._initial = initial

        self._records: dict[str, Record] = {}
        self._graph = DependencyGraph()
        self._pool: ResourcePool | None = None
        self._ahead: QueueAhead | None = None  # tasks booked behind running ones, if queued
        self._never_fits: dict[Resources, str | None] = {}
        self._dispatch = Dispatcher(self.strategy, self.completion)
        # Whether the completion policy reacts to results (the default ignores them): then
        # the producer refills freed slots only after the policy was told (see ``_consumer``).
        self._results_steer = (
            type(completion).on_result is not CompletionPolicy.on_result
            or "on_result" in getattr(completion, "__dict__", ())  # set on the instance
        )
        self._counts = dict.fromkeys(TaskState, 0)
        self._open = 0  # tasks not yet terminal
        self._finished: list[str] = []  # ids in the order they reached a terminal state
        self._outcomes: deque[Outcome] = deque()
        self._observers: list[Observer] = []
        self._logger: EnsembleLogger | None = None
        self._journal: Journal | None = None
        self._tg: TaskGroup | None = None
        self._wake_producer = asyncio.Event()
        self._wake_consumer = asyncio.Event()
        self._progress = asyncio.Event()  # set whenever a task reaches a terminal state
        self._settled = asyncio.Event()  # set when no task is open, or the run stops
        self._error: BaseException | None = None
        self._started = False
        self._stopping = False  # start nothing more (stop() was called, or teardown began)
        self._stop_reason: str | None = None  # why, when the run is stopped before its end
        self._interrupted = False  # stop() was called: tasks cancelled now are run on resume
        self._notify: list[TaskResult] = []  # terminal results not yet committed and told
        self._unwritten = False  # events emitted since the observers last flushed
        self._deadline: float | None = None
        self._deadline_timer: asyncio.TimerHandle | None = None
        self._t0 = 0.0
        self._t_end: float | None = None
        self._core_seconds = 0.0
        self._gpu_seconds = 0.0

    # -- what the run is like now --------------------------------------------------------------

    @property
    def _log(self) -> Any:
        assert self._logger is not None, "the ensemble has not started"
        return self._logger.log

    def _state_counts(self) -> dict[str, int]:
        return {state.value: n for state, n in self._counts.items()}

    def _queued_ahead(self) -> int:
        """Running tasks booked behind others (``QueueAhead``) that have not moved in."""
        return len(self._ahead) if self._ahead is not None else 0

    def _free_and_total(self) -> tuple[int, int, int, int]:
        pool = self._pool
        if pool is None:
            return (0, 0, 0, 0)
        return (pool.free_cores, pool.total_cores, pool.free_gpus, pool.total_gpus)

    def _syncs_to_disk(self) -> bool:
        if self._durable is not None:
            return self._durable
        return not self.backend.virtual_clock

    # -- adding tasks ---------------------------------------------------------------------------

    def _check_batch(self, batch: Sequence[Task], known: Container[str]) -> None:
        """Raise ``TaskRejected`` for a non-task, a duplicate id, or a task that cannot fit."""
        pool = self._pool
        assert pool is not None
        seen: set[str] = set()
        for task in batch:
            if not isinstance(task, Task):
                raise TypeError(f"submit() takes Task objects, got {type(task).__name__}")
            if task.id in known or task.id in seen:
                raise TaskRejected(task.id, "a task with this id was already submitted")
            seen.add(task.id)
            res = task.resources
            if res not in self._never_fits:
                self._never_fits[res] = pool.why_never_fits(res) or self.backend.why_never_fits(res)
            why = self._never_fits[res]
            if why is not None:
                raise TaskRejected(task.id, f"it can never fit: {why}")

    def _add(self, batch: list[Task]) -> None:
        """Check ``batch`` as a whole, then record it: ready tasks are queued, doomed skipped."""
        if self._stopping:
            raise MatEnsembleError("the ensemble is stopping; no more tasks can be submitted")
        self._check_batch(batch, known=self._records.keys())
        ready, skipped = self._graph.add(batch)

        now = self.backend.now()
        records = self._records
        for task in batch:
            records[task.id] = Record(task)
            self._emit(TaskAdded(now, task))
        self._counts[TaskState.PENDING] += len(batch)
        self._open += len(batch)
        for task_id in ready:
            self._make_ready(records[task_id])
        for task_id, upstream in skipped:
            self._skip(records[task_id], upstream)
        self._wake_producer.set()  # it commits the new events and tells about any skips

    # -- state transitions (the only places that change a record's state) ------------------------

    def _make_ready(self, rec: Record) -> None:
        self._counts[rec.state] -= 1
        self._counts[TaskState.READY] += 1
        rec.state = TaskState.READY
        self._dispatch.push(rec)
        self._wake_producer.set()

    def _complete(self, rec: Record, result: TaskResult) -> None:
        """Record a terminal result, then let the graph and the completion policy react."""
        self._set_terminal(rec, result)
        if result.state is TaskState.SUCCEEDED:
            for task_id in self._graph.succeeded(rec.task.id):
                self._make_ready(self._records[task_id])
        else:
            self._log.warning(
                "task_" + result.state.value,
                task_id=rec.task.id,
                attempts=result.attempts,
                returncode=result.returncode,
                signal=result.signal,
                reason=result.reason,
            )
            for task_id, upstream in self._graph.did_not_succeed(rec.task.id):
                self._skip(self._records[task_id], upstream)

    def _skip(self, rec: Record, upstream: str) -> None:
        """Skip a task the graph already took out (so no second cascade)."""
        up = self._records[upstream]
        reason = f"prerequisite {upstream!r} {up.state.value}"
        self._finish(rec, TaskState.SKIPPED, reason=reason, cascade=False)

    def _finish(self, rec: Record, state: TaskState, *, reason: str, cascade: bool = True) -> None:
        """End a task that did not run to an outcome (cancelled, skipped)."""
        if rec.state is TaskState.RUNNING:
            self._release(rec)
        elif rec.state is TaskState.READY:
            self._dispatch.unqueued(rec)
        result = TaskResult(
            id=rec.task.id, state=state, attempts=rec.attempts, reason=reason, tags=rec.task.tags
        )
        if cascade:
            self._complete(rec, result)
        else:
            self._set_terminal(rec, result)

    def _release(self, rec: Record) -> None:
        """A running attempt ended: give back what it holds; tasks booked behind it on its
        nodes move in (see ``QueueAhead``)."""
        ahead, pool = self._ahead, self._pool
        assert pool is not None
        if ahead is not None and ahead.holds(rec):
            ahead.drop(rec)
            if not ahead.exact:
                return  # else those booked behind it on its ids may move in now
        else:
            pool.release(rec.placement)
            self._dispatch.ended(rec)
        if ahead is not None and len(ahead):
            now = self.backend.now()
            for moved in ahead.move_in(rec.placement, pool):
                moved.start = now
                self._dispatch.running(moved, now)

    def _interrupt(self, reason: str) -> None:
        """Start nothing more; what is cancelled from now on is run again on resume."""
        if self._stopping:
            return
        self._stopping = True
        self._interrupted = True
        self._stop_reason = f"interrupted: {reason}"
        if self._logger is not None:
            self._log.warning("run_stopping", reason=reason)
        self._wake_waiters()

    def _tell_policy(self, result: TaskResult) -> None:
        """Run the completion policy's hook; an error in it stops the run (and is raised)."""
        if self._stopping or self._error is not None:
            return
        try:
            # The policy steers through the public API of the Ensemble built on this state.
            self.completion.on_result(result, cast("EnsembleControl", self))
        except Exception as exc:
            self._fail(exc)

    def _set_terminal(self, rec: Record, result: TaskResult) -> None:
        self._counts[rec.state] -= 1
        self._counts[result.state] += 1
        rec.state = result.state
        rec.result = result
        self._open -= 1
        self._finished.append(rec.task.id)
        interrupted = (
            self._interrupted and result.state is TaskState.CANCELLED and not rec.cancel_requested
        )
        self._emit(
            TaskFinished(result.end_time or self.backend.now(), result, interrupted=interrupted)
        )
        self._notify.append(result)

    # -- the event stream ---------------------------------------------------------------------

    def _emit(self, event: Event) -> None:
        self._unwritten = True
        for obs in self._observers:
            obs.on_event(event)

    def _write(self) -> None:
        """Hand the events so far to the OS: from here they survive a crash of the driver.

        Nothing to do when no event came since the last write (half of the calls, on a run
        of short tasks: the producer's, the consumer's and the commit's writes come in turn).
        """
        if not self._unwritten:
            return
        for obs in self._observers:
            obs.flush()
        self._unwritten = False  # only once every observer took them (else: again next time)

    async def _commit(self) -> None:
        """Make the events durable, then tell the policy and the waiters about new results.

        Launches need only ``_write`` (a start lost with the node is simply run again), but
        the user never hears of a result before it is on stable storage. Policy hooks may
        submit or cancel (new events, new results), hence the loop.
        """
        journal = self._journal
        while True:
            self._write()
            if journal is not None and journal.unsynced():
                await journal.sync()
            if not self._notify:
                return
            told, self._notify = self._notify, []
            if self._results_steer:  # the default policy ignores them: no call per result
                for result in told:
                    self._tell_policy(result)
            self._wake_waiters()

    def _wake_waiters(self) -> None:
        """Wake the readers of results (``completed``), and ``wait`` if it may return."""
        self._progress.set()
        if not self._open or self._error is not None or self._interrupted:
            self._settled.set()

    def _fail(self, exc: BaseException) -> None:
        self._error = exc
        if self._logger is not None:
            self._log.error("engine_error", error=repr(exc))
        self._wake_waiters()


def why(exc: BaseException) -> str:
    """``Type: message`` of an exception, for reasons recorded with a task or a run."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
