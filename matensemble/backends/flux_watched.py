"""Jobs of our own that are not launches (the child instances of partitions), by job id.

A channel routes every journal event of such a job to the job's ``JobEvents`` callback, from
its submit event on. The job is known either by the tag in its jobspec
(``attributes.user.matensemble.partition``), which the submit event carries and which may
overtake the submit response, or by the id the submit response names, whichever comes first;
or, for a partition found at start, by its id alone.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["JobEvents", "WatchedJobs"]

JobEvents = Callable[[str, Mapping[str, Any], Mapping[str, Any]], None]
"""Receives (event name, event, journal payload) for a job followed with ``watch``.

Besides Flux's own events it gets ``jobid`` (the job's id is known), ``refused`` (the submit
failed) and ``lost`` (the channel failed: no more events will come)."""


class WatchedJobs:
    """The watched jobs of one channel: submitted ones waiting for their id, and known ones."""

    def __init__(self) -> None:
        self._by_id: dict[int, JobEvents] = {}
        self._by_tag: dict[str, JobEvents] = {}  # submitted, id not known yet

    def expect(self, tag: str, events: JobEvents) -> None:
        """A job tagged ``tag`` is being submitted; its events go to ``events``."""
        self._by_tag[tag] = events

    def submitted(self, tag: str, jobid: int) -> None:
        """The submit response named the job's id (unless its submit event did already)."""
        events = self._by_tag.pop(tag, None)
        if events is not None:
            self._known(jobid, events)

    def refused(self, tag: str, note: str) -> None:
        events = self._by_tag.pop(tag, None)
        if events is not None:
            events("refused", {"note": note}, {})

    def claim(self, jobid: int, tag: str) -> JobEvents | None:
        """The submit event of a job tagged ``tag``: its watcher, if it is one we expect."""
        events = self._by_tag.pop(tag, None)
        if events is not None:
            self._known(jobid, events)
        return events

    def watch(self, jobid: int, events: JobEvents) -> None:
        """Route the events of an existing job to ``events``."""
        self._by_id[jobid] = events

    def get(self, jobid: int) -> JobEvents | None:
        return self._by_id.get(jobid)

    def clean(self, jobid: int) -> None:
        """The job is clean: no more events will come for it."""
        self._by_id.pop(jobid, None)

    def lose_all(self, reason: str) -> None:
        """Tell every known job's watcher that its events stop here (the channel failed)."""
        watched = list(self._by_id.values())
        self._by_id.clear()
        for events in watched:
            events("lost", {"note": reason}, {})

    def _known(self, jobid: int, events: JobEvents) -> None:
        self._by_id[jobid] = events
        events("jobid", {"id": jobid}, {})
