"""After a crashed driver: find its jobs in a Flux instance, adopt them, or cancel them.

``FluxBackend.adopt`` and ``.recover`` (the engine's resume hooks) come here: a journaled job
id names its instance (``"<partition job id>/<job id>"`` in a partition, see ``FluxRouter``).

Blocking RPCs (job list, KVS lookups), made once, before anything is launched.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from matensemble.backends.base import Launch, LaunchKey, Outcome
from matensemble.backends.flux_channel import FluxChannel
from matensemble.backends.flux_job import ending_from_eventlog, outcome_of
from matensemble.backends.flux_routing import FluxRouter
from matensemble.backends.flux_takeback import HOLD

__all__ = [
    "adopt_job",
    "adopt_launches",
    "cancel_and_wait",
    "cancel_leftovers",
    "leftover_jobs",
    "moved_job",
    "sweep_leftovers",
]

_INACTIVE = 64  # FLUX_JOB_STATE_INACTIVE
_ADOPT_ATTRS = [
    "name",
    "state",
    "waitstatus",
    "t_run",
    "t_cleanup",
    "t_inactive",
    "exception_occurred",
    "exception_severity",
    "exception_type",
    "exception_note",
    "urgency",
]


def adopt_launches(
    router: FluxRouter, launches: Sequence[tuple[Launch, str]], urgency: Callable[[Launch], int]
) -> tuple[set[LaunchKey], list[Outcome]]:
    """Take over the jobs a crashed driver of this run submitted, by their journaled ids.

    Returns the keys taken over, and the outcomes of those among them whose job has ended
    meanwhile (read from the job list); the others are followed from now on. A job the
    crashed driver held to take it back (``flux_takeback``) gets ``urgency(launch)`` again.
    """
    taken: set[LaunchKey] = set()
    ended: list[Outcome] = []
    for launch, job_id in launches:
        channel, jobid = router.owner_of(job_id)
        if channel is None or jobid is None:
            continue
        found = adopt_job(channel, launch, jobid, urgency(launch))
        if found is False:
            continue
        taken.add(launch.key)
        if isinstance(found, Outcome):
            ended.append(found)
    return taken, ended


def cancel_leftovers(
    channels: Iterable[FluxChannel],
    swept: Sequence[FluxChannel],
    run_id: str,
    keys: Sequence[LaunchKey],
) -> None:
    """Cancel, and wait for, the active jobs of ``run_id`` named after a task of ``keys`` that
    no driver follows; in the ``swept`` channels (partitions taken over from a crashed
    driver), every job of ours that is not followed."""
    names = {task_id for task_id, _ in keys}
    for channel in channels:
        sweep = channel in swept
        if not names and not sweep:
            continue
        stale = leftover_jobs(channel, None if sweep else run_id, None if sweep else names)
        cancel_and_wait(channel, stale, "left by a crashed matensemble driver")


def sweep_leftovers(swept: Iterable[FluxChannel]) -> None:
    """Cancel, without waiting, every job of ours that no driver follows in ``swept``."""
    for channel in swept:
        for jobid in leftover_jobs(channel, None, None):
            channel.cancel_job(jobid, "left by a crashed matensemble driver")


def adopt_job(channel: FluxChannel, launch: Launch, jobid: int, urgency: int) -> bool | Outcome:
    """Follow a job a crashed driver submitted; ``False`` if it is gone or not that job.

    A job that has ended meanwhile is not followed: its ``Outcome`` is returned instead. One
    left held (urgency 0: the crashed driver was taking it back) gets ``urgency`` again.
    """
    job = channel.follow(launch, jobid)  # registered first: no event after this is missed
    try:
        info = channel.flux.job.job_list_id(channel.handle, jobid, attrs=_ADOPT_ATTRS).get_job()
    except OSError:
        info = None
    if info is None or info.get("name") != launch.task.id:
        channel.unfollow(job)  # gone, or not that job
        return False
    if info.get("state") != _INACTIVE or not channel.follows(jobid):
        if info.get("state") != _INACTIVE and info.get("urgency") == HOLD:
            with contextlib.suppress(OSError):  # it started or ended meanwhile: nothing held
                payload = {"id": jobid, "urgency": urgency}
                channel.handle.rpc("job-manager.urgency", payload).get()
        return True
    job.t_start = info.get("t_run") or None
    job.t_end = info.get("t_cleanup") or info.get("t_inactive") or None
    if info.get("exception_occurred") and info.get("exception_severity", 0) == 0:
        job.exception = (str(info.get("exception_type")), str(info.get("exception_note") or ""))
    if "waitstatus" in info:
        job.status = int(info["waitstatus"])
    elif job.exception is None:  # job-list may lag behind the job's own eventlog
        job.status, job.exception = ending_from_eventlog(channel.flux, channel.handle, jobid)
    channel.unfollow(job)
    outcome = outcome_of(job, channel.prefix + str(jobid))
    if outcome.withdrawn:  # taken back: perhaps to move it, under an id not journaled yet
        moved = moved_job(channel, launch, jobid)
        if moved is not None:
            return adopt_job(channel, launch, moved, urgency)
    return outcome


def moved_job(channel: FluxChannel, launch: Launch, taken_back: int) -> int | None:
    """The job a crashed driver submitted for ``launch`` after it took ``taken_back`` back
    to move it (``flux_takeback``), if there is one: the newest job named after the task and
    tagged with its run and attempt, submitted after ``taken_back``, whatever its state."""
    flux, task = channel.flux, launch.task
    try:
        found = flux.job.JobList(channel.handle, max_entries=0, name=task.id).jobs()
    except OSError:
        return None
    ours = (launch.run_id, task.id, launch.attempt)
    for jobid in sorted((int(info.id) for info in found), reverse=True):
        if jobid <= taken_back:
            break
        tag = _tag_of(channel, jobid)
        if tag is not None and (tag.get("run_id"), tag.get("task_id"), tag.get("attempt")) == ours:
            return jobid
    return None


def _tag_of(channel: FluxChannel, jobid: int) -> Mapping[str, Any] | None:
    """The ``attributes.user.matensemble`` tag of a job's jobspec; ``None`` if it has none."""
    try:
        spec = channel.flux.job.job_kvs_lookup(channel.handle, jobid, keys=["jobspec"])
        tag = spec["jobspec"]["attributes"]["user"]["matensemble"]
    except (OSError, KeyError, TypeError):
        return None
    return tag if isinstance(tag, Mapping) else None


def leftover_jobs(channel: FluxChannel, run_id: str | None, names: set[str] | None) -> list[int]:
    """Active jobs of ours that no driver follows: of ``run_id`` (any run if ``None``) and
    named after one of ``names`` (any name if ``None``), submitted by another driver."""
    found = []
    for info in channel.flux.job.JobList(channel.handle, filters=["pending", "running"]).jobs():
        if names is not None and info.name not in names:
            continue
        if channel.follows(int(info.id)):
            continue
        tag = _tag_of(channel, int(info.id))
        if tag is None:
            continue
        theirs = tag.get("driver") != channel.token and "task_id" in tag
        if theirs and (run_id is None or tag.get("run_id") == run_id):
            found.append(int(info.id))
    return found


def cancel_and_wait(channel: FluxChannel, jobids: Sequence[int], reason: str) -> None:
    """Cancel jobs and block until each is clean."""
    flux = channel.flux
    for jobid in jobids:
        with contextlib.suppress(OSError):
            flux.job.cancel(channel.handle, jobid, reason)
    for jobid in jobids:
        with contextlib.suppress(OSError):
            flux.job.event_wait(channel.handle, jobid, "clean", raiseJobException=False)
