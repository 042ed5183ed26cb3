"""The engine: ``Ensemble``, its producer and consumer coroutines, and the public API.

One event loop thread owns all run state. The *producer* starts ready tasks, best-ranked first,
while they fit the free resources, then waits on an event; it never sleeps or polls. Backends
report outcomes through a callback into a queue; the *consumer* drains that queue in batches,
releases resources, updates dependency edges and wakes the producer. Both run in an anyio task
group owned by the ensemble, so leaving the ``async with`` block (or cancelling ``run()``)
stops them, cancels running tasks in the backend and records every unfinished task as
cancelled *and interrupted*, so that ``resume`` runs it again (only ``cancel(id)`` is final).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from collections import deque
from collections.abc import AsyncIterator, Container, Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import anyio
import msgspec
from anyio.abc import TaskGroup

from matensemble.backends.base import Backend, Launch, LaunchKey, Outcome
from matensemble.dispatch import Dispatcher, Record
from matensemble.errors import MatEnsembleError, TaskRejected
from matensemble.functions.front import FunctionCalls
from matensemble.graph import DependencyGraph
from matensemble.journal import Journal, Replay
from matensemble.logging import EnsembleLogger, make_logger
from matensemble.model import (
    Event,
    Placement,
    Resources,
    RunFinished,
    RunStarted,
    Task,
    TaskAdded,
    TaskFinished,
    TaskResult,
    TaskStarted,
    TaskState,
    TaskSubmitted,
)
from matensemble.observer import Observer, close_all
from matensemble.resources import ResourcePool
from matensemble.resume import (
    adopt_left_running,
    read_past,
    replay_figures,
    restore_records,
    unfinished_tasks,
)
from matensemble.rundir import RunDirectoryLock, claim_run_dir
from matensemble.signals import release_sigterm, stop_on_sigterm
from matensemble.status import StatusFile
from matensemble.strategies import FIFO, Adaptive, CompletionPolicy, RetryPolicy, SubmissionOrder
from matensemble.summary import RunSummary

__all__ = ["Ensemble"]


class Ensemble(FunctionCalls):
    """Runs tasks on a backend, respecting dependencies, resources and a strategy.

    Use ``await Ensemble(tasks).run()`` for a batch, or ``async with Ensemble(...) as ens:``
    with ``ens.submit(...)`` and ``async for result in ens.completed()`` to steer.

    Args:
        tasks: tasks to run (more may be submitted later).
        backend: where tasks run; default ``LocalBackend()`` (this machine).
        strategy: submission order; default ``FIFO()`` with backfill.
        completion: completion policy; default ``Adaptive()`` (refill at once).
        retry: backoff between attempts of a task with ``retries``.
        run_dir: directory for the journal, status, logs and task outputs; default
            ``runs/<run-id>``.
        observers: extra observers of the event stream (e.g. a progress display).
        console_log: also print warnings to stderr.
        resume: continue the run recorded in this run directory: succeeded tasks keep their
            results and are not run again; tasks that were running, queued, or stopped with
            the run are run again. ``tasks`` may repeat the journal's tasks (they must be
            unchanged); tasks the journal does not know need ``add_new=True``.
        add_new: with ``resume``, add tasks that are not in the journal yet.
        walltime: seconds from the start: tasks whose ``estimate`` would end later are not
            started, and at that time the run stops (running tasks are cancelled and recorded
            as interrupted, so a resume runs them again). The backend may know a deadline of
            its own (the allocation's end under Flux); the earlier one counts.
        durable: sync the journal to disk at each commit (``fdatasync``, one per batch); by
            default on, except for backends with a virtual clock (simulation).
        handle_signals: SIGTERM stops the active run gracefully, as in the CLI, unless the
            application handles SIGTERM itself; ``False``: leave it alone (docs/nothing-lost.md).
        allow_backend_change: with ``resume``, accept a kind of backend the run was not
            recorded on (e.g. ``simulated`` for a ``local`` run). Results a simulated session
            recorded never count on a real backend: those tasks run again.

    A run directory has one owner: starting raises ``RunDirectoryTaken`` while another live
    driver holds it, or for a new run in a directory that holds a run. The default directory
    ``runs/<run_id>`` is created anew; if it exists, ``-2``, ``-3``, ... is appended to both.
    """

    def __init__(
        self,
        tasks: Task | Iterable[Task] = (),
        *,
        backend: Backend | None = None,
        strategy: SubmissionOrder | None = None,
        completion: CompletionPolicy | None = None,
        retry: RetryPolicy | None = None,
        run_dir: str | Path | None = None,
        run_id: str | None = None,
        observers: Sequence[Observer] = (),
        console_log: bool = False,
        resume: str | Path | None = None,
        add_new: bool = False,
        walltime: float | None = None,
        durable: bool | None = None,
        handle_signals: bool = True,
        allow_backend_change: bool = False,
    ) -> None:
        if walltime is not None and not walltime > 0:
            raise ValueError(f"walltime must be > 0 seconds, got {walltime!r}")
        if backend is None:
            from matensemble.backends.local import LocalBackend

            backend = LocalBackend()
        _expect("backend", backend, Backend)
        _expect("strategy", strategy, SubmissionOrder, optional=True)
        _expect("completion", completion, CompletionPolicy, optional=True)
        _expect("retry", retry, RetryPolicy, optional=True)
        if run_dir is not None and not isinstance(run_dir, str | os.PathLike):
            raise TypeError(f"run_dir must be a path, got {type(run_dir).__name__}")
        self.backend = backend
        self.strategy = strategy or FIFO()
        self.completion = completion or Adaptive()
        self.retry = retry or RetryPolicy()
        if resume is not None:
            if run_dir is not None and Path(run_dir) != Path(resume):
                raise ValueError("give either run_dir or resume (the run directory to resume)")
            run_dir = resume
        self._resume = resume is not None
        self._add_new = add_new
        self._walltime = walltime
        self._durable = durable
        self._handle_signals = handle_signals
        self.run_id = run_id or time.strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)
        self._given_run_dir = Path(run_dir) if run_dir is not None else None
        self._allow_backend_change = allow_backend_change
        self._owner: RunDirectoryLock | None = None
        self.run_dir = self._given_run_dir or Path("runs") / self.run_id
        self._tasks_dir = self.run_dir / "tasks"
        self._extra_observers = list(observers)
        self._console_log = console_log
        self._initial: list[Task] = [tasks] if isinstance(tasks, Task) else list(tasks)

        self._records: dict[str, Record] = {}
        self._graph = DependencyGraph()
        self._pool: ResourcePool | None = None
        self._never_fits: dict[Resources, str | None] = {}
        self._dispatch = Dispatcher(self.strategy, self.completion)
        self._running: dict[str, Record] = {}
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
        self._error: BaseException | None = None
        self._started = False
        self._stopping = False  # start nothing more (stop() was called, or teardown began)
        self._stop_reason: str | None = None  # why, when the run is stopped before its end
        self._interrupted = False  # stop() was called: tasks cancelled now are run on resume
        self._notify: list[TaskResult] = []  # terminal results not yet committed and told
        self._deadline: float | None = None
        self._deadline_timer: asyncio.TimerHandle | None = None
        self._t0 = 0.0
        self._t_end: float | None = None
        self._core_seconds = 0.0
        self._gpu_seconds = 0.0

    # -- lifecycle ------------------------------------------------------------------------------

    async def run(self, *, check: bool = False) -> RunSummary:
        """Run every task to a terminal state; return the summary (see ``summary.ok``), or with
        ``check=True`` raise ``RunFailed`` (naming the tasks) unless every task succeeded."""
        async with self:
            await self.wait()
        return self.summary().check() if check else self.summary()

    async def __aenter__(self) -> Ensemble:
        if self._started:
            raise RuntimeError("an Ensemble can be started only once")
        self._started = True
        initial, self._initial = self._initial, []
        past: Replay | None = None
        self._owner = claim_run_dir(self._given_run_dir, self.run_id, resume=self._resume)
        try:
            if self._owner is not None and self._given_run_dir is None:
                self.run_id = self._owner.run_dir.name  # unique: runs/<run_id>[-N]
                self.run_dir, self._tasks_dir = self._owner.run_dir, self._owner.run_dir / "tasks"
            if self._resume:
                past, initial = read_past(
                    self.run_dir,
                    self.backend,
                    initial,
                    add_new=self._add_new,
                    allow_backend_change=self._allow_backend_change,
                )
                self.run_id = past.run_id
            if self._owner is not None:
                self._owner.write_owner(self.run_id)
        except BaseException:
            self._give_up_run_dir()
            raise
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        try:
            if self._handle_signals:
                stop_on_sigterm(self)
            self.backend.job_ids = self._on_job_id
            inventory = await self.backend.open(self._on_outcome, self._tg)
            self._pool = ResourcePool(inventory)
            # Check everything before the first byte is written, so that bad input leaves
            # no trace and a resume refused here leaves the journal as it was.
            if past is not None:
                reopened = unfinished_tasks(past)
                self._check_batch(reopened, known=())
                for task_id, result in past.finished.items():
                    self._graph.restore(task_id, result.ok)
                self._graph.check(reopened + initial)
            self._check_batch(initial, known=past.tasks.keys() if past else ())
            self._graph.check(initial)
            self._open_run_files()  # from here on the run is on record in its directory
            self._t0 = self.backend.now()
            self._start_run(resumed=past is not None)
            if past is not None:
                await self._resume_from(past)
            self.submit(initial)
            await self._commit()
        except BaseException as exc:
            await self._teardown(exc)
            self._tg.cancel_scope.cancel()
            await self._tg.__aexit__(None, None, None)
            raise
        self._tg.start_soon(self._producer, name="matensemble-producer")
        self._tg.start_soon(self._consumer, name="matensemble-consumer")
        self._enter_context()  # calls of @task functions come here
        return self

    def _open_run_files(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._logger = make_logger(self.run_dir, self.run_id, console=self._console_log)
        self._journal = Journal(
            self.run_dir,
            durable=self.durable,
        )
        self._observers = [
            self._journal,
            StatusFile(self.run_dir, lambda: self.counts, lambda: self.resources),
            *self._extra_observers,
        ]

    def _start_run(self, *, resumed: bool) -> None:
        pool = self._pool
        assert pool is not None
        self._emit(
            RunStarted(
                self._t0,
                self.run_id,
                self.backend.name,
                pool.total_cores,
                pool.total_gpus,
                len(pool.nodes),
                simulated=self.backend.virtual_clock,
            )
        )
        self.log.info(
            "run_resumed" if resumed else "run_started",
            backend=self.backend.name,
            run_dir=str(self.run_dir),
            cores=pool.total_cores,
            gpus=pool.total_gpus,
            nodes=len(pool.nodes),
            strategy=repr(self.strategy),
            completion=repr(self.completion),
        )
        deadlines = [d for d in (self.backend.deadline(),) if d is not None]
        if self._walltime is not None:
            deadlines.append(self._t0 + self._walltime)
        if self._owner is not None and not self._owner.supported:
            self.log.warning("run_dir_lock_unsupported", path=str(self._owner.path))
        if deadlines:
            self._deadline = min(deadlines)
            self.log.info("deadline", at=self._deadline, in_seconds=self._deadline - self._t0)
            if not self.backend.virtual_clock:
                self._deadline_timer = asyncio.get_running_loop().call_later(
                    max(0.0, self._deadline - self._t0), self.stop, "walltime reached"
                )

    async def _resume_from(self, past: Replay) -> None:
        """Take over the recorded run: adopt what still runs, restore records, reopen the rest."""
        assert self._pool is not None
        if past.torn_line is not None:
            self.log.warning("journal_torn_line_skipped", line=past.torn_line)
        adopted = await adopt_left_running(
            past, self._pool, self.backend, self._tasks_dir, self.run_id, self.log
        )
        reopened = restore_records(past, self._records, self._counts, self._finished)
        self._reopen(reopened, adopted)
        self.log.info("journal_replayed", **replay_figures(past, adopted, reopened))
        await self.backend.recover(
            self.run_id, [(i, past.attempts[i]) for i in past.was_running if i not in adopted]
        )

    def _reopen(self, reopened: list[Task], adopted: dict[str, Placement]) -> None:
        """Open the journal's unfinished tasks again; those in ``adopted`` are running."""
        records = self._records
        self._counts[TaskState.PENDING] += len(reopened)
        self._open += len(reopened)
        ready, skipped = self._graph.add(reopened)
        now = self.backend.now()
        for task_id in ready:
            rec = records[task_id]
            if task_id not in adopted:
                self._make_ready(rec)
                continue
            rec.state, rec.placement, rec.start = TaskState.RUNNING, adopted[task_id], now
            self._counts[TaskState.PENDING] -= 1
            self._counts[TaskState.RUNNING] += 1
            self._running[task_id] = rec
            self._dispatch.running(rec, now)
        for task_id, upstream in skipped:
            self._skip(records[task_id], upstream)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._tg is not None
        self._leave_context()
        error = exc
        if error is None:
            try:
                await self.wait()  # leaving the block normally waits for every task
            except BaseException as inner:
                error = inner
        await self._teardown(error)
        self._tg.cancel_scope.cancel()
        await self._tg.__aexit__(None, None, None)
        error = error or self._error  # e.g. the disk filled up while the last files were written
        if exc is None and error is not None:
            raise error

    async def _teardown(self, exc: BaseException | None) -> None:
        """Stop starting, cancel what runs, record every open task, write the final files."""
        with anyio.CancelScope(shield=True):
            if self._deadline_timer is not None:
                self._deadline_timer.cancel()
            self._stopping = True
            if exc is not None and not self._interrupted:  # stopped from outside its tasks:
                self._interrupted = True  # every unfinished task stays resumable (invariant 7)
                self._stop_reason = f"ensemble stopped: {_why(exc)}"
            reason = self._stop_reason or "ensemble stopped"
            try:
                await self.backend.close()
            finally:
                self._drain_outcomes()
                for rec in list(self._running.values()):
                    self._finish(rec, TaskState.CANCELLED, reason=reason)
                for rec in list(self._records.values()):
                    if not rec.state.terminal:
                        self._finish(rec, TaskState.CANCELLED, reason=reason)
                if self._logger is not None:  # the run files exist
                    self._t_end = self.backend.now()
                    outcome: Literal["completed", "interrupted", "cancelled", "error"]
                    outcome = "interrupted" if self._interrupted else "completed"
                    if exc is not None:
                        outcome = "error" if isinstance(exc, Exception) else "cancelled"
                    counts = self.counts
                    self._emit(RunFinished(self._t_end, counts, outcome))
                    self.log.info("run_finished", outcome=outcome, reason=reason, **counts)
                    full = close_all(self._observers)  # every one, also on a full disk
                    self._error = self._error or full
                    self._logger.close()
                release_sigterm(self)
                self._give_up_run_dir()
                self._progress.set()

    def _give_up_run_dir(self) -> None:
        """Release the run directory's lock; if the run never reached its journal, leave the
        directory as it was found."""
        owner, self._owner = self._owner, None
        if owner is None:
            return
        if self._journal is None:
            owner.abandon()
        else:
            owner.release()

    # -- public API -----------------------------------------------------------------------------

    @property
    def log(self) -> Any:
        """This ensemble's structlog logger (bound to its run id)."""
        assert self._logger is not None, "the ensemble has not started"
        return self._logger.log

    def submit(self, tasks: Task | Iterable[Task]) -> None:
        """Add tasks; they start when their prerequisites succeeded and they fit.

        The batch is checked as a whole before anything is recorded: a bad id, a duplicate id,
        an unknown prerequisite, a cycle, or a task larger than the machine raises
        ``TaskRejected`` (or its subclass ``DependencyError``) and adds nothing.
        """
        batch = [tasks] if isinstance(tasks, Task) else list(tasks)
        if not self._started:
            self._initial.extend(batch)
            return
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
                self._never_fits[res] = pool.why_never_fits(res)
            why = self._never_fits[res]
            if why is not None:
                raise TaskRejected(task.id, f"it can never fit: {why}")

    def stop(self, reason: str = "stopped") -> None:
        """Stop the run gracefully: start nothing more and cancel the running tasks.

        ``wait()`` and ``run()`` return, and ``completed()`` ends; leaving the ``async with``
        block then kills the running process trees (TERM, then KILL after the backend's grace)
        and records the running and queued tasks as ``cancelled`` *and interrupted* (their
        dependents as ``skipped``), so that ``resume`` runs them all again. Signals, the
        walltime and the CLI use this.
        """
        if self._stopping:
            return
        self._stopping = True
        self._interrupted = True
        self._stop_reason = f"interrupted: {reason}"
        if self._logger is not None:
            self.log.warning("run_stopping", reason=reason)
        self._progress.set()

    def abort(self) -> None:
        """Kill every running task at once and hand the journal to the OS; nothing waits.

        For a driver that must exit now (a second Ctrl-C): the journal stays replayable and
        ``resume`` runs again whatever was running.
        """
        self._stopping = True
        self.backend.kill()
        self._write()

    def cancel(self, *task_ids: str) -> None:
        """Cancel tasks by id (all open tasks when none is given); dependents are skipped."""
        ids = task_ids or [r.task.id for r in self._records.values() if not r.state.terminal]
        for task_id in ids:
            rec = self._record(task_id)
            rec.cancel_requested = True  # final: never retried, never run again on resume
            if rec.state is TaskState.RUNNING:
                self.backend.cancel((task_id, rec.attempts))
            elif not rec.state.terminal:
                self._finish(rec, TaskState.CANCELLED, reason="cancelled")
        self._wake_producer.set()  # it commits the cancellations and tells the waiters

    def reprioritise(self, task_id: str, priority: int) -> None:
        """Change the priority of a task that has not started yet."""
        rec = self._record(task_id)
        if rec.state.terminal or rec.state is TaskState.RUNNING:
            return
        rec.task = msgspec.structs.replace(rec.task, priority=priority)
        if rec.state is TaskState.READY:
            self._dispatch.push(rec)  # the old heap entry is now stale and will be skipped
            self._wake_producer.set()

    async def wait(self) -> None:
        """Return when no task is open (all reached a terminal state)."""
        while self._open and self._error is None and not self._interrupted:
            self._progress.clear()
            await self._progress.wait()
        if self._error is not None:
            raise self._error

    async def completed(self, *, start: int = 0) -> AsyncIterator[TaskResult]:
        """Yield each task's final result as it arrives; stop when no task is open.

        Tasks submitted while iterating are waited for too, which makes this the heart of a
        steering loop. Every iterator sees every result, from the start of the run, in the same
        order; ``start`` skips the first results (a reader that goes on where it stopped).
        """
        position = start
        while True:
            while position < len(self._finished):
                rec = self._records[self._finished[position]]
                position += 1
                assert rec.result is not None
                yield rec.result
            if self._error is not None:
                raise self._error
            if not self._open or self._interrupted:
                return
            self._progress.clear()
            await self._progress.wait()

    @property
    def counts(self) -> dict[str, int]:
        """Number of tasks in each state."""
        return {state.value: n for state, n in self._counts.items()}

    @property
    def durable(self) -> bool:
        """Whether this run syncs what it records (journal, results) to disk before telling."""
        if self._durable is not None:
            return self._durable
        return not self.backend.virtual_clock

    @property
    def resources(self) -> tuple[int, int, int, int]:
        """``(free_cores, total_cores, free_gpus, total_gpus)``."""
        pool = self._pool
        if pool is None:
            return (0, 0, 0, 0)
        return (pool.free_cores, pool.total_cores, pool.free_gpus, pool.total_gpus)

    def result(self, task_id: str) -> TaskResult | None:
        """The final result of a task, or ``None`` while it is open."""
        return self._record(task_id).result

    def state(self, task_id: str) -> TaskState:
        """The current state of a task."""
        return self._record(task_id).state

    def _record(self, task_id: str) -> Record:
        try:
            return self._records[task_id]
        except KeyError:
            raise KeyError(f"no task with id {task_id!r} in this ensemble") from None

    def summary(self) -> RunSummary:
        """Counts, makespan, utilisation and every result so far."""
        pool = self._pool
        end = self._t_end if self._t_end is not None else self.backend.now()
        makespan = max(0.0, end - self._t0) if pool is not None else 0.0
        return RunSummary(
            run_id=self.run_id,
            run_dir=str(self.run_dir),
            backend=self.backend.name,
            counts=self.counts,
            makespan=makespan,
            core_utilisation=_ratio(
                self._core_seconds, (pool.total_cores if pool else 0) * makespan
            ),
            gpu_utilisation=_ratio(self._gpu_seconds, (pool.total_gpus if pool else 0) * makespan),
            results={task_id: rec.result for task_id, rec in self._records.items() if rec.result},
            stopped=self._stop_reason if self._interrupted else None,
        )

    # -- producer ---------------------------------------------------------------------------------

    async def _producer(self) -> None:
        try:
            while True:
                self._wake_producer.clear()
                starts, held = self._fill()
                self._write()  # the starts are on record (in the OS) before anything runs
                for launch in starts:
                    self._launch(launch)
                if held and not starts and not self._running and self._deadline is not None:
                    self.stop("walltime: no queued task can finish before the deadline")
                if self._notify:
                    self._wake_consumer.set()  # results to commit and tell (skips, cancels)
                elif not self._outcomes:  # running tasks or retry backoffs
                    self.backend.idle()
                await self._wake_producer.wait()
        except Exception as exc:  # a bug or a strategy error: stop the run, report it
            self._fail(exc)

    def _fill(self) -> tuple[list[Launch], bool]:
        """Pick what starts now (see ``Dispatcher.select``) and record the starts.

        Returns the launches to make once their starts are written to the journal (a task
        never runs without a record that it started), and whether the deadline held any back.
        """
        assert self._pool is not None
        if self._stopping:
            return [], False
        starts: list[Launch] = []
        now = self.backend.now()
        held = self._dispatch.select(
            self._pool,
            now,
            self._deadline,
            in_flight=lambda: len(self._running),
            start=lambda rec, placement: starts.append(self._start(rec, placement, now)),
        )
        return starts, held

    def _start(self, rec: Record, placement: Placement, now: float) -> Launch:
        task = rec.task
        rec.state = TaskState.RUNNING
        rec.attempts += 1
        rec.placement = placement
        rec.start = now
        self._dispatch.running(rec, now)
        counts = self._counts
        counts[TaskState.READY] -= 1
        counts[TaskState.RUNNING] += 1
        self._running[task.id] = rec
        self._emit(TaskStarted(now, task.id, rec.attempts, placement))
        return Launch(
            task=task,
            attempt=rec.attempts,
            placement=placement,
            task_dir=self._tasks_dir / task.id,
            run_id=self.run_id,
        )

    def _launch(self, launch: Launch) -> None:
        """Hand one launch to the backend; a backend that raises fails that task only."""
        rec = self._records[launch.task.id]
        if self._stopping or rec.cancel_requested:  # stopped while its start was committed
            self._on_outcome(Outcome(key=launch.key, state=TaskState.CANCELLED, reason="cancelled"))
            return
        try:
            self.backend.launch(launch)
        except Exception as exc:
            self.log.error("launch_error", task_id=launch.task.id, error=repr(exc))
            self._on_outcome(
                Outcome(
                    key=launch.key,
                    state=TaskState.FAILED,
                    reason=f"the {self.backend.name} backend could not launch it: {_why(exc)}",
                )
            )

    # -- consumer ---------------------------------------------------------------------------------

    def _on_job_id(self, key: LaunchKey, job_id: str) -> None:
        """The backend's id for a launch: journal it soon, so a resume can adopt the job."""
        self._emit(TaskSubmitted(self.backend.now(), key[0], key[1], job_id))
        self._wake_consumer.set()  # it writes the journal

    def _on_outcome(self, outcome: Outcome) -> None:
        """The backends' sink: queue the outcome and wake the consumer (event loop thread)."""
        self._outcomes.append(outcome)
        self._wake_consumer.set()

    async def _consumer(self) -> None:
        try:
            while True:
                await self._wake_consumer.wait()
                self._wake_consumer.clear()
                self._drain_outcomes()
                self._write()
                self._wake_producer.set()  # refill freed slots while the journal syncs
                await self._commit()
                if self._deadline is not None and self.backend.now() >= self._deadline:
                    self.stop("walltime reached")
        except Exception as exc:
            self._fail(exc)

    def _drain_outcomes(self) -> None:
        outcomes = self._outcomes
        while outcomes:
            self._handle(outcomes.popleft())

    def _handle(self, outcome: Outcome) -> None:
        task_id, attempt = outcome.key
        rec = self._records.get(task_id)
        if rec is None or rec.state is not TaskState.RUNNING or rec.attempts != attempt:
            self.log.warning("stale_outcome", task_id=task_id, attempt=attempt)
            return
        assert self._pool is not None
        self._pool.release(rec.placement)
        del self._running[task_id]
        self._counts[TaskState.RUNNING] -= 1
        self._counts[TaskState.PENDING] += 1
        rec.state = TaskState.PENDING
        if outcome.start_time is not None and outcome.end_time is not None:
            used = outcome.end_time - outcome.start_time
            self._core_seconds += used * sum(len(s.cores) for s in rec.placement)
            self._gpu_seconds += used * sum(len(s.gpus) for s in rec.placement)
        result = TaskResult(
            id=task_id,
            state=outcome.state,
            attempts=attempt,
            returncode=outcome.returncode,
            signal=outcome.signal,
            reason=self._stop_reason
            if outcome.state is TaskState.CANCELLED and self._stop_reason
            else outcome.reason,
            start_time=outcome.start_time,
            end_time=outcome.end_time,
            placement=outcome.placement or rec.placement,
            tags=rec.task.tags,
            times=outcome.times,
            job_id=outcome.job_id,
        )
        if outcome.state in (TaskState.FAILED, TaskState.TIMED_OUT):
            rec.failures += 1
        if (
            outcome.state in self.retry.on
            and rec.failures <= rec.task.retries
            and not rec.cancel_requested
            and not self._stopping
        ):
            delay = self.retry.wait_before(rec.failures)
            self._emit(TaskFinished(self.backend.now(), result, retry_in=delay))
            self.log.info(
                "task_retry",
                task_id=task_id,
                attempt=attempt,
                state=outcome.state.value,
                reason=outcome.reason,
                retry_in=delay,
            )
            if delay > 0:
                self.backend.call_later(delay, lambda: self._retry_due(rec))
            else:
                self._make_ready(rec)
            return
        self._complete(rec, result)

    def _retry_due(self, rec: Record) -> None:
        if rec.state is TaskState.PENDING and not self._stopping:
            self._make_ready(rec)
            self._wake_producer.set()

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
            self.log.warning(
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
            assert self._pool is not None
            self._pool.release(rec.placement)
            del self._running[rec.task.id]
        result = TaskResult(
            id=rec.task.id, state=state, attempts=rec.attempts, reason=reason, tags=rec.task.tags
        )
        if cascade:
            self._complete(rec, result)
        else:
            self._set_terminal(rec, result)

    def _tell_policy(self, result: TaskResult) -> None:
        """Run the completion policy's hook; an error in it stops the run (and is raised)."""
        if self._stopping or self._error is not None:
            return
        try:
            self.completion.on_result(result, self)
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

    # -- plumbing ---------------------------------------------------------------------------------

    def _emit(self, event: Event) -> None:
        for obs in self._observers:
            obs.on_event(event)

    def _write(self) -> None:
        """Hand the events so far to the OS: from here they survive a crash of the driver."""
        for obs in self._observers:
            obs.flush()

    async def _commit(self) -> None:
        """Make the events durable, then tell the policy and the waiters about new results.

        Launches need only ``_write`` (a start lost with the node is simply run again), but
        the user never hears of a result before it is on stable storage. Policy hooks may
        submit or cancel (new events, new results), hence the loop.
        """
        while True:
            self._write()
            if self._journal is not None:
                await self._journal.sync()
            if not self._notify:
                return
            told, self._notify = self._notify, []
            for result in told:
                self._tell_policy(result)
            self._progress.set()

    def _fail(self, exc: BaseException) -> None:
        self._error = exc
        if self._logger is not None:
            self.log.error("engine_error", error=repr(exc))
        self._progress.set()


def _expect(name: str, value: object, kind: type, *, optional: bool = False) -> None:
    if (value is None and optional) or isinstance(value, kind):
        return
    raise TypeError(
        f"{name} must be a {kind.__name__} (e.g. from matensemble.strategies or "
        f"matensemble.backends), got {value!r}"
    )


def _ratio(used: float, available: float) -> float:
    return used / available if available > 0 else 0.0


def _why(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
