"""Partitions: child Flux instances inside the allocation, each with its own scheduler.

One Flux instance handles tens to a few hundred jobs per second; an allocation split into k
child instances (Flux's own ``flux alloc --bg``: a job whose program is a Flux broker) spreads
job ingest, scheduling and execution over k job managers and schedulers.

- **Sizing** (``plan_partitions``), from the enclosing instance's inventory: whole nodes when
  there are at least k nodes (contiguous groups of broker ranks, sizes differing by at most
  one), otherwise each node's cores (and GPUs) divided among the partitions placed on it.
- **Starting** (``Partition.start``): the child's jobspec is flux-core's
  ``JobspecV1.from_nest_command`` with ``broker.rc2_none`` (no initial program, as ``flux
  alloc --bg``), the rank constraint of its group, and a ``user.matensemble`` tag naming this
  driver (its token, host and pid) and the group. The enclosing instance's journal brings the
  child's ``memo`` event with its URI; the driver connects, waits for ``state-machine.wait``
  (the child's rc1 is done) and opens a ``FluxChannel`` to it.
- **Nodes**: a child's broker ranks are renumbered from 0 in the order of the enclosing ranks
  it was given, so each of its nodes keeps the enclosing instance's node name (with ``/pN``
  added when several partitions share a node). To the engine a partition is just its nodes.
- **Ending**: the child's job is cancelled in the enclosing instance, which ends the child
  instance and everything in it.
- **After a crash**: ``orphans`` finds the partitions of drivers on this host that are gone;
  a new driver whose plan has the same group takes such a partition over (with its jobs, which
  a resume adopts) and cancels the others.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import msgspec

from matensemble.backends.flux_channel import FluxChannel
from matensemble.backends.flux_inventory import InventoryMap, read_inventory
from matensemble.backends.flux_recovery import cancel_and_wait
from matensemble.errors import BackendError
from matensemble.resources import NodeSpec

__all__ = ["Partition", "PartitionPlan", "orphans", "plan_partitions", "prepare_partitions"]

NAME = "matensemble-partition"


class PartitionPlan(msgspec.Struct, frozen=True):
    """Where one partition goes: its enclosing broker ranks and what it takes of them."""

    index: int
    ranks: tuple[int, ...]
    names: tuple[str, ...]  # the engine's name of each node, in rank order
    cores: int = 0  # cores per node when nodes are shared; 0: whole nodes
    gpus: int = 0

    @property
    def whole_nodes(self) -> bool:
        return self.cores == 0

    def tag(self) -> str:
        """What identifies the plan across drivers (index, ranks, share)."""
        ranks = ",".join(map(str, self.ranks))
        return f"{self.index}:{ranks}:{self.cores}:{self.gpus}"


def plan_partitions(nodes: Sequence[NodeSpec], names: InventoryMap, k: int) -> list[PartitionPlan]:
    """Split the enclosing instance's nodes into ``k`` partitions.

    Raises:
        ValueError: a node would get less than one core per partition.
    """
    if k < 1:
        raise ValueError(f"partitions must be >= 1: {k}")
    ranked = sorted(nodes, key=lambda n: names.rank(n.name))
    if len(ranked) >= k:
        plans, start = [], 0
        for i in range(k):
            size = len(ranked) // k + (1 if i < len(ranked) % k else 0)
            group = ranked[start : start + size]
            start += size
            plans.append(
                PartitionPlan(
                    i, tuple(names.rank(n.name) for n in group), tuple(n.name for n in group)
                )
            )
        return plans
    plans = []
    for i in range(k):
        node = ranked[i % len(ranked)]
        sharing = k // len(ranked) + (1 if i % len(ranked) < k % len(ranked) else 0)
        cores = len(node.cores) // sharing
        if cores < 1:
            raise ValueError(
                f"cannot make {k} partitions: node {node.name} has {len(node.cores)} core(s) "
                f"for {sharing} partitions"
            )
        plans.append(
            PartitionPlan(
                i,
                (names.rank(node.name),),
                (f"{node.name}/p{i}",),
                cores,
                len(node.gpus) // sharing,
            )
        )
    return plans


class Partition:
    """One child instance: its job in the enclosing instance and the channel to it."""

    def __init__(self, plan: PartitionPlan, parent: FluxChannel) -> None:
        self.plan = plan
        self.parent = parent
        self.jobid: int | None = None
        self.channel: FluxChannel | None = None
        self.nodes: list[NodeSpec] = []
        self.ended: str | None = None  # why the child instance is gone
        self.reused = False
        self.on_end: Callable[[Partition, str], None] = lambda p, why: None
        self._R: Any = None  # the child's resources, as the enclosing instance allocated them
        loop = asyncio.get_running_loop()
        self._uri: asyncio.Future[str] = loop.create_future()
        self._clean: asyncio.Future[None] = loop.create_future()

    def jobspec(self, token: str) -> str:
        """The child instance's jobspec (``flux alloc --bg`` with our rank constraint)."""
        plan, flux = self.plan, self.parent.flux
        spec = flux.job.JobspecV1.from_nest_command(
            command=[],
            num_slots=len(plan.ranks),
            cores_per_slot=plan.cores or 1,
            gpus_per_slot=plan.gpus or None,
            num_nodes=len(plan.ranks),
            broker_opts=["-Sbroker.rc2_none=1"],
            exclusive=plan.whole_nodes,
            name=f"{NAME}-{plan.index}",
            cwd=os.getcwd(),
        )
        spec.setattr("system.constraints", {"ranks": [",".join(map(str, plan.ranks))]})
        spec.setattr(
            "user.matensemble",
            {
                "driver": token,
                "partition": plan.tag(),
                "host": socket.gethostname(),
                "pid": os.getpid(),
            },
        )
        return str(spec.dumps())

    def events(self, name: str, event: Mapping[str, Any], payload: Mapping[str, Any]) -> None:
        """The child's own job, as the enclosing instance's journal reports it."""
        if name == "jobid":
            self.jobid = int(event["id"])
        elif name == "alloc":
            self._R = payload.get("R")
        elif name == "memo":
            uri = event.get("context", {}).get("uri")
            if uri and not self._uri.done():
                self._uri.set_result(str(uri))
        elif name in ("exception", "finish", "clean", "lost", "refused"):
            context = event.get("context", {})
            if name == "exception" and context.get("severity", 0) != 0:
                return
            note = context.get("note") or event.get("note") or name
            self._gone(f"partition {self.plan.index} (Flux job {self.jobid}) ended: {note}")
            if name in ("clean", "lost", "refused") and not self._clean.done():
                self._clean.set_result(None)

    def _gone(self, why: str) -> None:
        if self.ended is None:
            self.ended = why
            if not self._uri.done():
                self._uri.set_exception(BackendError(why))
            self.on_end(self, why)

    async def open(self, token: str, make_channel: Callable[[Any, str], FluxChannel]) -> None:
        """Submit the child instance (unless taken over), connect, and read its nodes."""
        if not self.reused:
            self.parent.submit_watched(self.jobspec(token), self.plan.tag(), self.events)
        await self.connect(await self._uri, make_channel)

    async def connect(self, uri: str, make_channel: Callable[[Any, str], FluxChannel]) -> None:
        from flux.uri import JobURI

        flux, where = self.parent.flux, JobURI(uri)
        # The child's rank 0 on this host: connect locally; elsewhere through ssh.
        local = where.scheme == "local" or where.netloc in (socket.gethostname(), "")
        try:
            handle = flux.Flux(where.local if local else where.remote)
        except OSError as exc:
            raise BackendError(f"cannot connect to partition {self.plan.index}: {exc}") from None
        self.channel = channel = make_channel(handle, f"{self.jobid}/")
        channel.name = f"partition {self.plan.index} (Flux job {self.jobid}): "
        try:
            await channel.bridge.request("state-machine.wait")
        except OSError as exc:
            raise BackendError(f"partition {self.plan.index} did not start: {exc}") from None
        await channel.open()
        if self._R is None:  # taken over from an earlier driver: ask once
            lookup = flux.job.job_kvs_lookup(self.parent.handle, self.jobid, keys=["R"])
            self._R = lookup["R"] if lookup else None
        self.nodes, channel.map = self._nodes(self._R)

    def _nodes(self, R: Any) -> tuple[list[NodeSpec], InventoryMap]:
        """The child's nodes, from the resources the enclosing instance gave it (its own
        status may still show ranks down that are joining), under the enclosing instance's
        names; child rank j is the j-th enclosing rank of the plan."""
        try:
            names = dict(zip(self.plan.ranks, self.plan.names, strict=True))
            nodes, _ = read_inventory({"all": R}, driver_rank=-1, names=names)
        except ValueError as exc:
            raise BackendError(f"partition {self.plan.index}: {exc}") from None
        return nodes, InventoryMap(dict(enumerate(self.plan.names)))

    def cancel(self, reason: str) -> None:
        """End the child instance (cancel its job in the enclosing instance)."""
        if self.jobid is not None and self.ended is None:
            self.parent.cancel_job(self.jobid, reason)

    async def wait_clean(self) -> None:
        """Return once the child's job is clean in the enclosing instance."""
        if self.jobid is None and not self._uri.done() and not self._clean.done():
            self._clean.set_result(None)  # never submitted
        await asyncio.shield(self._clean)

    def adopt_existing(self, jobid: int, uri: str) -> None:
        """Take over a live child instance an earlier driver left (see ``orphans``)."""
        self.jobid = jobid
        self.reused = True
        self._uri.set_result(uri)  # resolved: an end later has no one left to tell through it
        self.parent.watch(jobid, self.events)


