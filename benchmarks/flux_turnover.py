"""The slot turnover of a finished run, read from its jobs' eventlogs (for flux_throughput.py).

A slot is one broker rank's cores as Flux's ``R`` names them. For each slot, in the order its
jobs started, every pair (a job, the one after it) is one turnover: the time from the first's
``finish`` to the second's ``start``. Besides its median, the figures say where it goes:

- ``alloc``: the median time from the first job's ``free`` (its resources are back in the
  scheduler) to the second's ``alloc``;
- ``lead``: the median time by which the second job was in the scheduler's queue (its
  ``priority`` event) before the first's ``free``; negative where it came after (a driver that
  submits a job only when a slot frees);
- ``behind``: the share of turnovers where, when the slot freed, the next job was queued behind
  an earlier job still waiting (a job constrained to a rank that is busy holds every later job
  in a first-come-first-served queue, whatever their ranks), with the median turnover of those
  (``turnover_behind``) and of the others (``turnover_head``).
"""

from __future__ import annotations

import itertools
import json
import statistics
from typing import Any

__all__ = ["slot_turnover"]


def slot_turnover(flux: Any) -> dict[str, float | None]:
    """The turnover figures (seconds, ``behind`` a share) of the jobs of the instance."""
    h = flux.Flux()
    jobs: list[dict[str, Any]] = []
    for job in flux.job.JobList(h, max_entries=0, filters=["inactive"]).jobs():
        found = flux.job.job_kvs_lookup(h, job.id, keys=["eventlog", "R"], decode=False) or {}
        events: dict[str, Any] = {}
        for line in str(found.get("eventlog") or "").splitlines():
            event = json.loads(line)
            events.setdefault(event["name"], event["timestamp"])
        r = found.get("R")
        if not r or "start" not in events or "finish" not in events:
            continue
        r_lite = (json.loads(r) if isinstance(r, str) else r)["execution"]["R_lite"]
        events["slot"] = json.dumps(r_lite, sort_keys=True)
        events["queued"] = events.get("priority", events["submit"])
        jobs.append(events)
    slots: dict[str, list[dict[str, Any]]] = {}
    for job in jobs:
        slots.setdefault(job["slot"], []).append(job)
    turns: list[tuple[float, float, float, bool]] = []
    for line in slots.values():
        line.sort(key=lambda j: j["start"])
        for first, then in itertools.pairwise(line):
            freed = first.get("free", first["finish"])
            behind = any(
                j["queued"] < then["queued"] and j["alloc"] > freed for j in jobs if j is not then
            )
            turns.append(
                (
                    then["start"] - first["finish"],
                    then["alloc"] - freed,
                    freed - then["queued"],
                    behind,
                )
            )
    if not turns:
        return {"turnover": None}
    behind = [t[0] for t in turns if t[3]]
    head = [t[0] for t in turns if not t[3]]
    return {
        "turnover": statistics.median(t[0] for t in turns),
        "alloc": statistics.median(t[1] for t in turns),
        "lead": statistics.median(t[2] for t in turns),
        "behind": len(behind) / len(turns),
        "turnover_behind": statistics.median(behind) if behind else None,
        "turnover_head": statistics.median(head) if head else None,
    }
