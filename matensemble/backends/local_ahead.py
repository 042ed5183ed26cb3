"""Queueing ahead in the local backend: which launch holds each core, and who waits for it.

With ``LocalBackend(queue_ahead=True)`` the engine launches each core's next task while the
one before it still runs there (booked on the same core ids: see ``matensemble.queue_ahead``).
The backend keeps its own account of the cores (and GPUs, alike: ``Id``): a launch *holds*
its cores from ``launch()`` until it has been reaped, and a launch that arrives on cores
someone holds or waits for *waits* until it comes first on each of them and all of them are
free: launches start on a core in the order they arrived there (up to
``Backend.queue_ahead_depth`` of them wait behind the one running; the engine moves each in,
on the same ids, once the outcomes of those before it there have come in).

Two ways to wait. A one-process launch behind exactly one one-process launch (the one that
came last on each of its cores) that the same worker or helper was given last waits there
(``Spawners.submit(after=...)``): a worker watches the holder's ``pidfd``, which turns readable
when it exits, before the loop has seen the exit, and starts the next process at once; a
helper process chains its bookings, so that a launch can wait there behind one that waits
too. Any other waits in the loop and is handed to a worker or helper when the loop has reaped
the last launch before it on its cores. Either way it holds its cores from then on.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Sequence

from matensemble.backends.local_helpers import Helpers
from matensemble.backends.local_run import Job, Run
from matensemble.backends.local_spawner import Spawners

__all__ = ["CoreHolders", "Id", "QueuedLaunches"]


Id = int | str
"""What a launch holds or waits for: a core (its id) or a GPU (its name). A launch holds its
GPUs as it holds its cores: one booked on a free core behind a task holding its GPU on another
core waits for that task."""


class CoreHolders:
    """The launch holding each core, and the launches waiting for each, in arrival order.

    Per-core first in, first out: a waiting launch takes its cores once none of them is held
    and it is the first launch still waiting for each of them (``Backend.queue_ahead_depth``).
    """

    def __init__(self) -> None:
        self._holder: dict[Id, object] = {}
        self._line: dict[Id, deque[object]] = {}  # core -> the launches waiting for it
        self._wanted: dict[object, Sequence[Id]] = {}  # a waiting launch -> its cores

    def blockers(self, cores: Sequence[Id]) -> list[object]:
        """Per core of ``cores``, the launch that came last of those holding or waiting for
        it (a launch arriving now on that core comes after it), each once."""
        holder, lines = self._holder, self._line
        found: list[object] = []
        for core in cores:
            line = lines.get(core)
            run = line[-1] if line else holder.get(core)
            if run is not None and run not in found:
                found.append(run)
        return found

    def hold(self, run: object, cores: Sequence[Id]) -> None:
        for core in cores:
            self._holder[core] = run

    def wait(self, run: object, cores: Sequence[Id]) -> None:
        """``run`` takes ``cores`` once nobody holds them and nobody who came before it waits
        for any of them (see ``forget``)."""
        self._wanted[run] = cores
        lines = self._line
        for core in cores:
            line = lines.get(core)
            if line is None:
                line = lines[core] = deque()
            line.append(run)

    def forget(self, run: object, cores: Sequence[Id]) -> list[object]:
        """``run`` ended: it holds and waits for nothing any more. Returns the waiting launches
        that now hold their cores (they waited on ``cores``), in the order of those cores."""
        wanted = self._wanted.pop(run, None)
        if wanted is not None:  # it never took its cores: those behind it may go first now
            for core in wanted:
                line = self._line[core]
                line.remove(run)
                if not line:
                    del self._line[core]
        else:
            holder = self._holder
            for core in cores:
                if holder.get(core) is run:
                    del holder[core]
        if not self._line:
            return []
        return self._move_in(cores)

    def _move_in(self, cores: Sequence[Id]) -> list[object]:
        """The first launch waiting on each of ``cores`` takes its cores if all are free and
        it comes first on each of them."""
        holder, lines = self._holder, self._line
        now_holding: list[object] = []
        for core in cores:
            line = lines.get(core)
            if not line or core in holder:
                continue
            first = line[0]
            wanted = self._wanted[first]
            if any(c in holder or lines[c][0] is not first for c in wanted):
                continue
            del self._wanted[first]
            for c in wanted:
                lines[c].popleft()
                if not lines[c]:
                    del lines[c]
            self.hold(first, wanted)
            now_holding.append(first)
        return now_holding


class QueuedLaunches:
    """The launches of a backend with ``queue_ahead``: each holds its cores or waits for them."""

    def __init__(self, spawners: Spawners | Helpers) -> None:
        self._holders = CoreHolders()
        self._spawners = spawners

    def queue(self, run: Run, job: Job) -> bool:
        """``run`` holds its cores (``False``: start it now), or waits for them (``True``): in
        the worker or helper given the one launch before it on its cores, or here."""
        ids: tuple[Id, ...] = ()
        for slot in run.launch.placement:
            ids += slot.cores + slot.gpus
        run.ids = ids
        blockers = self._holders.blockers(run.ids)
        if not blockers:
            self._holders.hold(run, run.ids)
            return False
        run.queued = True
        self._holders.wait(run, run.ids)
        before = blockers[0]
        assert isinstance(before, Run)
        alone = len(blockers) == 1 and run.copies == before.copies == 1
        if not (alone and self._spawners.submit(run, *job, after=before)):
            run.waiting = job  # it waits here
        return True

    def ended(self, run: Run) -> None:
        """``run`` was reaped (or never started): the launches waiting here for its cores that
        now have all of theirs are given to the workers."""
        for ready in self._holders.forget(run, run.ids):
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
        if run.queued and not run.procs and run.ids:
            self._spawners.wake(run.launch.placement[0].cores[0])
