"""How a run starts: the run directory claimed, the input checked, the journal opened, a resume.

Everything is checked before the first byte is written (bad input leaves no trace, and a
resume refused here leaves the journal as it was); then the run files open, the run's start
and deadline are recorded, a resumed run takes over what its journal recorded (adopting
launches that still run), the first tasks are added, and the producer and consumer start.
"""

from __future__ import annotations

import asyncio

import anyio

from matensemble.engine_stop import EngineStop
from matensemble.events import RunStarted
from matensemble.journal import Journal, Replay
from matensemble.logging import make_logger
from matensemble.model import Placement, Task, TaskState
from matensemble.queue_ahead import QueueAhead
from matensemble.resources import ResourcePool
from matensemble.resume import (
    adopt_left_running,
    read_past,
    replay_figures,
    restore_records,
    unfinished_tasks,
)
from matensemble.rundir import claim_run_dir
from matensemble.status import StatusFile

__all__ = ["EngineStart"]


class EngineStart(EngineStop):
    """Start-up of one run, up to the producer and consumer running."""

    async def _start_up(self) -> None:
        """Claim the run directory, open the backend, check and record the first tasks."""
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
            self.backend.job_ids = self._on_job_id
            inventory = await self.backend.open(self._on_outcome, self._tg)
            self._pool = ResourcePool(inventory)
            if self.backend.queue_ahead:
                backend = self.backend
                self._ahead = QueueAhead(
                    inventory,
                    backend.queue_ahead_same_ids,
                    backend.queue_ahead_below,
                    backend.queue_ahead_depth if backend.queue_ahead_same_ids else 1,
                )
            self._dispatch.use_pool(self._pool)
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
            self._add(initial)
            await self._commit()
        except BaseException as exc:
            await self._close(exc)
            raise
        self._tg.start_soon(self._producer, name="matensemble-producer")
        self._tg.start_soon(self._consumer, name="matensemble-consumer")

    def _open_run_files(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._logger = make_logger(self.run_dir, self.run_id, console=self._console_log)
        durable = self._syncs_to_disk()
        self._journal = Journal(
            self.run_dir,
            durable=durable,
            gather=self.backend.virtual_clock and not durable,  # nothing runs: no rush
        )
        self._observers = [
            self._journal,
            StatusFile(
                self.run_dir,
                self._state_counts,
                self._free_and_total,
                queued_ahead=self._queued_ahead,
            ),
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
        self._log.info(
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
            self._log.warning("run_dir_lock_unsupported", path=str(self._owner.path))
        if deadlines:
            self._deadline = min(deadlines)
            self._log.info("deadline", at=self._deadline, in_seconds=self._deadline - self._t0)
            if not self.backend.virtual_clock:
                self._deadline_timer = asyncio.get_running_loop().call_later(
                    max(0.0, self._deadline - self._t0), self._interrupt, "walltime reached"
                )

    async def _resume_from(self, past: Replay) -> None:
        """Take over the recorded run: adopt what still runs, restore records, reopen the rest."""
        assert self._pool is not None
        if past.torn_line is not None:
            self._log.warning("journal_torn_line_skipped", line=past.torn_line)
        ahead = self._ahead.pool if self._ahead is not None else None
        adopted = await adopt_left_running(
            past, self._pool, self.backend, self._tasks_dir, self.run_id, self._log, ahead
        )
        reopened = restore_records(past, self._records, self._counts, self._finished)
        self._reopen(reopened, adopted)
        self._log.info("journal_replayed", **replay_figures(past, adopted, reopened))
        await self.backend.recover(
            self.run_id, [(i, past.attempts[i]) for i in past.was_running if i not in adopted]
        )

    def _reopen(self, reopened: list[Task], adopted: dict[str, tuple[Placement, bool]]) -> None:
        """Open the journal's unfinished tasks again; those in ``adopted`` are running (or,
        with their flag set, booked behind running ones: see ``QueueAhead``)."""
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
            placement, booked = adopted[task_id]
            rec.state, rec.placement, rec.start = TaskState.RUNNING, placement, now
            self._counts[TaskState.PENDING] -= 1
            self._counts[TaskState.RUNNING] += 1
            if booked and self._ahead is not None:
                self._ahead.book(rec)
            else:
                self._dispatch.running(rec, now)
        for task_id, upstream in skipped:
            self._skip(records[task_id], upstream)
