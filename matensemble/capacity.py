"""An index of nodes by free capacity: which node has room for c cores and g GPUs, without a scan.

Nodes sit in buckets keyed by (free GPUs, free cores); for each GPU level a bit mask says which
core counts have a non-empty bucket. Finding the best-fitting node for a request then costs one
mask shift per GPU level (a few machine words), however many nodes the machine has: on
Frontier (56 cores, 8 GPUs per node) at most 9 shifts, against up to 9,408 node checks for a
first-fit scan.
"""

from __future__ import annotations

from collections.abc import Iterator

__all__ = ["CapacityIndex"]


class CapacityIndex:
    """Node numbers by their (free cores, free GPUs); each node is in at most one bucket.

    ``best_fit`` picks the node that leaves the fewest GPUs, then the fewest cores, idle: the
    tightest fit keeps whole nodes (and GPUs) free for the tasks that need them.
    """

    def __init__(self, max_cores: int, max_gpus: int) -> None:
        self._buckets: list[list[dict[int, None]]] = [
            [{} for _ in range(max_cores + 1)] for _ in range(max_gpus + 1)
        ]
        self._masks = [0] * (max_gpus + 1)  # per GPU level: bit c set if bucket (g, c) is used
        self._union = 0  # bit c set if some node has exactly c free cores (any GPU level)
        self._where: dict[int, tuple[int, int]] = {}  # node -> (cores, gpus) of its bucket

    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, node: int) -> bool:
        return node in self._where

    def put(self, node: int, cores: int, gpus: int) -> None:
        """File ``node`` under its free capacity now (moving it if it was filed elsewhere)."""
        old = self._where.get(node)
        if old == (cores, gpus):
            return
        if old is not None:
            self._drop(node, *old)
        bucket = self._buckets[gpus][cores]
        bucket[node] = None
        self._masks[gpus] |= 1 << cores
        self._union |= 1 << cores
        self._where[node] = (cores, gpus)

    def discard(self, node: int) -> None:
        """Take ``node`` out of the index (if it is in it)."""
        old = self._where.pop(node, None)
        if old is not None:
            self._drop(node, *old)

    def _drop(self, node: int, cores: int, gpus: int) -> None:
        bucket = self._buckets[gpus][cores]
        del bucket[node]
        if not bucket:
            masks = self._masks
            masks[gpus] &= ~(1 << cores)
            union = 0
            for mask in masks:
                union |= mask
            self._union = union

    def has_cores(self, cores: int) -> bool:
        """Whether some node has at least ``cores`` free (a quick test before a search)."""
        return self._union >> cores != 0

    def best_fit(self, cores: int, gpus: int) -> int | None:
        """A node with at least ``cores`` free cores and ``gpus`` free GPUs, the tightest one."""
        masks = self._masks
        for g in range(gpus, len(masks)):
            above = masks[g] >> cores
            if above:
                c = cores + (above & -above).bit_length() - 1
                return next(iter(self._buckets[g][c]))
        return None

    def fitting(self, cores: int, gpus: int, *, largest_first: bool = False) -> Iterator[int]:
        """Every node with at least ``cores`` and ``gpus`` free, tightest (or largest) first.

        Costs O(buckets) plus the nodes read; the index must not change while this is read.
        """
        masks = self._masks
        levels = range(gpus, len(masks))
        union = 0
        for g in levels:
            union |= masks[g]
        union >>= cores
        counts = [cores + c for c in range(union.bit_length()) if union >> c & 1]
        if largest_first:
            counts.reverse()
            levels = levels[::-1]
        for c in counts:
            for g in levels:
                yield from self._buckets[g][c]

    def short_of(self, cores: int, gpus: int) -> Iterator[int]:
        """Every node with at least ``gpus`` free GPUs but fewer than ``cores`` free cores."""
        for bucket in self._short_of(cores, gpus):
            yield from bucket

    def count_short_of(self, cores: int, gpus: int) -> int:
        """How many nodes ``short_of`` would give, from the bucket sizes."""
        return sum(len(bucket) for bucket in self._short_of(cores, gpus))

    def _short_of(self, cores: int, gpus: int) -> Iterator[dict[int, None]]:
        below = (1 << cores) - 1  # fewer free cores than that (0: nodes with none)
        for g in range(gpus, len(self._masks)):
            mask = self._masks[g] & below
            c = 0
            while mask:
                if mask & 1:
                    yield self._buckets[g][c]
                mask >>= 1
                c += 1

    def occupancy(self, cores: int = 0, gpus: int = 0) -> Iterator[tuple[int, int, int]]:
        """``(free cores, free GPUs, number of nodes)`` for every non-empty bucket with at
        least ``cores`` and ``gpus`` free (only the used buckets are visited: a full machine
        asked for whole nodes' worth of cores visits none)."""
        buckets = self._buckets
        for g in range(gpus, len(self._masks)):
            mask = self._masks[g] >> cores
            while mask:
                low = mask & -mask
                c = cores + low.bit_length() - 1
                yield c, g, len(buckets[g][c])
                mask ^= low
