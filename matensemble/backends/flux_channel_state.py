"""One channel's state, and what ends its launches: cancelling, taking back, failing, closing.

``ChannelState`` holds what a channel to one Flux instance knows (the handle, its reactor
bridge, our launches and where each stands, the launches parked in the driver, the partitions'
own jobs) and everything that ends launches without a job event: a cancel, a take-back
(``flux_takeback``), a failure of the connection or the journal, a close. ``FluxChannel``
(``flux_channel``) adds the rest: submitting, following and what the job events say.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping
from typing import Any

from matensemble.backends.base import Launch, LaunchKey, Outcome
from matensemble.backends.flux_holds import NodeHolds
from matensemble.backends.flux_inventory import InventoryMap
from matensemble.backends.flux_job import TAKEN_BACK, FluxJob
from matensemble.backends.flux_journal import EventsJournal
from matensemble.backends.flux_launches import FluxLaunches
from matensemble.backends.flux_reactor import FluxReactorBridge
from matensemble.backends.flux_takeback import TakeBacks
from matensemble.backends.flux_unanswered import UnansweredSubmits
from matensemble.backends.flux_watched import WatchedJobs
from matensemble.errors import BackendError
from matensemble.model import TaskState

__all__ = ["ChannelState"]

# Events the journal sends us; the others (validate, depend, priority, release, free, ...) are
# filtered out in the job manager, before they cost a message (``urgency`` comes only for a
# job being taken back, ``flux_takeback``). ``submit`` (it carries the jobspec: the largest
# message of a job) only where jobs are recognised by their tag: the partitions' own jobs,
# whose ``memo`` carries a child instance's URI.
_EVENTS = {"alloc": 1, "start": 1, "exception": 1, "finish": 1, "clean": 1, "urgency": 1}
_EVENTS_WITH_MEMO = {**_EVENTS, "submit": 1, "memo": 1}


class ChannelState:
    """Our jobs in one Flux instance: their state, and what ends them without a job event.

    Args:
        flux: the imported ``flux`` package.
        handle: an open handle to the instance, used only from ``loop``'s thread.
        loop: the running loop.
        token: names this driver's jobs in the journal.
        report: receives each launch's ``Outcome``, on the loop thread.
        settled: called when a job reported earlier is clean (``in_flight()`` fell).
        job_ids: receives (launch key, job id as journaled) once Flux names a launch's job.
        on_lost: called once with a reason when the connection or the journal fails; every
            launch in flight has been reported failed by then.
        relaunch: submits a launch again, its dependency chosen anew (a job moved by
            ``flux_takeback``).
        submit_due: submits a parked launch whose turn came, depending on the job given (or
            on none), which ``DependencyChains.next_due`` chose (see ``flux_chains``).
        prefix: written before each job id (``"<partition job id>/"`` for a partition).
        memo: also follow ``submit`` and ``memo`` events (for jobs that are child instances).
    """

    # What the job events say about our jobs is ``FluxChannel``'s to take in.
    _on_job_events: Callable[[int, list[Mapping[str, Any]], Mapping[str, Any]], None]

    def __init__(
        self,
        flux: Any,
        handle: Any,
        loop: asyncio.AbstractEventLoop,
        *,
        token: str,
        report: Callable[[Outcome], None],
        settled: Callable[[], None],
        job_ids: Callable[[LaunchKey, str], None],
        on_lost: Callable[[str], None],
        relaunch: Callable[[Launch], None],
        submit_due: Callable[[Launch, FluxJob | None], None],
        prefix: str = "",
        memo: bool = False,
    ) -> None:
        self.flux = flux
        self.handle = handle
        self.prefix = prefix
        self.name = ""  # e.g. "partition 0 (Flux job 123): ", before the reasons it gives
        self.map = InventoryMap({})
        self.broken: str | None = None
        self.closing = False
        self.token = token
        self._report = report
        self._settled = settled
        self._job_ids = job_ids
        self._on_lost = on_lost
        self._events = _EVENTS_WITH_MEMO if memo else _EVENTS
        self._loop = loop
        self.bridge = FluxReactorBridge(
            handle, loop, lambda e: self.fail(f"{self.name}Flux error: {e}")
        )
        self._journal = EventsJournal(
            flux, handle, self.bridge, self._events, self._on_job_events, self._journal_lost
        )
        self._launches = FluxLaunches()
        self._unanswered = UnansweredSubmits()
        self._holds = NodeHolds()  # nodes our exclusive jobs hold, launches parked behind them
        self._watched = WatchedJobs()  # partitions: jobs of our own that are not launches
        self._submit_due = submit_due
        self._takebacks = TakeBacks(self.bridge, self.cancel_job, relaunch)
        self._novalidate: int = flux.constants.FLUX_JOB_NOVALIDATE

    def in_flight(self) -> int:
        """Launches not reported yet, and reported jobs that are not ``clean`` yet."""
        return self._launches.in_flight()

    def _end_unsent(
        self, job: FluxJob, state: TaskState, reason: str, withdrawn: bool = False
    ) -> None:
        """A parked launch ends without a job."""
        if self._launches.refused(job):
            key = job.launch.key
            self._report(Outcome(key=key, state=state, reason=reason, withdrawn=withdrawn))

    # -- cancelling ---------------------------------------------------------------------------

    def cancel(self, key: LaunchKey) -> None:
        """Cancel the launch's job; if its id is not known yet, as soon as it is."""
        job = self._launches.open.get(key)
        if job is not None and not job.cancel_requested:
            job.cancel_requested = True
            if self._unpark(job):  # never submitted: it ends now, without a job
                reason = "backend closed" if self.closing else "cancelled by matensemble"
                self._loop.call_soon(self._end_unsent, job, TaskState.CANCELLED, reason)
                return
            self._send_cancel(job)

    def _unpark(self, job: FluxJob) -> bool:
        """Take a launch not submitted yet out of where it waits (behind an exclusive job,
        ``flux_holds``, or for its turn, ``flux_chains``); ``False``: it was submitted."""
        if self._holds.unpark(job.launch):
            return True
        chains = self._launches.chains
        return chains is not None and chains.unpark(job)

    def cancel_job(self, jobid: int, reason: str) -> None:
        """Cancel any job of this instance by id, without waiting for the answer."""
        if self.bridge.lost:
            return
        try:
            future = self.flux.job.cancel_async(self.handle, jobid, reason)
        except OSError:  # the connection is going: the job goes with its instance
            return
        future.then(self.bridge.callback(_ignore_reply))
        self.bridge.kick()

    def withdraw(self, key: LaunchKey) -> None:
        """Take the launch's queued job back if that is sure to stop it before it starts
        (``flux_takeback``): its outcome is then ``withdrawn``; otherwise it runs on."""
        job = self._launches.open.get(key)
        if job is None or job.cancel_requested:
            return
        if self._unpark(job):  # not submitted yet: it comes back at once
            self._loop.call_soon(self._end_unsent, job, TaskState.CANCELLED, TAKEN_BACK, True)
        else:
            self._takebacks.ask(job)

    def cancel_all(self) -> None:
        for job in list(self._launches.open.values()):
            self.cancel(job.launch.key)

    def kill(self, reason: str) -> None:
        """Send a cancel for every job in flight, without waiting (the driver exits next)."""
        if self.bridge.lost:
            return
        for job in list(self._launches.open.values()):
            if job.jobid is not None:
                with contextlib.suppress(OSError):
                    self.flux.job.cancel_async(self.handle, job.jobid, reason)

    def _send_cancel(self, job: FluxJob) -> None:
        if job.jobid is None or job.cancel_sent or not job.cancel_requested:
            return
        job.cancel_sent = True
        self.cancel_job(job.jobid, "backend closed" if self.closing else "cancelled by matensemble")

    def _journal_lost(self, exc: OSError) -> None:
        if not self.closing:
            self.fail(f"{self.name}Flux stopped sending job events: {exc}")

    # -- failing and closing ------------------------------------------------------------------

    def fail(self, reason: str) -> None:
        """Fail every launch in flight (cancelling its job if Flux can still be asked)."""
        first = self.broken is None
        if first:
            self.broken = reason
        self._journal.refuse(BackendError(reason))
        for job in list(self._launches.open.values()):
            job.cancel_requested = True
            if not self.bridge.lost:
                self._send_cancel(job)
        self._drop_jobs(TaskState.FAILED, reason)
        self._watched.lose_all(reason)
        if first:
            self._on_lost(reason)

    def abandon(self, reason: str) -> None:
        """Report every launch still open as cancelled at once (a close that was cancelled)."""
        self._drop_jobs(TaskState.CANCELLED, reason)

    def _drop_jobs(self, state: TaskState, reason: str) -> None:
        """Stop following every job, and report each launch still open as ``state``; one
        never submitted (parked, see ``flux_holds`` and ``flux_chains``) that would fail comes
        back ``withdrawn`` instead: no job was made for it, so it may run elsewhere (another
        partition), on the same attempt."""
        self._unanswered.clear()
        self._holds.clear()
        for job in self._launches.drop_all():
            key = job.launch.key
            if state is TaskState.FAILED and job.jobid is None and "submit" not in job.times:
                why = f"{reason} (not submitted yet)"
                self._report(
                    Outcome(key=key, state=TaskState.CANCELLED, reason=why, withdrawn=True)
                )
            else:
                self._report(Outcome(key=key, state=state, reason=reason))

    async def end_journal(self) -> None:
        """Ask the job manager to end our journal stream, and wait until it has."""
        await self._journal.end()

    def shutdown(self) -> None:
        """Stop watching the handle; the bindings close it when the last reference goes."""
        self.bridge.close()
        self._journal.forget()


def _ignore_reply(future: Any) -> None:
    """Cancel replies: an error only means the job had already ended."""
    with contextlib.suppress(OSError):
        future.get()
