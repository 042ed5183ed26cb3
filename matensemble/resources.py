"""The resource pool: exact core and GPU ids per node, allocated and released in place.

The inventory is read once from the backend; from then on the pool is the only account of what
is free. Allocation never over-commits a node (invariant 1) and release credits exactly the ids
that were granted, so the counts can never drift from reality.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence

import msgspec

from matensemble.model import Placement, Resources, Slot

__all__ = ["NodeSpec", "ResourcePool"]


class NodeSpec(msgspec.Struct, frozen=True):
    """One node of the inventory: its name, core ids and GPU ids."""

    name: str
    cores: tuple[int, ...]
    gpus: tuple[str, ...] = ()


class ResourcePool:
    """Free cores and GPUs per node, with first-fit allocation of exact ids.

    Costs: ``allocate`` is O(nodes with free cores) in the worst case and O(1) when the pool is
    full; ``release`` is O(ids released x log(ids per node)).
    """

    def __init__(self, nodes: Sequence[NodeSpec]) -> None:
        if not nodes:
            raise ValueError("the resource inventory has no nodes")
        names = [n.name for n in nodes]
        if len(set(names)) != len(names):
            raise ValueError(f"node names in the inventory are not unique: {names}")
        self.nodes: tuple[NodeSpec, ...] = tuple(nodes)
        self._index = {n.name: i for i, n in enumerate(nodes)}
        self._free_cores: list[list[int]] = [sorted(n.cores) for n in nodes]
        self._free_gpus: list[list[str]] = [list(n.gpus) for n in nodes]
        # Insertion-ordered set of nodes that have at least one free core.
        self._open: dict[int, None] = {i: None for i, n in enumerate(nodes) if n.cores}
        self.total_cores = sum(len(n.cores) for n in nodes)
        self.total_gpus = sum(len(n.gpus) for n in nodes)
        self.free_cores = self.total_cores
        self.free_gpus = self.total_gpus
        self._shared: bytearray | None = None  # set in copies: lists still shared, per node

    # -- capacity questions -------------------------------------------------------------------

    def why_never_fits(self, res: Resources) -> str | None:
        """Explain why ``res`` cannot fit even on an empty pool; ``None`` if it can."""
        per_node = [
            _ranks_fitting(len(n.cores), len(n.gpus), res.cores_per_rank, res.gpus_per_rank)
            for n in self.nodes
        ]
        biggest = max(self.nodes, key=lambda n: (len(n.cores), len(n.gpus)))
        if max(per_node) == 0:
            return (
                f"one rank needs {res.cores_per_rank} core(s) and {res.gpus_per_rank} GPU(s), "
                f"but the largest node ({biggest.name}) has {len(biggest.cores)} core(s) and "
                f"{len(biggest.gpus)} GPU(s)"
            )
        if res.nodes is not None:
            need = res.ranks // res.nodes
            able = sum(1 for k in per_node if k >= need)
            if able < res.nodes:
                return (
                    f"needs {res.nodes} node(s) with room for {need} rank(s) each, "
                    f"but only {able} of {len(self.nodes)} node(s) have it"
                )
            return None
        if res.exclusive:
            # Whole nodes, as few as hold the ranks.
            if sum(per_node) < res.ranks:
                return (
                    f"needs {res.ranks} rank(s) on whole nodes; the machine holds {sum(per_node)}"
                )
            return None
        if sum(per_node) < res.ranks:
            return (
                f"needs {res.ranks} rank(s) x {res.cores_per_rank} core(s), "
                f"{res.gpus_per_rank} GPU(s) each; the whole machine ({self.total_cores} cores, "
                f"{self.total_gpus} GPUs) holds only {sum(per_node)} such rank(s)"
            )
        return None

    def fits_now(self, res: Resources) -> bool:
        """Cheap necessary condition: are there enough free cores and GPUs in total?"""
        return self.free_cores >= res.cores and self.free_gpus >= res.gpus

    # -- allocation -----------------------------------------------------------------------------

    def allocate(self, res: Resources) -> Placement | None:
        """Grant exact ids for ``res`` and mark them used, or return ``None`` if it does not fit."""
        if not self.fits_now(res):
            return None
        cpr, gpr = res.cores_per_rank, res.gpus_per_rank
        if res.nodes is None and not res.exclusive:
            # Prefer one node that holds every rank; spread only when no single node can.
            for i in self._open:
                if _ranks_fitting(len(self._free_cores[i]), len(self._free_gpus[i]), cpr, gpr) >= (
                    res.ranks
                ):
                    return (self._take(i, res.ranks * cpr, res.ranks * gpr),)
            return self._allocate_spread(res)
        return self._allocate_nodes(res)

    def _allocate_spread(self, res: Resources) -> Placement | None:
        cpr, gpr = res.cores_per_rank, res.gpus_per_rank
        plan: list[tuple[int, int]] = []
        left = res.ranks
        for i in self._open:
            k = _ranks_fitting(len(self._free_cores[i]), len(self._free_gpus[i]), cpr, gpr)
            if k:
                k = min(k, left)
                plan.append((i, k))
                left -= k
                if not left:
                    break
        if left:
            return None
        return tuple(self._take(i, k * cpr, k * gpr) for i, k in plan)

    def _allocate_nodes(self, res: Resources) -> Placement | None:
        """Whole or evenly filled nodes: ``res.nodes`` of them, or as few as ``exclusive`` needs."""
        cpr, gpr = res.cores_per_rank, res.gpus_per_rank
        chosen: list[int] = []
        if res.nodes is not None:
            per = res.ranks // res.nodes
            for i in self._open:
                if self._room(i, res.exclusive, cpr, gpr) >= per:
                    chosen.append(i)
                    if len(chosen) == res.nodes:
                        break
            if len(chosen) < res.nodes:
                return None
            counts = [per] * res.nodes
        else:
            counts = []
            left = res.ranks
            for i in self._open:
                k = self._room(i, True, cpr, gpr)
                if k:
                    chosen.append(i)
                    counts.append(min(k, left))
                    left -= counts[-1]
                    if not left:
                        break
            if left:
                return None
        if res.exclusive:
            return tuple(
                self._take(i, len(self._free_cores[i]), len(self._free_gpus[i])) for i in chosen
            )
        return tuple(self._take(i, k * cpr, k * gpr) for i, k in zip(chosen, counts, strict=True))

    def _room(self, i: int, whole: bool, cpr: int, gpr: int) -> int:
        node = self.nodes[i]
        free_c, free_g = len(self._free_cores[i]), len(self._free_gpus[i])
        if whole and (free_c != len(node.cores) or free_g != len(node.gpus)):
            return 0
        return _ranks_fitting(free_c, free_g, cpr, gpr)

    def _take(self, i: int, ncores: int, ngpus: int) -> Slot:
        self._own(i)
        cores = self._free_cores[i]
        gpus = self._free_gpus[i]
        got_cores = tuple(cores[:ncores])
        del cores[:ncores]
        got_gpus = tuple(gpus[:ngpus])
        del gpus[:ngpus]
        if not cores:
            self._open.pop(i, None)
        self.free_cores -= ncores
        self.free_gpus -= ngpus
        return Slot(self.nodes[i].name, got_cores, got_gpus)

    def release(self, placement: Iterable[Slot]) -> None:
        """Credit back exactly the ids of ``placement``."""
        for slot in placement:
            i = self._index[slot.node]
            self._own(i)
            cores = self._free_cores[i]
            for c in slot.cores:
                bisect.insort(cores, c)
            if slot.cores:
                self._open[i] = None
            self._free_gpus[i].extend(slot.gpus)
            self.free_cores += len(slot.cores)
            self.free_gpus += len(slot.gpus)

    def claim(self, placement: Iterable[Slot]) -> bool:
        """Mark exactly these ids used if every one of them is free; else change nothing."""
        slots = list(placement)
        for slot in slots:
            i = self._index[slot.node]
            free_c, free_g = self._free_cores[i], self._free_gpus[i]
            if not set(slot.cores) <= set(free_c) or not set(slot.gpus) <= set(free_g):
                return False
        for slot in slots:
            i = self._index[slot.node]
            self._own(i)
            taken = set(slot.cores)
            self._free_cores[i] = [c for c in self._free_cores[i] if c not in taken]
            taken_g = set(slot.gpus)
            self._free_gpus[i] = [g for g in self._free_gpus[i] if g not in taken_g]
            if not self._free_cores[i]:
                self._open.pop(i, None)
            self.free_cores -= len(slot.cores)
            self.free_gpus -= len(slot.gpus)
        return True

    def copy(self) -> ResourcePool:
        """An independent pool in the same state (for what-if planning such as backfill).

        Copy-on-write: the clone shares each node's id lists with this pool until it changes
        them, so a copy costs O(nodes) pointer copies however many ids the machine has.
        """
        clone = ResourcePool.__new__(ResourcePool)
        clone.nodes = self.nodes
        clone._index = self._index
        clone._free_cores = list(self._free_cores)
        clone._free_gpus = list(self._free_gpus)
        clone._shared = bytearray(b"\x01") * len(self.nodes)
        clone._open = dict(self._open)
        clone.total_cores, clone.total_gpus = self.total_cores, self.total_gpus
        clone.free_cores, clone.free_gpus = self.free_cores, self.free_gpus
        return clone

    def _own(self, i: int) -> None:
        """Give node ``i`` lists of its own before changing them (see ``copy``)."""
        shared = self._shared
        if shared is not None and shared[i]:
            self._free_cores[i] = list(self._free_cores[i])
            self._free_gpus[i] = list(self._free_gpus[i])
            shared[i] = 0

    def free_on(self, node: str) -> tuple[tuple[int, ...], tuple[str, ...]]:
        """The free core and GPU ids of one node (for display and tests)."""
        i = self._index[node]
        return tuple(self._free_cores[i]), tuple(self._free_gpus[i])


def _ranks_fitting(cores: int, gpus: int, cpr: int, gpr: int) -> int:
    by_cores = cores // cpr
    return by_cores if gpr == 0 else min(by_cores, gpus // gpr)
