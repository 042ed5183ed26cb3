"""Taking a queued-ahead job back from Flux without a race (``queue_ahead="depend"``).

The engine asks for a booked launch back when cores stand idle with nothing ready for them
(``Backend.withdraw``, see ``matensemble.queue_ahead``). A plain cancel cannot promise that the
job has not started: a job in the scheduler's queue can be allocated, and its shell started,
while the cancel travels to the job manager, and a hold (urgency 0) does not stop an alloc
request already with the scheduler either. What can be promised, read in flux-core's job
manager (0.88):

- A job that is *held* (urgency 0) when it reaches the SCHED state gets priority 0, and the
  job manager never sends an alloc request for a job of priority 0.
- A job submitted with an ``afterany`` dependency (``flux_chains``) stays in DEPEND, with no
  alloc request, until the job it waits for is inactive; the job manager posts that job's
  ``clean`` event to its journal before the dependency is released (the ``dependency-after``
  plugin runs on the INACTIVE state, after the event is journaled), and the journal is one
  ordered stream.

So: **hold** the job (``job-manager.urgency``, 0), then read where its ``urgency`` event falls
in our journal stream. If the ``clean`` of the job it depends on has not come before it, the
hold was set while the job waited in DEPEND: it will never be allocated, and a cancel then
ends it without it ever running (``TAKEN_BACK`` names that cancel, so that the outcome is
``withdrawn``, also when a resumed driver reads it from the job list). Otherwise the job may
have an alloc request out: the hold is **released** (its urgency restored) and the job runs
where it was booked. A job with no dependency, or whose dependency has ended, is not held at
all. Either way the task runs exactly once.

A driver that dies while it holds a job leaves it held: a resume that adopts it restores its
urgency (``flux_recovery``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from matensemble.backends.flux_job import TAKEN_BACK, FluxJob, TakeBack

if TYPE_CHECKING:
    from matensemble.backends.base import Launch
    from matensemble.backends.flux_chains import DependencyChains
    from matensemble.backends.flux_reactor import FluxReactorBridge

__all__ = ["HOLD", "TAKEN_BACK", "TakeBack", "TakeBacks"]

HOLD = 0  # FLUX_JOB_URGENCY_HOLD


class TakeBacks:
    """The two steps of taking a job back, for one channel.

    Args:
        bridge: the reactor bridge of the channel's handle (the urgency requests go there).
        cancel: cancels (job id, note), without waiting.
        relaunch: submits a launch again (``FluxBackend.launch``), for a job taken back to
            move it (``on_finish``).
    """

    __slots__ = ("_bridge", "_cancel", "_relaunch")

    def __init__(
        self,
        bridge: FluxReactorBridge,
        cancel: Callable[[int, str], None],
        relaunch: Callable[[Launch], None],
    ) -> None:
        self._bridge = bridge
        self._cancel = cancel
        self._relaunch = relaunch

    def ask(self, job: FluxJob) -> bool:
        """Hold ``job`` if it may still be taken back; ``False``: it runs on (it has no
        dependency, the job it depends on is clean, it was allocated, or it is going)."""
        if job.taking_back is not None:
            job.relaunch = False  # being moved: the engine wants it back instead
            return False
        after = job.after
        if (
            job.jobid is None
            or after is None
            or after.clean
            or job.cancel_requested
            or "alloc" in job.times
        ):
            return False
        job.taking_back = TakeBack.HOLDING
        self._set_urgency(job.jobid, HOLD)
        return True

    def on_finish(self, job: FluxJob, chains: DependencyChains) -> None:
        """``job`` finished and frees its cores: if no launch waits for it there, while one
        on its node waits for a job still running (``DependencyChains.stranded``), take that
        one back and submit it again without a dependency, so that it takes those cores."""
        stranded = chains.stranded(job)
        if stranded is not None and self.ask(stranded):
            stranded.relaunch = True

    def relaunched(self, job: FluxJob) -> bool:
        """``job`` never ran and is clean: if it was taken back to move it, submit its launch
        again (``True``: do not report it)."""
        if job.taking_back is not TakeBack.TAKING or not job.relaunch or job.cancel_requested:
            return False
        self._relaunch(job.launch)
        return True

    def on_urgency(self, job: FluxJob, event: Mapping[str, Any]) -> None:
        """``job``'s ``urgency`` event came: take it back, or release it (see above)."""
        if job.taking_back is not TakeBack.HOLDING or job.jobid is None:
            return
        if (event.get("context") or {}).get("urgency") != HOLD:
            return  # not our hold's event
        after = job.after
        if after is not None and not after.clean and "alloc" not in job.times:
            job.taking_back = TakeBack.TAKING
            self._cancel(job.jobid, TAKEN_BACK)
        else:
            job.taking_back = TakeBack.RELEASED
            self._set_urgency(job.jobid, job.urgency)

    def _set_urgency(self, jobid: int, urgency: int) -> None:
        """Send ``job-manager.urgency`` without waiting (an error: the job ended or runs)."""
        if not self._bridge.lost:
            answer = self._bridge.request("job-manager.urgency", {"id": jobid, "urgency": urgency})
            answer.add_done_callback(_ignore)


def _ignore(answer: asyncio.Future[Any]) -> None:
    if not answer.cancelled():
        answer.exception()
