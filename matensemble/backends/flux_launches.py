"""The launches a channel has in one Flux instance: where each stands until its job is clean.

A launch is *open* from its submit until it is reported (at its job's ``finish``, or at
``clean`` if it never ran); its job is then still counted until ``clean``, so that
``in_flight() == 0`` means nothing of ours is left in the instance. Each method here says
whether the caller must report the launch now; the channel does the reporting.
"""

from __future__ import annotations

from matensemble.backends.base import Launch, LaunchKey
from matensemble.backends.flux_chains import DependencyChains
from matensemble.backends.flux_job import FluxJob

__all__ = ["FluxLaunches"]


class FluxLaunches:
    """Our launches' jobs in one instance, by launch key and by Flux job id (loop thread)."""

    __slots__ = ("by_id", "chains", "cleaning", "open")

    def __init__(self) -> None:
        self.open: dict[LaunchKey, FluxJob] = {}  # not reported yet
        self.by_id: dict[int, FluxJob] = {}  # followed until clean
        self.cleaning = 0  # reported at their finish, not yet clean in Flux
        self.chains: DependencyChains | None = None  # queueing ahead by dependencies

    def in_flight(self) -> int:
        """Launches not reported yet, and reported jobs that are not ``clean`` yet."""
        return len(self.open) + self.cleaning

    def is_open(self, job: FluxJob) -> bool:
        """Whether ``job`` is its launch's job and the launch is not reported yet."""
        return self.open.get(job.launch.key) is job

    def submitted(self, job: FluxJob, after: FluxJob | None) -> None:
        """``job`` was sent (its jobspec depending on ``after``'s job, if given)."""
        self.open[job.launch.key] = job
        if self.chains is not None:
            self.chains.add(job, after)

    def parked(self, job: FluxJob) -> None:
        """``job``'s launch waits for its turn before it is submitted (``DependencyChains``)."""
        self.open[job.launch.key] = job
        if self.chains is not None:
            self.chains.park(job)

    def unparked(self, job: FluxJob) -> bool:
        """Its turn came: the launch is submitted anew (``True``), unless it is gone."""
        if not self.is_open(job):
            return False
        del self.open[job.launch.key]
        return True

    def known(self, job: FluxJob, jobid: int) -> None:
        """Flux named the job of an open launch."""
        job.jobid = jobid
        self.by_id[jobid] = job
        if self.chains is not None:
            self.chains.known(job)

    def follow(self, launch: Launch, jobid: int) -> FluxJob:
        """Follow an existing job as this launch's."""
        job = FluxJob(launch)
        job.jobid = jobid
        self.open[launch.key] = job
        self.by_id[jobid] = job
        return job

    def unfollow(self, job: FluxJob) -> bool:
        """Stop following a job taken by ``follow``; ``False`` if it already reported."""
        if job.jobid is None or self.by_id.get(job.jobid) is not job:
            return False
        del self.open[job.launch.key], self.by_id[job.jobid]
        return True

    def refused(self, job: FluxJob) -> bool:
        """Flux refused the submit; ``True``: report the launch (failed) now."""
        if self.chains is not None:
            self.chains.ended(job)  # it holds no cores
        if not self.is_open(job):
            return False
        del self.open[job.launch.key]
        return True

    def finished(self, job: FluxJob) -> bool:
        """The job's ``finish``; ``True``: report the launch now (its job counts until
        ``clean``)."""
        if not self.is_open(job):
            return False
        del self.open[job.launch.key]
        self.cleaning += 1
        if self.chains is not None:
            self.chains.ended(job)
        return True

    def cleaned(self, job: FluxJob, jobid: int) -> bool:
        """The job's ``clean``; ``True``: report the launch now (it never ran, or its end was
        missed); ``False``: it reported at ``finish``, and ``in_flight()`` fell."""
        del self.by_id[jobid]
        if not self.is_open(job):
            self.cleaning -= 1
            return False
        del self.open[job.launch.key]
        if self.chains is not None:
            self.chains.ended(job)
        return True

    def drop_all(self) -> list[FluxJob]:
        """Stop following every job; the launches that were open, to report."""
        jobs = list(self.open.values())
        self.open.clear()
        self.by_id.clear()
        self.cleaning = 0
        if self.chains is not None:
            self.chains.clear()
        return jobs