def prepare_partitions(parent: FluxChannel, nodes: Sequence[NodeSpec], k: int) -> list[Partition]:
    """The partitions of the plan, each taking over a live orphan of the same group if there
    is one; orphans that fit no group (or are not up yet) are cancelled, and waited for.

    Raises:
        ValueError: the inventory cannot be split into ``k`` partitions.
    """
    partitions = [Partition(plan, parent) for plan in plan_partitions(nodes, parent.map, k)]
    by_tag = {p.plan.tag(): p for p in partitions}
    stale = []
    for jobid, tag, uri in orphans(parent):
        partition = by_tag.get(tag)
        if partition is not None and not partition.reused and uri:
            partition.adopt_existing(jobid, uri)
        else:
            stale.append(jobid)
    cancel_and_wait(parent, stale, "a partition of a matensemble driver that is gone")
    return partitions


def orphans(parent: FluxChannel) -> list[tuple[int, str, str]]:
    """Partitions whose driver ran on this host and is gone: (job id, plan tag, URI or "").

    Blocking RPCs, once, at ``open()``.
    """
    flux, found = parent.flux, []
    host = socket.gethostname()
    for info in flux.job.JobList(parent.handle, filters=["running"]).jobs():
        if not str(info.name).startswith(NAME):
            continue
        try:
            spec = flux.job.job_kvs_lookup(parent.handle, info.id, keys=["jobspec"])["jobspec"]
            tag = spec["attributes"]["user"]["matensemble"]
            if tag.get("host") != host or _alive(int(tag["pid"])):
                continue
        except (OSError, KeyError, TypeError, ValueError):
            continue
        try:
            job = flux.job.job_list_id(parent.handle, info.id, attrs=["annotations"])
            uri = str(job.get_jobinfo().user.uri or "")
        except (OSError, KeyError, TypeError, ValueError, AttributeError):
            uri = ""  # not up yet: it cannot be taken over, and goes
        found.append((int(info.id), str(tag.get("partition")), uri))
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
