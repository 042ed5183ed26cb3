"""Nodes our exclusive jobs hold, and the node-level launches parked until Flux frees them.

Fluxion (0.54) denies at once, as ``alloc denied due to type="unsatisfiable"``, a job that
asks for whole nodes (a jobspec with a ``node`` level: ``Resources(nodes=...)`` or
``exclusive``) and carries a rank constraint, when a node it names is held by an *exclusive*
job and the new job is at the head of its queue: a fatal exception, where a job of cores only
waits (checked on flux-core 0.88 + Fluxion 0.54, ``flux submit --requires=rank:1 -N1 ...``
behind ``-N1 --exclusive``). The engine hits it twice over: it launches a task when the
task before it on the node reports at ``finish``, before Flux has freed that job's
resources; and with ``queue_ahead`` it submits tasks booked behind running ones on purpose.

So such a launch is not submitted while an exclusive job of ours that shares one of its
nodes is not ``clean`` (its resources are back in the scheduler by then): it is parked here,
and submitted when the last of those jobs is clean, in the order the launches came. A core-level
launch is never parked. A parked launch counts as in flight; a cancel before its submit ends
it without a job.
"""

from __future__ import annotations

from collections.abc import Callable

from matensemble.backends.base import Launch
from matensemble.backends.flux_job import FluxJob

__all__ = ["NodeHolds", "takes_nodes"]


def takes_nodes(launch: Launch) -> bool:
    """Whether the launch's jobspec asks for whole nodes (has a ``node`` level)."""
    res = launch.task.resources
    return res.nodes is not None or res.exclusive


class NodeHolds:
    """Per node, our exclusive jobs not yet clean; the launches parked behind them."""

    __slots__ = ("_holders", "_parked")

    def __init__(self) -> None:
        self._holders: dict[str, set[FluxJob]] = {}
        self._parked: list[tuple[Launch, Callable[[], None]]] = []

    def blocked(self, launch: Launch) -> bool:
        """Whether ``launch`` must wait for an exclusive job of ours on one of its nodes."""
        if not self._holders or not takes_nodes(launch):
            return False
        return any(slot.node in self._holders for slot in launch.placement)

    def park(self, launch: Launch, submit: Callable[[], None]) -> None:
        """Call ``submit`` once no exclusive job of ours holds a node of ``launch``."""
        self._parked.append((launch, submit))

    def held(self, job: FluxJob) -> None:
        """``job`` was submitted (or adopted); if exclusive, it holds its nodes until clean."""
        if job.launch.task.resources.exclusive:
            for slot in job.launch.placement:
                self._holders.setdefault(slot.node, set()).add(job)

    def freed(self, job: FluxJob) -> None:
        """``job`` is clean (or was never made): submit the parked launches it no longer
        blocks, in the order they were parked (one submitted here may hold a node again, and
        those after it on that node wait on)."""
        if not job.launch.task.resources.exclusive:
            return
        for slot in job.launch.placement:
            holders = self._holders.get(slot.node)
            if holders is not None:
                holders.discard(job)
                if not holders:
                    del self._holders[slot.node]
        parked, self._parked = self._parked, []
        for launch, submit in parked:
            if self.blocked(launch):
                self._parked.append((launch, submit))
            else:
                submit()  # does not raise: a submit that fails reports its launch failed

    def unpark(self, launch: Launch) -> bool:
        """Take ``launch`` out of the parked ones (it was cancelled); ``False``: not parked."""
        for i, (parked, _) in enumerate(self._parked):
            if parked is launch:
                del self._parked[i]
                return True
        return False

    def clear(self) -> None:
        """Forget every holder and parked launch (the channel stopped following its jobs)."""
        self._holders.clear()
        self._parked.clear()
