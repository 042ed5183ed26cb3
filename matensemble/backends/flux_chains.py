"""Queueing ahead through Flux's job dependencies: which job a queued launch waits for.

With ``FluxBackend(queue_ahead="depend")`` a launch that the engine booked behind running
tasks (its node's cores are all held by jobs of ours that have not finished) is submitted with
an ``afterany`` dependency on one of those jobs, besides its rank constraint: it waits in
Flux's DEPEND state, out of the scheduler's queue, and enters that queue when the job it
depends on is inactive (flux-core's ``dependency-after`` plugin releases ``afterany`` in the
INACTIVE state). The scheduler then never tries it while its ranks are busy (no failed match
at the head of a first-come-first-served queue), and the job's ingest is done before its slot
frees.

The job to depend on, per node: among our jobs there with a known id, no dependent yet, and
the same number of cores on that node (so each running job has at most one launch waiting for
it: chains, one per slot), the one expected to end first (its start, or the expected end of
the job it waits for, plus its task's ``estimate``), else the oldest (tasks without an
estimate). A launch over several nodes, one with GPUs, or one with no such job is submitted
without a dependency (as with ``queue_ahead=True``).

``afterany`` waits for *that* job: when another job on the node ends first and no launch
waits for it (``stranded``), a launch waiting for a job still running there is taken back
and submitted again without a dependency, so that it takes the freed cores
(``flux_takeback``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from matensemble.backends.base import Launch
from matensemble.backends.flux_job import FluxJob
from matensemble.resources import NodeSpec

__all__ = ["DependencyChains"]


class DependencyChains:
    """Per node: the jobs of ours holding or waiting for its cores, oldest first."""

    def __init__(self) -> None:
        self._cores: dict[str, int] = {}
        self._jobs: dict[str, list[FluxJob]] = {}
        self._held: dict[str, int] = {}  # cores asked for by the unfinished jobs, per node
        self._awaited: set[int] = set()  # id() of the jobs a launch depends on
        self._after: dict[int, FluxJob] = {}  # id() of a dependent job -> the job it awaits

    def add_nodes(self, nodes: Sequence[NodeSpec]) -> None:
        for node in nodes:
            self._cores[node.name] = len(node.cores)
            self._jobs[node.name] = []
            self._held[node.name] = 0

    def predecessor(self, launch: Launch) -> FluxJob | None:
        """The job ``launch`` should depend on, or ``None`` (it runs at once, or no chain)."""
        if len(launch.placement) != 1:
            return None
        slot = launch.placement[0]
        node, need = slot.node, len(slot.cores)
        if slot.gpus or node not in self._cores:
            return None
        if self._held[node] + need <= self._cores[node]:
            return None  # there is room: it runs at once
        chosen: FluxJob | None = None
        chosen_end = math.inf
        for job in self._jobs[node]:  # oldest first: the first of equal ends is kept
            placed = job.launch.placement
            if (
                job.jobid is not None
                and id(job) not in self._awaited
                and len(placed) == 1
                and len(placed[0].cores) == need
                and not placed[0].gpus
            ):
                end = self._expected_end(job)
                if chosen is None or end < chosen_end:
                    chosen, chosen_end = job, end
        return chosen

    def _expected_end(self, job: FluxJob) -> float:
        """When ``job`` should end: its start (that of the job it waits for, else its submit)
        plus its task's estimate; infinite without an estimate."""
        estimate = job.launch.task.estimate
        if estimate is None:
            return math.inf
        if job.t_start is not None:
            return job.t_start + estimate
        after = self._after.get(id(job))
        if after is not None:
            return self._expected_end(after) + estimate
        return job.times.get("submit", 0.0) + estimate

    def stranded(self, job: FluxJob) -> FluxJob | None:
        """``job`` finished and no launch waits for it: the oldest launch on its node that
        waits for a job still running there and asks for as many cores (it should take the
        cores ``job`` frees; ``flux_takeback`` moves it), else ``None``."""
        if id(job) in self._awaited or len(job.launch.placement) != 1:
            return None
        slot = job.launch.placement[0]
        for waiting in self._jobs.get(slot.node, ()):
            after = self._after.get(id(waiting))
            placed = waiting.launch.placement
            if (
                after is not None
                and waiting is not job
                and after.t_end is None
                and waiting.t_start is None
                and waiting.taking_back is None
                and len(placed[0].cores) == len(slot.cores)
            ):
                return waiting
        return None

    def add(self, job: FluxJob, after: FluxJob | None) -> None:
        """``job`` was submitted (depending on ``after``, if given)."""
        if after is not None:
            self._awaited.add(id(after))
            self._after[id(job)] = after
        for slot in job.launch.placement:
            if slot.node in self._jobs:
                self._jobs[slot.node].append(job)
                self._held[slot.node] += len(slot.cores)

    def ended(self, job: FluxJob) -> None:
        """``job`` finished (or ended without running: refused, cancelled while waiting): its
        cores are no longer asked for, and the job it waited for may have another waiting."""
        self._awaited.discard(id(job))
        after = self._after.pop(id(job), None)
        if after is not None:
            self._awaited.discard(id(after))
        for slot in job.launch.placement:
            try:
                self._jobs[slot.node].remove(job)
            except (KeyError, ValueError):
                continue  # not a node of this channel, or already ended
            self._held[slot.node] -= len(slot.cores)

    def clear(self) -> None:
        for node in self._jobs:
            self._jobs[node].clear()
            self._held[node] = 0
        self._awaited.clear()
        self._after.clear()
