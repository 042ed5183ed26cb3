"""Flux resource sets (RFC 20 ``R``) to and from the engine's nodes and slots.

A Flux instance names its nodes by broker rank; the engine names them by ``NodeSpec.name``.
``read_inventory`` builds the nodes from the scheduler's resource status and the map between
the two names; ``InventoryMap`` turns an engine placement into the rank constraint of a job and
the ``R`` of an allocated job back into the slots Flux actually assigned.

Node names are the host names when those are unique in the instance (the usual case on a
cluster). When they are not (``flux start --test-size=N`` runs every broker on one host), every
node is named ``host:rank``, so that names stay unique and say which broker they are.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from matensemble.model import Placement, Slot
from matensemble.resources import NodeSpec

__all__ = ["InventoryMap", "read_inventory"]


_REMEMBERED = 4096  # placements decoded from R, kept for the next job with the same R


class InventoryMap:
    """Names of broker ranks, both ways; the placement each ``R`` seen names."""

    def __init__(self, names: Mapping[int, str]) -> None:
        self._names = dict(names)
        self._ranks = {name: rank for rank, name in names.items()}
        # A job's R is one of few on a node (its ranks and core ids), and every job's alloc
        # event brings one: decode each once.
        self._placements: dict[tuple[tuple[str, str, str], ...], Placement] = {}

    def name(self, rank: int) -> str:
        return self._names.get(rank) or f"rank{rank}"

    def rank(self, name: str) -> int:
        return self._ranks[name]

    def ranks(self, placement: Iterable[Slot]) -> str:
        """The broker ranks of a placement as an RFC 22 idset string, e.g. ``"0,2-3"``."""
        return _encode_idset(self._ranks[slot.node] for slot in placement)

    def slots(self, R: Any) -> Placement:
        """The slots of an allocated job's ``R`` (empty if ``R`` is missing or malformed)."""
        try:
            key = tuple(
                (
                    str(entry["rank"]),
                    str(entry["children"].get("core", "")),
                    str(entry["children"].get("gpu", "")),
                )
                for entry in R["execution"]["R_lite"]
            )
        except (KeyError, TypeError, AttributeError):
            key = None
        found = self._placements.get(key) if key is not None else None
        if found is not None:
            return found
        try:
            placement = tuple(
                Slot(self.name(rank), cores, gpus) for rank, cores, gpus in _ranks_of(R)
            )
        except (KeyError, TypeError, ValueError):
            return ()
        if key is not None:
            if len(self._placements) >= _REMEMBERED:
                self._placements.clear()
            self._placements[key] = placement
        return placement


def read_inventory(
    status: Mapping[str, Any],
    *,
    driver_rank: int,
    reserve: int = 0,
    names: Mapping[int, str] | None = None,
) -> tuple[list[NodeSpec], InventoryMap]:
    """Nodes that are up, from a ``sched.resource-status`` response.

    Args:
        status: the response: ``{"all": R, "down": R, "allocated": R}``.
        driver_rank: the broker rank the driver is connected to.
        reserve: cores of ``driver_rank`` to leave out (its highest-numbered ones); a node left
            without cores is left out altogether.
        names: the node name of each rank, instead of names made from the host names (a
            partition's nodes keep the names they have in the enclosing instance).

    Raises:
        ValueError: ``R`` cannot be read, or nothing is left to run tasks on.
    """
    try:
        hosts = _hosts_of(status["all"])
        every = list(_ranks_of(status["all"]))
        down = {rank for rank, _, _ in _ranks_of(status.get("down"))}
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"cannot read the Flux resource set: {exc!r}") from None
    unique = len(set(hosts.values())) == len(hosts)
    given = names or {}
    names = {
        rank: given.get(rank)
        or (hosts.get(rank, f"rank{rank}") if unique else f"{hosts.get(rank, 'rank')}:{rank}")
        for rank, _, _ in every
    }
    nodes = []
    for rank, cores, gpus in every:
        if rank in down:
            continue
        if rank == driver_rank and reserve:
            cores = cores[: max(0, len(cores) - reserve)]
            if not cores:
                continue
        nodes.append(NodeSpec(names[rank], cores, gpus))
    if not nodes:
        raise ValueError(
            f"the Flux instance has no usable node ({len(every)} rank(s), {len(down)} down"
            + (f", {reserve} core(s) reserved for the driver)" if reserve else ")")
        )
    return nodes, InventoryMap(names)


def _ranks_of(R: Any) -> Iterable[tuple[int, tuple[int, ...], tuple[str, ...]]]:
    """(rank, core ids, GPU ids) for every rank of an R, in rank order."""
    if not R:
        return []
    found: dict[int, tuple[tuple[int, ...], tuple[str, ...]]] = {}
    for entry in R["execution"]["R_lite"]:
        children = entry.get("children", {})
        cores = tuple(_decode_idset(children.get("core", "")))
        gpus = tuple(str(g) for g in _decode_idset(children.get("gpu", "")))
        for rank in _decode_idset(entry["rank"]):
            found[rank] = (cores, gpus)
    return [(rank, *found[rank]) for rank in sorted(found)]


def _hosts_of(R: Mapping[str, Any]) -> dict[int, str]:
    """Host name of each rank: R's nodelist lists the hosts in ascending rank order."""
    from flux.hostlist import decode

    ranks = [rank for rank, _, _ in _ranks_of(R)]
    hosts = [h for entry in R["execution"].get("nodelist", []) for h in decode(entry)]
    return dict(zip(ranks, hosts, strict=True)) if len(hosts) == len(ranks) else {}


def _decode_idset(text: str) -> list[int]:
    """``"0-2,5"`` to ``[0, 1, 2, 5]`` (RFC 22, without the optional brackets)."""
    ids: list[int] = []
    for part in text.strip("[]").split(","):
        if not part:
            continue
        low, _, high = part.partition("-")
        ids.extend(range(int(low), int(high or low) + 1))
    return ids


def _encode_idset(ids: Iterable[int]) -> str:
    runs: list[str] = []
    ordered = sorted(set(ids))
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        runs.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ",".join(runs)
