"""Journal events of jobs whose submit answer has not come yet, held until it does.

A channel that does not follow Flux's ``submit`` event (the largest one in the journal: it
carries the whole jobspec, which the job manager encodes and the driver decodes for every
job) learns a job's id only from the answer to its submit. The job manager may send the job's
first events before that answer reaches us, so while any submit of ours is unanswered, events
of job ids we do not know are held here; the answer that names one of them releases its
events, in order. Once every submit is answered, every job of ours is known, and what is still
held belongs to someone else's jobs: it is dropped.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["HeldEvent", "UnansweredSubmits"]

HeldEvent = tuple[str, Mapping[str, Any], Any]
"""(event name, event, journal payload)."""


class UnansweredSubmits:
    """Counts the submits still waiting for their answer; holds unknown jobs' events meanwhile."""

    __slots__ = ("_held", "count")

    def __init__(self) -> None:
        self.count = 0
        self._held: dict[int, list[HeldEvent]] = {}

    def sent(self) -> None:
        """A submit went out: its answer will name a job we do not know yet."""
        self.count += 1

    def hold(self, jobid: int, name: str, event: Mapping[str, Any], payload: Any) -> bool:
        """Keep an event of an unknown job, if it may be ours (``False``: it is not ours)."""
        if not self.count:
            return False
        self._held.setdefault(jobid, []).append((name, event, payload))
        return True

    def answered(self, jobid: int | None) -> list[HeldEvent]:
        """A submit was answered (with the job's id, or ``None`` if refused): the events held
        for that job, to be taken in now."""
        self.count -= 1
        held = self._held.pop(jobid, []) if jobid is not None else []
        if not self.count:
            self._held.clear()
        return held

    def held(self) -> int:
        """How many events are held."""
        return sum(len(events) for events in self._held.values())

    def clear(self) -> None:
        """Drop what is held (the channel stopped following its jobs); the answers still
        due are counted down as they come."""
        self._held.clear()
