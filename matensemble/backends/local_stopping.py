"""Stopping a launch of the local backend: its timeout, then SIGTERM, then SIGKILL.

A launch is stopped when its timeout passes, when it is cancelled, and when the backend
closes. The first verdict stands (timed out, cancelled), even if its processes then exit 0;
a launch that has already failed keeps its failure. A launch still waiting for its cores
(``local_ahead``) never starts and ends at once; one a worker or helper is starting is taken
in first, so that no process it started escapes the signals.

The signals go to each unreaped leader's process group (a group id cannot be reused while its
leader is an unreaped zombie): SIGTERM, and SIGCONT (a stopped process cannot act on SIGTERM),
then SIGKILL ``kill_grace`` seconds later. They are sent once the current loop turn is over, so
that a stop of the whole run marks every launch stopping (and drops what is booked) first: a
holder killed now cannot have the task booked behind it started by its worker or helper.

The timeout counts from the start, and is timed with ``loop.call_later``: no thread, no
polling. A launch not started yet when it fires (its helper process still starting) is looked
at again a timeout later.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable

from matensemble.backends.local_ahead import QueuedLaunches
from matensemble.backends.local_helpers import Helpers
from matensemble.backends.local_inventory import kill_group
from matensemble.backends.local_run import Run
from matensemble.backends.local_spawner import Spawners
from matensemble.model import TaskState

__all__ = ["Stopper"]


class Stopper:
    """Times out and stops the launches of one backend (on the event loop thread).

    Args:
        loop: the running loop (the timers).
        spawners: what starts the processes (helper processes or worker threads).
        ahead: with ``queue_ahead``: the launches holding or waiting for their cores.
        kill_grace: seconds from SIGTERM to SIGKILL.
        finish: ends a launch that never started (it reports its outcome).
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        spawners: Spawners | Helpers,
        ahead: QueuedLaunches | None,
        kill_grace: float,
        finish: Callable[[Run], None],
    ) -> None:
        self._loop = loop
        self._spawners = spawners
        self._ahead = ahead
        # A helper reaps the processes it started, so it knows whose a pid still is.
        self._signal_group: Callable[[int, int], None] = (
            spawners.signal if isinstance(spawners, Helpers) else kill_group
        )
        self._kill_grace = kill_grace
        self._finish = finish

    def time_out_in(self, run: Run, after: float) -> None:
        """Stop ``run`` as timed out ``after`` seconds from now (its timeout)."""
        run.timer = self._loop.call_later(after, self._time_out, run)

    def _time_out(self, run: Run) -> None:
        """The timeout, counted from the start (the timer was set at launch): a launch not
        started yet (its helper process still starting) is looked at again a timeout later."""
        self._spawners.hand_over()
        timeout = run.launch.task.timeout
        assert timeout is not None
        start = run.start_time
        if start is None or (left := start + timeout - time.time()) > 0:
            self.time_out_in(run, timeout if start is None else left)
            return
        self.stop(run, TaskState.TIMED_OUT, f"timed out after {timeout:g}s")

    def stop(self, run: Run, state: TaskState, reason: str) -> None:
        """Stop ``run`` with this verdict (unless it has one, or has failed)."""
        if run.verdict is None and run.failure is None:  # the first verdict stands
            run.verdict = (state, reason)
        run.stopping = True  # a worker that starts it from now on wakes the loop
        if self._ahead is not None and self._ahead.drop_waiting(run):
            self._loop.call_soon(self._finish, run)  # it never started: it ends now
            return
        self._spawners.hand_over()  # what the workers started before
        if self._ahead is not None:
            self._ahead.stop(run)
        # Signalled once this loop turn is over: see the module's docstring.
        self._loop.call_soon(self.terminate, run)

    def terminate(self, run: Run) -> None:
        """SIGTERM (and SIGCONT) to ``run``'s processes now, SIGKILL after the grace."""
        if run.kill_timer is not None:
            return
        if run.timer is not None:
            run.timer.cancel()
        self.signal(run, signal.SIGTERM)
        self.signal(run, signal.SIGCONT)  # a stopped process cannot act on SIGTERM
        run.kill_timer = self._loop.call_later(self._kill_grace, self.signal, run, signal.SIGKILL)

    def signal(self, run: Run, signum: int) -> None:
        """Send ``signum`` to the process group of each of ``run``'s processes."""
        for pid in run.procs:  # unreaped leaders only, so each group id is still theirs
            self._signal_group(pid, signum)
