"""The resource pool: exact core and GPU ids per node, allocated and released in place.

The inventory is read once from the backend; from then on the pool is the only account of what
is free. Allocation never over-commits a node (invariant 1) and release credits exactly the ids
that were granted, so the counts can never drift from reality.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator, Mapping, Sequence

import msgspec

from matensemble.capacity import CapacityIndex
from matensemble.model import Placement, Resources, Slot

__all__ = ["NodeSpec", "ResourcePool"]


class NodeSpec(msgspec.Struct, frozen=True):
    """One node of the inventory: its name, core ids and GPU ids."""

    name: str
    cores: tuple[int, ...]
    gpus: tuple[str, ...] = ()


class ResourcePool:
    """Free cores and GPUs per node, with best-fit allocation of exact ids.

    Costs: ``allocate`` and ``release`` are O(GPU levels + ids) for a task on one node (the
    index of nodes by free capacity finds the node); a task on k nodes adds O(k + buckets).
    Nothing scans the nodes.
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
        self._capacity = [(len(n.cores), len(n.gpus)) for n in nodes]
        self.most_cores = max(c for c, _ in self._capacity)  # on the largest node
        self._single = {c: (c,) for n in nodes for c in n.cores}
        most_gpus = max(g for _, g in self._capacity)
        self._by_free = CapacityIndex(self.most_cores, most_gpus)  # nodes with a free core
        self._whole = CapacityIndex(self.most_cores, most_gpus)  # nodes with nothing in use
        self._coreless = CapacityIndex(0, most_gpus)  # nodes with free GPUs and no free core
        self._filed = [0] * len(nodes)  # per node: _CORELESS | _WHOLE, where it is filed
        for i in range(len(nodes)):
            self._refile(i)
        self.total_cores = sum(len(n.cores) for n in nodes)
        self.total_gpus = sum(len(n.gpus) for n in nodes)
        self.free_cores = self.total_cores
        self.free_gpus = self.total_gpus

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

    def surely_full_for(self, res: Resources) -> bool:
        """Whether ``allocate(res)`` would surely return ``None`` now, known in O(GPU levels)
        from the counts and the index (``False`` where finding out needs a search): too few
        free cores or GPUs in all, no node with the cores for its share of a node count, or
        no node with room for one of its ranks (exact for a task of one rank)."""
        if not self.fits_now(res):
            return True
        if res.nodes is not None:
            index = self._whole if res.exclusive else self._by_free
            return not index.has_cores(res.ranks // res.nodes * res.cores_per_rank)
        if res.exclusive:
            return False
        return self._by_free.best_fit(res.cores_per_rank, res.gpus_per_rank) is None

    # -- allocation -----------------------------------------------------------------------------

    def allocate(self, res: Resources) -> Placement | None:
        """Grant exact ids for ``res`` and mark them used, or return ``None`` if it does not fit.

        Each node is found through the index of free capacity (tightest fit first), never by
        a scan of the nodes.
        """
        if not self.fits_now(res):
            return None
        cpr, gpr = res.cores_per_rank, res.gpus_per_rank
        if res.nodes is None and not res.exclusive:
            # Prefer one node that holds every rank; spread only when no single node can.
            i = self._by_free.best_fit(res.ranks * cpr, res.ranks * gpr)
            if i is not None:
                return (self._take(i, res.ranks * cpr, res.ranks * gpr),)
            return self._allocate_spread(res)
        return self._allocate_nodes(res)

    def _allocate_spread(self, res: Resources) -> Placement | None:
        cpr, gpr = res.cores_per_rank, res.gpus_per_rank
        plan: list[tuple[int, int]] = []
        left = res.ranks
        for i in self._by_free.fitting(cpr, gpr, largest_first=True):
            k = min(self._ranks_free(i, cpr, gpr), left)
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
        index = self._whole if res.exclusive else self._by_free
        chosen: list[int] = []
        if res.nodes is not None:
            per = res.ranks // res.nodes
            if not index.has_cores(per * cpr):
                return None  # no node has room for its share (the usual answer on a full pool)
            for i in index.fitting(per * cpr, per * gpr):
                chosen.append(i)
                if len(chosen) == res.nodes:
                    break
            if len(chosen) < res.nodes:
                return None
            counts = [per] * res.nodes
        else:
            counts = []
            left = res.ranks
            for i in index.fitting(cpr, gpr, largest_first=True):
                chosen.append(i)
                counts.append(min(self._ranks_free(i, cpr, gpr), left))
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

    def _ranks_free(self, i: int, cpr: int, gpr: int) -> int:
        return _ranks_fitting(len(self._free_cores[i]), len(self._free_gpus[i]), cpr, gpr)

    def _take(self, i: int, ncores: int, ngpus: int) -> Slot:
        cores = self._free_cores[i]
        gpus = self._free_gpus[i]
        # One tuple per single core id, shared by every 1-core slot on it (most tasks, often).
        got_cores = self._single[cores[0]] if ncores == 1 else tuple(cores[:ncores])
        del cores[:ncores]
        got_gpus = tuple(gpus[:ngpus])
        del gpus[:ngpus]
        self.free_cores -= ncores
        self.free_gpus -= ngpus
        self._refile(i)
        return Slot(self.nodes[i].name, got_cores, got_gpus)

    def _refile(self, i: int) -> None:
        """Move node ``i`` to the buckets of its free capacity now."""
        free_c, free_g = len(self._free_cores[i]), len(self._free_gpus[i])
        filed = self._filed[i]  # which of the other two indexes hold it (bits, see __init__)
        if free_c:
            self._by_free.put(i, free_c, free_g)
            if filed & _CORELESS:
                self._coreless.discard(i)
                filed ^= _CORELESS
        else:
            self._by_free.discard(i)  # no rank fits without a core
            if free_g:
                self._coreless.put(i, 0, free_g)
                filed |= _CORELESS
            elif filed & _CORELESS:
                self._coreless.discard(i)
                filed ^= _CORELESS
        cap_c, cap_g = self._capacity[i]
        if free_c == cap_c and free_g == cap_g and cap_c:
            if not filed & _WHOLE:
                self._whole.put(i, cap_c, cap_g)
                filed |= _WHOLE
        elif filed & _WHOLE:
            self._whole.discard(i)
            filed ^= _WHOLE
        self._filed[i] = filed

    def release(self, placement: Iterable[Slot]) -> None:
        """Credit back exactly the ids of ``placement``."""
        for slot in placement:
            i = self._index[slot.node]
            cores = self._free_cores[i]
            if len(slot.cores) == 1:
                bisect.insort(cores, slot.cores[0])
            elif slot.cores:
                cores.extend(slot.cores)
                cores.sort()
            self._free_gpus[i].extend(slot.gpus)
            self.free_cores += len(slot.cores)
            self.free_gpus += len(slot.gpus)
            self._refile(i)

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
            taken = set(slot.cores)
            self._free_cores[i] = [c for c in self._free_cores[i] if c not in taken]
            taken_g = set(slot.gpus)
            self._free_gpus[i] = [g for g in self._free_gpus[i] if g not in taken_g]
            self.free_cores -= len(slot.cores)
            self.free_gpus -= len(slot.gpus)
            self._refile(i)
        return True

    # -- what-if questions (for the backfill reservation) ------------------------------------

    @property
    def node_numbers(self) -> Mapping[str, int]:
        """Each node's position in ``nodes``, by name (read-only)."""
        return self._index

    def node_number(self, node: str) -> int:
        """The position of ``node`` in ``nodes``."""
        return self._index[node]

    def free_count(self, i: int) -> tuple[int, int]:
        """How many cores and GPUs of node number ``i`` are free."""
        return len(self._free_cores[i]), len(self._free_gpus[i])

    def capacity(self, i: int) -> tuple[int, int]:
        """How many cores and GPUs node number ``i`` has."""
        return self._capacity[i]

    def occupancy(
        self, cores: int = 0, gpus: int = 0, *, whole: bool = False
    ) -> Iterator[tuple[int, int, int]]:
        """``(free cores, free GPUs, nodes)`` for each non-empty capacity bucket with at least
        ``cores`` and ``gpus`` free; with ``whole``, the nodes that are entirely free, by their
        capacity."""
        return (self._whole if whole else self._by_free).occupancy(cores, gpus)

    def nodes_fitting(self, cores: int, gpus: int, *, whole: bool = False) -> Iterator[int]:
        """Node numbers with at least ``cores`` and ``gpus`` free (entirely free: ``whole``)."""
        return (self._whole if whole else self._by_free).fitting(cores, gpus)

    def nodes_short_of_cores(self, cores: int, gpus: int, limit: int) -> list[int] | None:
        """Node numbers with at least ``gpus`` free GPUs but fewer than ``cores`` free cores;
        ``None`` if there are more than ``limit`` (counted from the buckets, not listed)."""
        if self.count_short_of_cores(cores, gpus) > limit:
            return None
        indexes = (self._coreless, self._by_free)
        return [i for index in indexes for i in index.short_of(cores, gpus)]

    def count_short_of_cores(self, cores: int, gpus: int) -> int:
        """How many nodes have at least ``gpus`` free GPUs but fewer than ``cores`` free
        cores (from the bucket sizes, in O(buckets))."""
        return self._coreless.count_short_of(cores, gpus) + self._by_free.count_short_of(
            cores, gpus
        )

    def free_on(self, node: str) -> tuple[tuple[int, ...], tuple[str, ...]]:
        """The free core and GPU ids of one node (for display and tests)."""
        i = self._index[node]
        return tuple(self._free_cores[i]), tuple(self._free_gpus[i])


_CORELESS, _WHOLE = 1, 2  # the node is in ``_coreless``, in ``_whole``


def _ranks_fitting(cores: int, gpus: int, cpr: int, gpr: int) -> int:
    by_cores = cores // cpr
    return by_cores if gpr == 0 else min(by_cores, gpus // gpr)
