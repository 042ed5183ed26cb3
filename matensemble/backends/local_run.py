"""One launch of the local backend in flight, as the event loop and the workers see it."""

from __future__ import annotations

import asyncio
import time

from matensemble.backends.base import Launch, Outcome
from matensemble.backends.local_failures import Exit, Process
from matensemble.model import TaskState

__all__ = ["Job", "Run", "exit_seen", "is_stopping"]

# What a worker needs to start a launch: its copies, the working directory, the task
# directory, and its stdout and stderr if already open (``local_spawner``).
Job = tuple[list[Process], str, str, tuple[int, int] | None]


class Run:
    """One launch in flight: its unreaped processes, its timers, and how it is ending."""

    def __init__(self, launch: Launch, copies: int) -> None:
        self.launch = launch
        self.copies = copies
        self.procs: set[int] = set()  # pids of the unreaped processes
        self.start_time: float | None = None
        self.timer: asyncio.TimerHandle | None = None  # the timeout
        self.kill_timer: asyncio.TimerHandle | None = None  # set once termination has begun
        self.verdict: tuple[TaskState, str] | None = None  # TIMED_OUT or CANCELLED, and why
        self.stopping = False  # set before the loop takes in what the workers started
        self.failure: Exit | None = None  # the first copy that failed, or could not start
        self.ids: tuple[int | str, ...] = ()  # queueing ahead: cores, GPUs it holds or waits for
        self.queued = False  # queueing ahead: it waited, or waits, for its cores
        self.waiting: Job | None = None  # queueing ahead: it waits in the loop, not yet given
        self.exit_seen: float | None = None  # when a worker saw it exit (its end_time)
        self.withdrawing = False  # queueing ahead: taken back, unless it started already

    def outcome(self) -> Outcome:
        """How the launch ended, now that its last process is reaped: its verdict (timed out,
        cancelled) if it has one, else withdrawn if it was taken back before it started, else
        failed by its first failure, else succeeded."""
        if self.withdrawing and self.start_time is None and not (self.verdict or self.failure):
            return Outcome(
                key=self.launch.key, state=TaskState.CANCELLED, reason="cancelled", withdrawn=True
            )
        returncode, signum, reason = self.failure or (0, None, None)
        state = TaskState.FAILED if self.failure else TaskState.SUCCEEDED
        if self.verdict is not None:
            state, reason = self.verdict
        return Outcome(
            key=self.launch.key,
            state=state,
            returncode=returncode,
            signal=signum,
            reason=reason,
            start_time=self.start_time,
            end_time=self.exit_seen or time.time(),
        )


def is_stopping(run: object) -> bool:
    """Whether the launch is being stopped or withdrawn: a worker or helper that has not
    started it yet lets it go; one that started it wakes the loop for it."""
    return isinstance(run, Run) and (run.stopping or run.withdrawing)


def exit_seen(run: object, when: float) -> None:
    """A worker saw ``run``'s one process exit at ``when`` (before the loop reaps it): that is
    its end, before the start of the launch that worker starts next on its cores."""
    if isinstance(run, Run):
        run.exit_seen = when
