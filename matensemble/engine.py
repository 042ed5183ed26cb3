"""The engine: ``Ensemble`` and its public API.

One event loop thread owns all run state. The engine is built in layers, one job each:
``engine_state`` (the records and the only code that changes a task's state), ``engine_loop``
(the producer that starts what fits and the consumer that takes in outcomes, in an anyio task
group owned by the ensemble), ``engine_stop`` (teardown: leaving the ``async with`` block, or
cancelling ``run()``, cancels running tasks in the backend and records every unfinished task as
cancelled *and interrupted*, so that ``resume`` runs it again; only ``cancel(id)`` is final),
``engine_start`` (the run directory, the checks, the journal, a resume), and here the
``Ensemble`` that users hold: its arguments, ``run``, and the steering calls.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import msgspec

from matensemble.backends.base import Backend
from matensemble.dispatch import Record
from matensemble.engine_start import EngineStart
from matensemble.functions.front import FunctionCalls
from matensemble.model import Task, TaskResult, TaskState
from matensemble.observer import Observer
from matensemble.signals import release_sigterm, stop_on_sigterm
from matensemble.strategies import FIFO, Adaptive, CompletionPolicy, RetryPolicy, SubmissionOrder
from matensemble.summary import RunSummary

__all__ = ["Ensemble"]


class Ensemble(EngineStart, FunctionCalls):
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
        if resume is not None:
            if run_dir is not None and Path(run_dir) != Path(resume):
                raise ValueError("give either run_dir or resume (the run directory to resume)")
            run_dir = resume
        super().__init__(
            [tasks] if isinstance(tasks, Task) else list(tasks),
            backend=backend,
            strategy=strategy or FIFO(),
            completion=completion or Adaptive(),
            retry=retry or RetryPolicy(),
            run_dir=Path(run_dir) if run_dir is not None else None,
            run_id=run_id,
            observers=observers,
            console_log=console_log,
            resume=resume is not None,
            add_new=add_new,
            walltime=walltime,
            durable=durable,
            handle_signals=handle_signals,
            allow_backend_change=allow_backend_change,
        )

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
        if self._handle_signals:
            stop_on_sigterm(self)
        try:
            await self._start_up()
        except BaseException:
            release_sigterm(self)
            raise
        self._enter_context()  # calls of @task functions come here
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._leave_context()
        error = exc
        if error is None:
            try:
                await self.wait()  # leaving the block normally waits for every task
            except BaseException as inner:
                error = inner
        try:
            await self._close(error)
        finally:
            release_sigterm(self)
        error = error or self._error  # e.g. the disk filled up while the last files were written
        if exc is None and error is not None:
            raise error

    # -- public API -----------------------------------------------------------------------------

    @property
    def log(self) -> Any:
        """This ensemble's structlog logger (bound to its run id)."""
        return self._log

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
        self._add(batch)

    def stop(self, reason: str = "stopped") -> None:
        """Stop the run gracefully: start nothing more and cancel the running tasks.

        ``wait()`` and ``run()`` return, and ``completed()`` ends; leaving the ``async with``
        block then kills the running process trees (TERM, then KILL after the backend's grace)
        and records the running and queued tasks as ``cancelled`` *and interrupted* (their
        dependents as ``skipped``), so that ``resume`` runs them all again. Signals, the
        walltime and the CLI use this.
        """
        self._interrupt(reason)

    def abort(self) -> None:
        """Kill every running task at once and hand the journal to the OS; nothing waits.

        For a driver that must exit now (a second Ctrl-C): the journal stays replayable and
        ``resume`` runs again whatever was running.
        """
        self._interrupt("aborted")  # what ends from now on is run again on resume
        self.backend.kill()
        self._write()
        if self._journal is not None:
            self._journal.write_all()  # also what a virtual clock's journal gathers

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
            self._settled.clear()
            await self._settled.wait()
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
        return self._state_counts()

    @property
    def queued_ahead(self) -> int:
        """How many of the running tasks (``counts["running"]``) are queued ahead: launched
        behind the task running on their resources and not started yet (see
        ``matensemble.queue_ahead``); 0 with a backend that does not queue ahead."""
        return self._queued_ahead()

    @property
    def durable(self) -> bool:
        """Whether this run syncs what it records (journal, results) to disk before telling."""
        return self._syncs_to_disk()

    @property
    def resources(self) -> tuple[int, int, int, int]:
        """``(free_cores, total_cores, free_gpus, total_gpus)``."""
        return self._free_and_total()

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


def _expect(name: str, value: object, kind: type, *, optional: bool = False) -> None:
    if (value is None and optional) or isinstance(value, kind):
        return
    raise TypeError(
        f"{name} must be a {kind.__name__} (e.g. from matensemble.strategies or "
        f"matensemble.backends), got {value!r}"
    )


def _ratio(used: float, available: float) -> float:
    return used / available if available > 0 else 0.0
