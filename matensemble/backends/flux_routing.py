"""Which Flux instance runs a launch: the enclosing one, or the partition holding its nodes.

A Flux job runs in one instance, so with partitions a task must fit in one of them:
``why_never_fits`` says so at submission (the engine then rejects the task before the run),
naming the sizes. The engine's pool knows nodes, not partitions, so it may still spread a task
that fits one partition over nodes of two (its ranks did not fit on one node at that moment):
``route`` then sends it to one partition where it fits, without a rank constraint, so Flux
runs it where it finds room there (it may wait in that partition's queue a little) instead of
failing it. The same holds for a launch on the nodes of a partition that died.
"""

from __future__ import annotations

from collections.abc import Sequence

from matensemble.backends.base import Launch
from matensemble.backends.flux_channel import FluxChannel
from matensemble.model import Resources
from matensemble.resources import NodeSpec, ResourcePool

__all__ = ["FluxRouter"]


class FluxRouter:
    """The channels jobs run through, and which of them holds each node."""

    def __init__(self) -> None:
        self.channels: list[FluxChannel] = []
        self._where: dict[str, int] = {}  # node name -> index in channels
        self._pools: list[ResourcePool] = []  # each channel's nodes, empty: for fit checks

    def add(self, channel: FluxChannel, nodes: Sequence[NodeSpec]) -> None:
        """Run the jobs of ``nodes`` through ``channel``."""
        index = len(self.channels)
        self.channels.append(channel)
        self._pools.append(ResourcePool(nodes))
        for node in nodes:
            self._where[node.name] = index

    def why_never_fits(self, resources: Resources) -> str | None:
        """Why a task can run in none of several partitions, though their nodes hold it."""
        if len(self.channels) < 2:
            return None
        if any(pool.why_never_fits(resources) is None for pool in self._pools):
            return None
        largest = max(self._pools, key=lambda p: (p.total_cores, p.total_gpus))
        return (
            f"needs {resources.ranks} rank(s) x {resources.cores_per_rank} core(s), "
            f"{resources.gpus_per_rank} GPU(s) each"
            + (f" on {resources.nodes} node(s)" if resources.nodes else "")
            + (" on whole nodes" if resources.exclusive else "")
            + f", more than one of the {len(self._pools)} Flux partitions holds (the largest "
            f"has {len(largest.nodes)} node(s), {largest.total_cores} cores, "
            f"{largest.total_gpus} GPUs; a job runs in one instance): use fewer partitions"
        )

    def route(self, launch: Launch) -> tuple[FluxChannel, bool]:
        """The channel for the launch, and whether to constrain it to its placement's ranks.

        Raises:
            ValueError: no live channel can run it.
        """
        where = {self._where[slot.node] for slot in launch.placement}
        if len(where) == 1:
            channel = self.channels[next(iter(where))]
            if channel.broken is None:
                return channel, True
        res = launch.task.resources
        live = [
            i
            for i, channel in enumerate(self.channels)
            if channel.broken is None and self._pools[i].why_never_fits(res) is None
        ]
        if not live:
            gone = "; ".join(sorted({c.broken for c in self.channels if c.broken}))
            raise ValueError(f"no live Flux partition can run task {launch.task.id} ({gone})")
        # Where most of its placement lies, else the least busy partition it fits in.
        share = {i: 0 for i in live}
        for slot in launch.placement:
            i = self._where[slot.node]
            if i in share:
                share[i] += len(slot.cores)
        best = max(live, key=lambda i: (share[i], -self.channels[i].in_flight()))
        return self.channels[best], False

    def owner_of(self, job_id: str) -> tuple[FluxChannel | None, int | None]:
        """The channel a journaled job id belongs to, and the job id in that instance."""
        head, _, tail = job_id.rpartition("/")
        try:
            jobid = int(tail)
        except ValueError:
            return None, None
        for channel in self.channels:
            if channel.prefix == (f"{head}/" if head else ""):
                return channel, jobid
        return None, None
