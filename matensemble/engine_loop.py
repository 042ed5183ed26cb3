"""The engine's two coroutines: the producer starts what fits, the consumer takes in outcomes.

The *producer* starts ready tasks, best-ranked first, while they fit the free resources (see
``Dispatcher.select``), writes their starts to the journal, hands them to the backend, then
waits on an event; it never sleeps or polls. Backends report outcomes through a callback
(``_on_outcome``) into a queue; the *consumer* drains that queue in batches, releases
resources, records the outcome (or queues a retry), wakes the producer, and only then syncs the
journal and tells the waiters. Both run in the ensemble's task group.
"""

from __future__ import annotations

from matensemble.backends.base import Launch, LaunchKey, Outcome
from matensemble.dispatch import Record
from matensemble.engine_state import RunState, why
from matensemble.events import TaskFinished, TaskStarted, TaskSubmitted, TaskWithdrawn
from matensemble.model import Placement, TaskResult, TaskState

__all__ = ["EngineLoop"]


class EngineLoop(RunState):
    """The producer and the consumer of one run, on top of its state."""

    # -- producer ---------------------------------------------------------------------------------

    async def _producer(self) -> None:
        try:
            while True:
                self._wake_producer.clear()
                self._produce()
                self._before_yield(self._wake_producer.is_set())
                await self._wake_producer.wait()
        except Exception as exc:  # a bug or a strategy error: stop the run, report it
            self._fail(exc)

    def _produce(self) -> None:
        """One pass of the producer: start what fits, then say what the engine waits for."""
        starts, held = self._fill()
        self._write()  # the starts are on record (in the OS) before anything runs
        self._launch_all(starts, held)
        if self._notify:
            self._wake_consumer.set()  # results to commit and tell (skips, cancels)
        elif not self._outcomes:  # running tasks or retry backoffs
            self.backend.idle()

    def _launch_all(self, starts: list[Launch], held: bool) -> None:
        """Hand the starts (written already) to the backend; stop the run if the deadline
        holds back every queued task and nothing runs."""
        for launch in starts:
            self._launch(launch)
        nothing_runs = held and not starts and not self._counts[TaskState.RUNNING]
        if nothing_runs and self._deadline is not None:
            self._interrupt("walltime: no queued task can finish before the deadline")

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
        dispatch = self._dispatch

        def start(rec: Record, placement: Placement) -> None:
            starts.append(self._start(rec, placement, now))

        held = dispatch.select(self._pool, now, self._deadline, self._in_flight, start)
        if self._ahead is not None:
            if self._ahead.booking:  # book each node's next tasks behind the running ones
                # Booking goes in order, layer after layer: nothing overtakes (no backfill).
                for layer, pool in enumerate(self._ahead.layers):

                    def book(rec: Record, placement: Placement, layer: int = layer) -> None:
                        starts.append(self._start(rec, placement, now, layer))

                    booked = dispatch.select(
                        pool, now, self._deadline, self._in_flight, book, backfill=False
                    )
                    held = booked or held
            idle = self.backend.can_withdraw and self._pool.free_cores and len(self._ahead)
            if idle and not dispatch.queued():
                self._withdraw_booked()
        return starts, held

    def _withdraw_booked(self) -> None:
        """Resources stand idle, nothing is ready for them, and tasks booked behind running
        ones wait elsewhere: ask the backend for those that fit the idle resources back, in
        the order they were booked, so that they start there (see ``QueueAhead``)."""
        ahead, pool = self._ahead, self._pool
        assert ahead is not None
        assert pool is not None
        tried: list[Placement] = []
        for task_id in ahead.waiting():
            rec = self._records[task_id]
            placement = pool.allocate(rec.task.resources)
            if placement is None:
                continue
            claimed = [layer for layer in ahead.layers if layer.claim(placement)]
            if len(claimed) < len(ahead.layers):  # ids a booked task waits for: not idle
                pool.release(placement)
                for layer in claimed:
                    layer.release(placement)
                continue
            tried.append(placement)
            ahead.withdrawing.add(task_id)
            self.backend.withdraw((task_id, rec.attempts))
            if not pool.free_cores:
                break
        for placement in tried:
            pool.release(placement)
            for layer in ahead.layers:
                layer.release(placement)

    def _in_flight(self) -> int:
        return self._counts[TaskState.RUNNING]

    def _start(
        self, rec: Record, placement: Placement, now: float, layer: int | None = None
    ) -> Launch:
        """``rec`` starts on ``placement`` (of the pool, or with ``layer`` of that layer of
        the ``QueueAhead``: booked, unless it is free in the pool too)."""
        task = rec.task
        rec.state = TaskState.RUNNING
        rec.attempts += 1
        rec.placement = placement
        rec.start = now
        booked = False
        if layer is not None:
            assert self._ahead is not None
            assert self._pool is not None
            booked = not self._ahead.claim_at_once(placement, self._pool, layer)
            if booked:
                self._ahead.book(rec, layer)
        if not booked:
            self._dispatch.running(rec, now)
        counts = self._counts
        counts[TaskState.READY] -= 1
        counts[TaskState.RUNNING] += 1
        self._emit(TaskStarted(now, task.id, rec.attempts, placement))
        return Launch(
            task=task,
            attempt=rec.attempts,
            placement=placement,
            tasks_dir=self._tasks_dir,
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
            self._log.error("launch_error", task_id=launch.task.id, error=repr(exc))
            self._on_outcome(
                Outcome(
                    key=launch.key,
                    state=TaskState.FAILED,
                    reason=f"the {self.backend.name} backend could not launch it: {why(exc)}",
                )
            )

    def _before_yield(self, awake: bool) -> None:
        """A coroutine of the engine waits on its event (``awake``: it is set already, so the
        loop does not run anyone else yet): what a gathering journal (a virtual clock's) holds
        goes to the OS before any other coroutine (a reader of the journal) can run."""
        journal = self._journal
        if not awake and journal is not None and journal.gather:
            journal.write_all()

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
                self._before_yield(self._wake_consumer.is_set())
                await self._wake_consumer.wait()
                self._wake_consumer.clear()
                if not self._outcomes and not self._notify:
                    # Only job ids to record: a write is enough, no sync. A job id lost with
                    # the node is found again by name at resume (``Backend.recover``).
                    self._write()
                    continue
                self._drain_outcomes()
                if not self._results_steer and not self._wake_producer.is_set():
                    await self._refill_then_commit()
                    continue
                self._write()
                journal = self._journal
                syncing = journal is not None and journal.sync_waits()
                if syncing:
                    self._wake_producer.set()  # refill freed slots while the journal syncs
                await self._commit()
                if self._deadline is not None and self.backend.now() >= self._deadline:
                    self._interrupt("walltime reached")
                if not syncing and not self._wake_producer.is_set():
                    # Nothing to overlap: refill here, in the same order (after the commit
                    # told the policy), without a switch to the producer coroutine.
                    self._produce()
        except Exception as exc:
            self._fail(exc)

    async def _refill_then_commit(self) -> None:
        """Refill the slots the outcomes just freed, then commit and tell.

        For a completion policy that ignores results (the default): telling it first would
        change nothing the producer decides. The starts reach the OS in the same write as the
        results; a slow sync (in its thread) runs while the new tasks start.
        """
        if self._deadline is not None and self.backend.now() >= self._deadline:
            self._interrupt("walltime reached")
        starts, held = self._fill()
        self._write()
        journal = self._journal
        if journal is not None and journal.unsynced() and not journal.sync_waits():
            # A quick sync (tmpfs, a disk's cache) goes first: made after the launches, it
            # would wait for the GIL while their workers start them, and look slow.
            await journal.sync()  # in this thread: returns without suspending
        self._launch_all(starts, held)
        await self._commit()
        if not self._outcomes and not self._notify:
            self.backend.idle()

    def _drain_outcomes(self) -> None:
        outcomes = self._outcomes
        while outcomes:
            self._handle(outcomes.popleft())

    def _handle(self, outcome: Outcome) -> None:
        task_id, attempt = outcome.key
        rec = self._records.get(task_id)
        if rec is None or rec.state is not TaskState.RUNNING or rec.attempts != attempt:
            self._log.warning("stale_outcome", task_id=task_id, attempt=attempt)
            return
        ahead = self._ahead
        if ahead is not None and ahead.withdrawing:
            ahead.withdrawing.discard(task_id)
        # Taken back (also by a crashed driver, read on resume), or stopped with the run
        # before it started (queued ahead): this attempt never ran, and a stopped run's
        # teardown records the task as never launched. The user's cancel is final.
        if not rec.cancel_requested and (
            outcome.withdrawn
            or (
                self._stopping
                and outcome.start_time is None
                and outcome.state is TaskState.CANCELLED
            )
        ):
            self._withdrawn(rec)
            return
        if ahead is not None and ahead.gated and not ahead.holds(rec):
            start, end = outcome.start_time, outcome.end_time
            if start is not None and end is not None:  # ``rec.start``: its resources were free
                ahead.ran(end - start, start - rec.start)
        self._release(rec)
        counts = self._counts
        counts[TaskState.RUNNING] -= 1
        counts[TaskState.PENDING] += 1
        rec.state = TaskState.PENDING
        if outcome.start_time is not None and outcome.end_time is not None:
            used = outcome.end_time - outcome.start_time
            cores = gpus = 0
            for slot in rec.placement:  # mostly one: a loop costs less than two generators
                cores += len(slot.cores)
                gpus += len(slot.gpus)
            self._core_seconds += used * cores
            self._gpu_seconds += used * gpus
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
            self._log.info(
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

    def _withdrawn(self, rec: Record) -> None:
        """A booked launch was taken back before it started: it is ready again, and its next
        launch has the same attempt number (this one never ran). The journal says so before
        any start that takes the resources it held (a resume counts them free)."""
        self._emit(TaskWithdrawn(self.backend.now(), rec.task.id, rec.attempts))
        self._release(rec)
        rec.attempts -= 1
        self._make_ready(rec)

    def _retry_due(self, rec: Record) -> None:
        if rec.state is TaskState.PENDING and not self._stopping:
            self._make_ready(rec)
            self._wake_producer.set()
