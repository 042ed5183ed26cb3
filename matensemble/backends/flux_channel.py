"""One connection to one Flux instance: submit our jobs there and follow them to their end.

A channel owns a handle, the ``FluxReactorBridge`` that drives its reactor from the asyncio
loop, and one stream of the job events we use (``flux_journal``). It knows our jobs by the ids
their submit answers name (an event that overtakes its job's answer is held until the answer
comes, see ``flux_unanswered``), reports each launch at its
``finish`` event (every process has exited, its output is written) or at ``clean`` if it never
ran, and keeps counting the job until it is ``clean``, so that waiting for ``in_flight() == 0``
means nothing of ours is left in the instance.

``FluxBackend`` uses one channel for the enclosing instance, or one per partition (a child
instance) plus one for the enclosing instance, whose journal then follows the partitions' own
jobs through ``watch`` (see ``flux_watched``). What each event tells about a launch is taken in
by ``FluxJob.record``; where each launch stands (open, reported, clean), by ``FluxLaunches``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from matensemble.backends.base import Launch, LaunchKey, Outcome
from matensemble.backends.flux_chains import DependencyChains
from matensemble.backends.flux_channel_state import ChannelState
from matensemble.backends.flux_job import FluxJob, ending_from_eventlog, outcome_of
from matensemble.backends.flux_watched import JobEvents
from matensemble.errors import BackendError
from matensemble.model import TaskState

__all__ = ["FluxChannel"]


class FluxChannel(ChannelState):
    """Our jobs in one Flux instance (see ``ChannelState`` for the arguments)."""

    # -- opening ------------------------------------------------------------------------------

    async def open(self) -> Any:
        """Start the journal stream and read ``sched.resource-status`` (concurrently).

        Raises:
            BackendError: the journal cannot be followed, or the resources cannot be read.
        """
        ready = self._journal.start(self._loop)
        status = self.bridge.request("sched.resource-status")
        try:
            await ready
        except OSError as exc:
            raise BackendError(
                f"cannot follow Flux job events (job-manager.events-journal: "
                f"{exc.strerror or exc}); the driver must run as the instance owner, "
                "e.g. inside `flux alloc` or `flux batch`"
            ) from None
        try:
            return await status
        except OSError as exc:
            raise BackendError(f"cannot read the Flux resources: {exc}") from None

    @property
    def chains(self) -> DependencyChains | None:
        """With ``queue_ahead="depend"``: the jobs a queued job may depend on, per node."""
        return self._launches.chains

    @chains.setter
    def chains(self, chains: DependencyChains | None) -> None:
        self._launches.chains = chains
        if chains is not None:
            chains.wake = self._next_turns_soon

    def _next_turns_soon(self) -> None:
        self._loop.call_soon(self._next_turns)

    def wait_turn(self, launch: Launch) -> None:
        """Keep a launch booked behind jobs of ours, with no job to depend on yet, until its
        turn (``flux_chains``); it counts as in flight, and a cancel or withdraw before then
        ends it without a job."""
        self._launches.parked(FluxJob(launch))

    def _next_turns(self) -> None:
        """Submit the parked launches whose turn has come (``FluxBackend`` builds them),
        each with the dependency the chains chose for it."""
        chains = self.chains
        while chains is not None and (due := chains.next_due()) is not None:
            job, after = due
            if self._launches.unparked(job):
                self._submit_due(job.launch, after)

    # -- submitting ---------------------------------------------------------------------------

    def submit(
        self, launch: Launch, jobspec: str, urgency: int, after: FluxJob | None = None
    ) -> None:
        """Submit one launch's job (whose jobspec depends on ``after``'s job, if given); its
        outcome comes through ``report``. A launch of whole nodes that an exclusive job of
        ours still holds waits until that job is clean (see ``flux_holds``).

        Raises:
            OSError: the submit could not be sent.
        """
        job = FluxJob(launch, after, urgency)
        if self._holds.blocked(launch):
            self._launches.submitted(job, after)
            self._holds.park(launch, lambda: self._submit_parked(job, jobspec, urgency))
            return
        self._send(job, jobspec, urgency)
        self._launches.submitted(job, after)
        self._holds.held(job)

    def _send(self, job: FluxJob, jobspec: str, urgency: int) -> None:
        sent = time.time()  # Flux's own submit time is in the submit event, not followed
        self.bridge.submit(jobspec.encode(), urgency, self._novalidate, self._on_submitted, job)
        job.times["submit"] = sent
        self._unanswered.sent()
        if not self._journal.streaming:
            # While the journal streams, Flux's dispatcher is active and the answer to this
            # fresh request can only come as a message, which wakes the bridge: no drain now.
            self.bridge.kick()

    def _submit_parked(self, job: FluxJob, jobspec: str, urgency: int) -> None:
        """The nodes of a parked launch are free in Flux: submit it now."""
        if not self._launches.is_open(job):
            return  # dropped meanwhile
        try:
            self._send(job, jobspec, urgency)
        except OSError as exc:
            self._end_unsent(job, TaskState.FAILED, f"flux submit: {exc}")
            return
        self._holds.held(job)

    def submit_watched(self, jobspec: str, tag: str, events: JobEvents) -> None:
        """Submit a job of our own (a partition) whose events go to ``events``.

        The job's jobspec carries ``attributes.user.matensemble = {"driver": token,
        "partition": tag, ...}``; its events are routed from its submit event on.
        """
        self._watched.expect(tag, events)
        self.bridge.submit(jobspec.encode(), 16, self._novalidate, self._on_watched_submitted, tag)
        self.bridge.kick()

    def watch(self, jobid: int, events: JobEvents) -> None:
        """Route the events of an existing job (a partition found at start) to ``events``."""
        self._watched.watch(jobid, events)

    def has(self, key: LaunchKey) -> bool:
        return key in self._launches.open

    def follow(self, launch: Launch, jobid: int) -> FluxJob:
        """Follow an existing job as this launch's (registered before any lookup, so that
        no event after this is missed)."""
        job = self._launches.follow(launch, jobid)
        self._holds.held(job)
        return job

    def unfollow(self, job: FluxJob) -> bool:
        """Stop following a job taken by ``follow``; ``False`` if it already reported."""
        self._holds.freed(job)
        return self._launches.unfollow(job)

    def follows(self, jobid: int) -> bool:
        return jobid in self._launches.by_id

    def _on_submitted(self, future: Any, job: FluxJob) -> None:
        try:
            jobid = self.bridge.job_id(future)
        except OSError as exc:
            self._unanswered.answered(None)
            if self._launches.refused(job):
                reason = f"flux: {exc.strerror}"
                self._report(Outcome(key=job.launch.key, state=TaskState.FAILED, reason=reason))
            self._holds.freed(job)
            return
        held = self._unanswered.answered(jobid)
        if job.jobid is None and self._launches.is_open(job):
            self._known(job, jobid)
            for name, event, payload in held:
                if self._launches.by_id.get(jobid) is not job:
                    break  # it was dropped (the channel failed)
                self._on_event(jobid, job, name, event, payload)
        elif job.cancel_requested and not self._launches.is_open(job):
            # Reported (failed or cancelled) before Flux named its job: a job left running
            # would do the task's work a second time next to its retry.
            self.cancel_job(jobid, "backend closed" if self.closing else "cancelled by matensemble")

    def _on_watched_submitted(self, future: Any, tag: str) -> None:
        try:
            jobid = self.bridge.job_id(future)
        except OSError as exc:
            self._watched.refused(tag, str(exc.strerror or exc))
            return
        self._watched.submitted(tag, jobid)

    # -- what Flux tells us -------------------------------------------------------------------

    def _on_job_events(
        self, jobid: int, events: list[Mapping[str, Any]], payload: Mapping[str, Any]
    ) -> None:
        watched = self._watched.get(jobid)
        job = self._launches.by_id.get(jobid)
        for event in events:
            name = event["name"]
            if name == "submit" and watched is None and job is None:
                job, watched = self._claim(jobid, payload.get("jobspec"))
            if watched is not None:
                watched(name, event, payload)
                if name == "clean":
                    self._watched.clean(jobid)
                continue
            if job is None:
                self._unanswered.hold(jobid, name, event, payload)  # ours, if its answer is due
                continue
            self._on_event(jobid, job, name, event, payload)

    def _on_event(
        self, jobid: int, job: FluxJob, name: str, event: Mapping[str, Any], payload: Any
    ) -> None:
        job.record(name, event, payload, self.map)
        if name == "urgency":
            self._takebacks.on_urgency(job, event)
        elif name == "finish":
            if self.chains is not None:
                self._takebacks.on_finish(job, self.chains)
            if self._launches.finished(job):
                # Every process of the job is gone and its output is written: report now,
                # while Flux frees the resources, so the next job is already on its way.
                self._report(outcome_of(job, self.prefix + str(jobid)))
        elif name == "clean":
            if not self._launches.cleaned(job, jobid):
                self._settled()
            elif not self._takebacks.relaunched(job):  # it never ran, or we missed its end
                if job.status is None and job.exception is None:
                    # Neither a finish nor an exception seen: an adopted job that ended
                    # before it was followed (job-list lags behind); its eventlog knows.
                    job.status, job.exception = ending_from_eventlog(self.flux, self.handle, jobid)
                self._report(outcome_of(job, self.prefix + str(jobid)))
            self._holds.freed(job)  # its nodes are free in Flux: launches parked there go

    def _claim(self, jobid: int, jobspec: Any) -> tuple[FluxJob | None, JobEvents | None]:
        """The job or watcher whose submit event this is, if the job is one of ours."""
        try:
            tag = jobspec["attributes"]["user"]["matensemble"]
            if tag.get("driver") != self.token:
                return None, None
            if "partition" in tag:
                return None, self._watched.claim(jobid, str(tag["partition"]))
            job = self._launches.open.get((tag["task_id"], tag["attempt"]))
        except (KeyError, TypeError):
            return None, None
        if job is not None and job.jobid is None:
            self._known(job, jobid)
        return job, None

    def _known(self, job: FluxJob, jobid: int) -> None:
        """The job id of a launch is known: follow it, journal it, send a pending cancel."""
        self._launches.known(job, jobid)
        self._job_ids(job.launch.key, self.prefix + str(jobid))
        self._send_cancel(job)
