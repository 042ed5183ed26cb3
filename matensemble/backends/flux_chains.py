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
estimate).

A launch booked behind our jobs that finds no such job (the first ones of a run, booked before
Flux named the jobs ahead of them; one over several nodes, one with GPUs, one of another size)
is **not submitted yet**: it waits here, in booking order per node (``park``), and goes when
its turn comes (``next_due``, checked whenever a job on its nodes gets its id or ends): with a
dependency once there is a job to depend on, without one once its nodes have room for it. No
booked job of ours thus waits in Fluxion's queue, where it could be allocated at any moment:
every booked launch can be taken back (``flux_takeback``; one not submitted yet, at once). A
booked launch never overtakes one parked before it on its nodes; one that fits now (the
engine placed it on free resources, which a larger parked one cannot use yet) goes at once.

``afterany`` waits for *that* job: when another job on the node ends first and no launch
waits for it (``stranded``), a launch waiting for a job still running there is taken back
and submitted again without a dependency, so that it takes the freed cores
(``flux_takeback``).
"""

from __future__ import annotations

import enum
import math
from collections import deque
from collections.abc import Callable, Sequence

from matensemble.backends.base import Launch
from matensemble.backends.flux_job import FluxJob
from matensemble.resources import NodeSpec

__all__ = ["WAIT", "DependencyChains", "Turn"]


class Turn(enum.Enum):
    """A launch that must not be submitted yet (see ``DependencyChains.park``)."""

    WAIT = "wait"


WAIT = Turn.WAIT


class DependencyChains:
    """Per node: the jobs of ours holding or waiting for its cores, oldest first."""

    def __init__(self) -> None:
        self._size: dict[str, tuple[int, int]] = {}  # cores, GPUs per node
        self._jobs: dict[str, list[FluxJob]] = {}
        self._held: dict[str, list[int]] = {}  # cores, GPUs asked for by unfinished jobs
        self._awaited: set[int] = set()  # id() of the jobs a launch depends on
        self._after: dict[int, FluxJob] = {}  # id() of a dependent job -> the job it awaits
        self._parked: dict[str, deque[FluxJob]] = {}  # per node, launches not submitted yet
        self._due: set[str] = set()  # nodes whose first parked launch may go now
        self.wake: Callable[[], None] = _nothing  # asks for ``next_due`` soon (the channel)

    def add_nodes(self, nodes: Sequence[NodeSpec]) -> None:
        for node in nodes:
            self._size[node.name] = (len(node.cores), len(node.gpus))
            self._jobs[node.name] = []
            self._held[node.name] = [0, 0]

    def predecessor(self, launch: Launch, *, in_turn: bool = False) -> FluxJob | Turn | None:
        """The job ``launch`` should depend on; ``None``: it runs at once (there is room, or
        it is not on this channel's nodes); ``WAIT``: it must not be submitted yet (``park``
        it). ``in_turn``: it comes out of the park (it waits behind no parked launch)."""
        room = True
        for slot in launch.placement:
            size = self._size.get(slot.node)
            if size is None:
                return None
            held = self._held[slot.node]
            if held[0] + len(slot.cores) > size[0] or held[1] + len(slot.gpus) > size[1]:
                room = False
        if room:
            return None  # the engine placed it on free resources: it goes at once
        if not in_turn and any(self._parked.get(slot.node) for slot in launch.placement):
            return WAIT  # it would overtake a launch booked before it
        if len(launch.placement) != 1 or launch.placement[0].gpus:
            return WAIT
        slot = launch.placement[0]
        node, need = slot.node, len(slot.cores)
        chosen: FluxJob | None = None
        chosen_end = math.inf
        for job in self._jobs[node]:  # oldest first: the first of equal ends is kept
            placed = job.launch.placement
            if (
                job.jobid is not None
                and id(job) not in self._awaited
                and job.taking_back is None
                and len(placed) == 1
                and len(placed[0].cores) == need
                and not placed[0].gpus
            ):
                end = self._expected_end(job)
                if chosen is None or end < chosen_end:
                    chosen, chosen_end = job, end
        return WAIT if chosen is None else chosen

    # -- launches not submitted yet ----------------------------------------------------------

    def park(self, job: FluxJob) -> None:
        """Keep ``job``'s launch (``predecessor`` said ``WAIT``) until its turn."""
        for slot in job.launch.placement:
            self._parked.setdefault(slot.node, deque()).append(job)

    def unpark(self, job: FluxJob) -> bool:
        """Take a parked launch out (cancelled, or taken back); ``False``: it was not parked."""
        found = False
        for slot in job.launch.placement:
            line = self._parked.get(slot.node)
            if line is not None and job in line:
                line.remove(job)
                found = True
                self._mark(slot.node)  # the one behind it may go
        return found

    def next_due(self) -> tuple[FluxJob, FluxJob | None] | None:
        """A parked launch whose turn has come, taken out of the park, and the job it is to
        depend on (``None``: its nodes have room for it): the first of its line on each of
        its nodes, with a job to depend on or room there; ``None``: none (now). Its caller
        submits it with that dependency (``add``) before asking again."""
        while self._due:
            node = next(iter(self._due))
            line = self._parked.get(node)
            if not line:
                self._due.discard(node)
                continue
            job = line[0]
            first_everywhere = all(
                self._parked[slot.node][0] is job for slot in job.launch.placement
            )
            after = self.predecessor(job.launch, in_turn=True) if first_everywhere else WAIT
            if after is WAIT:
                self._due.discard(node)  # its turn comes with the next id or end there
                continue
            for slot in job.launch.placement:
                self._parked[slot.node].popleft()
            return job, after
        return None

    def _mark(self, node: str) -> None:
        if self._parked.get(node) and node not in self._due:
            if not self._due:
                self.wake()
            self._due.add(node)

    def known(self, job: FluxJob) -> None:
        """Flux named ``job``: a launch parked on its nodes may now depend on it."""
        for slot in job.launch.placement:
            self._mark(slot.node)

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
        if not self._after or id(job) in self._awaited or len(job.launch.placement) != 1:
            return None  # nothing waits for a job (nothing booked), or a launch waits for it
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
                held = self._held[slot.node]
                held[0] += len(slot.cores)
                held[1] += len(slot.gpus)

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
            held = self._held[slot.node]
            held[0] -= len(slot.cores)
            held[1] -= len(slot.gpus)
            self._mark(slot.node)

    def clear(self) -> None:
        """Forget every job and parked launch (the channel stopped following its jobs)."""
        for node in self._jobs:
            self._jobs[node].clear()
            self._held[node] = [0, 0]
        self._awaited.clear()
        self._after.clear()
        self._parked.clear()
        self._due.clear()


def _nothing() -> None:
    pass
