"""Queueing ahead in the local backend: which launch holds each core, and who waits for it.

With ``LocalBackend(queue_ahead=True)`` the engine launches each core's next task while the
one before it still runs there (booked on the same core ids: see ``matensemble.queue_ahead``).
The backend keeps its own account of the cores: a launch *holds* its cores from ``launch()``
until it has been reaped, and a launch that arrives on cores someone holds *waits* until all
of them are free, whatever else waits (the engine books waiting launches on disjoint ids, and
moves one in, on the same ids, at the same moment: when the last holder's outcome comes in).

Two ways to wait. A one-process launch behind exactly one one-process holder that the same
worker started last waits in that worker (``Spawners.submit(after=...)``): the worker watches
the holder's ``pidfd``, which turns readable when it exits, before the loop has seen the exit,
and starts the next process at once. Any other waits in the loop and is handed to a worker
when the loop has reaped the last holder. Either way it holds its cores from then on.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from matensemble.backends.local_helpers import Helpers
from matensemble.backends.local_run import Job, Run
from matensemble.backends.local_spawner import Spawners

__all__ = ["CoreHolders", "QueuedLaunches"]


class CoreHolders:
    """The launch holding each core, and the launches waiting for theirs, in arrival order."""

    def __init__(self) -> None:
        self._holder: dict[int, object] = {}
        self._waiting: dict[object, Sequence[int]] = {}  # in arrival order

    def blockers(self, cores: Sequence[int]) -> list[object]:
        """The launches holding any of ``cores``, each once."""
        holder = self._holder
        found: list[object] = []
        for core in cores:
            run = holder.get(core)
            if run is not None and run not in found:
                found.append(run)
        return found

    def hold(self, run: object, cores: Sequence[int]) -> None:
        for core in cores:
            self._holder[core] = run

    def wait(self, run: object, cores: Sequence[int]) -> None:
        """``run`` takes ``cores`` once nobody holds any of them (see ``release``)."""
        self._waiting[run] = cores

    def forget(self, run: object, cores: Sequence[int]) -> list[object]:
        """``run`` ended: it holds and waits for nothing any more. Returns the waiting launches
        that now hold their cores (they were waiting for these), in arrival order."""
        if self._waiting.pop(run, None) is not None:
            return []
        holder = self._holder
        for core in cores:
            if holder.get(core) is run:
                del holder[core]
        if not self._waiting:
            return []
        now_holding: list[object] = []
        for waiting, wanted in list(self._waiting.items()):
            if not any(core in holder for core in wanted):
                del self._waiting[waiting]
                self.hold(waiting, wanted)
                now_holding.append(waiting)
        return now_holding


class QueuedLaunches:
    """The launches of a backend with ``queue_ahead``: each holds its cores or waits for them."""

    def __init__(self, spawners: Spawners | Helpers) -> None:
        self._holders = CoreHolders()
        self._spawners = spawners

    def queue(self, run: Run, job: Job) -> bool:
        """``run`` holds its cores (``False``: start it now), or waits for them (``True``): in
        the worker that started the one launch holding them, or here."""
        run.cores = tuple(core for slot in run.launch.placement for core in slot.cores)
        blockers = self._holders.blockers(run.cores)
        if not blockers:
            self._holders.hold(run, run.cores)
            return False
        run.queued = True
        self._holders.wait(run, run.cores)
        before = blockers[0]
        assert isinstance(before, Run)
        alone = len(blockers) == 1 and run.copies == before.copies == 1
        if not (alone and self._spawners.submit(run, *job, after=before)):
            run.waiting = job  # it waits here
        return True

    def ended(self, run: Run) -> None:
        """``run`` was reaped (or never started): the launches waiting here for its cores that
        now have all of theirs are given to the workers."""
        for ready in self._holders.forget(run, run.cores):
            assert isinstance(ready, Run)
            if ready.waiting is not None:
                job, ready.waiting = ready.waiting, None
                self._spawners.submit(ready, *job)

    def drop_waiting(self, run: Run) -> bool:
        """``run`` is stopped: if it waits here, it never starts (``True``)."""
        if run.waiting is None:
            return False
        outputs = run.waiting[3]
        run.waiting = None
        for fd in outputs or ():
            os.close(fd)
        return True

    def withdraw(self, run: Run) -> bool:
        """Take ``run`` back unless it has started (``Backend.withdraw``): ``True`` if it waited
        here (it ends now, never started); one waiting in a worker or helper is let go there
        and comes back as never started, unless that one has started it already."""
        if not run.queued or run.procs or run.start_time is not None or run.stopping:
            return False
        run.withdrawing = True
        if self.drop_waiting(run):
            return True
        self.stop(run)
        return False

    def stop(self, run: Run) -> None:
        """``run`` is stopped: if it waits in a worker, that worker lets it go."""
        if run.queued and not run.procs and run.cores:
            self._spawners.wake(run.cores[0])
