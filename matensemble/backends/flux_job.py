"""One launch on its way through Flux, and the ``Outcome`` its events add up to."""

from __future__ import annotations

import enum
import json
import os
from collections.abc import Mapping
from typing import Any

from matensemble.backends.base import Launch, Outcome
from matensemble.backends.flux_inventory import InventoryMap
from matensemble.model import Placement, TaskState

__all__ = ["TAKEN_BACK", "FluxJob", "TakeBack", "ending_from_eventlog", "outcome_of"]

# The note of the cancel that takes a job back before it ran (``flux_takeback``): its outcome
# is ``withdrawn``, also when a resumed driver reads it from the job list.
TAKEN_BACK = "taken back by matensemble (queued ahead, never started)"


class TakeBack(enum.Enum):
    """Where a job's taking back stands (``flux_takeback``)."""

    HOLDING = "holding"  # urgency 0 asked for; waiting for its event
    TAKING = "taking"  # held while it waited for its dependency: cancelled, it never runs
    RELEASED = "released"  # held too late to be sure: urgency restored, it runs where booked


class FluxJob:
    """What Flux has told us about one launch (owned by its channel, on the loop thread)."""

    __slots__ = (
        "after",
        "cancel_requested",
        "cancel_sent",
        "clean",
        "exception",
        "jobid",
        "launch",
        "placement",
        "relaunch",
        "status",
        "t_end",
        "t_start",
        "taking_back",
        "times",
        "urgency",
    )

    def __init__(self, launch: Launch, after: FluxJob | None = None, urgency: int = 16) -> None:
        self.launch = launch
        self.after = after  # the job this one's jobspec depends on (``queue_ahead="depend"``)
        self.urgency = urgency  # the urgency it was submitted with
        self.taking_back: TakeBack | None = None  # see ``flux_takeback``
        self.relaunch = False  # taken back to be submitted again at once, without dependency
        self.clean = False  # its ``clean`` event was seen
        self.jobid: int | None = None
        self.cancel_requested = False
        self.cancel_sent = False
        self.exception: tuple[str, str] | None = None  # first fatal exception: type, note
        self.status: int | None = None  # wait status from the finish event
        self.t_start: float | None = None
        self.t_end: float | None = None
        self.times: dict[str, float] = {}  # submit and alloc timestamps
        self.placement: Placement = ()  # what Flux assigned, from the alloc event

    def record(
        self, name: str, event: Mapping[str, Any], payload: Any, inventory: InventoryMap
    ) -> None:
        """Take in what one journal event says: times, the cores and GPUs Flux assigned
        (``R`` of the alloc event, on ``inventory``'s nodes), the first fatal exception,
        the wait status."""
        if name == "submit":
            self.times["submit"] = event["timestamp"]
        elif name == "alloc":
            self.placement = inventory.slots(payload.get("R"))
            self.times["alloc"] = event["timestamp"]
        elif name == "start":
            self.t_start = event["timestamp"]
        elif name == "exception":
            context = event.get("context", {})
            if context.get("severity") == 0 and self.exception is None and self.status is None:
                self.exception = (str(context.get("type")), str(context.get("note") or ""))
        elif name == "finish":
            self.status = int(event.get("context", {}).get("status", 0))
            self.t_end = event["timestamp"]
        elif name == "clean":
            self.t_end = self.t_end or event["timestamp"]
            self.clean = True


def outcome_of(job: FluxJob, job_id: str | None) -> Outcome:
    """Map a finished job to an ``Outcome``: exceptions first, then the wait status."""
    key, timeout = job.launch.key, job.launch.task.timeout
    common: dict[str, Any] = {
        "key": key,
        "start_time": job.t_start,
        "end_time": job.t_end,
        "placement": job.placement,
        "times": job.times,
        "job_id": job_id,
    }
    status = job.status
    returncode = os.WEXITSTATUS(status) if status is not None and os.WIFEXITED(status) else None
    signal = os.WTERMSIG(status) if status is not None and os.WIFSIGNALED(status) else None
    if job.exception is not None:
        kind, note = job.exception
        if kind == "cancel":
            # Taken back before it ran (``flux_takeback``), also when read after a crash.
            withdrawn = note == TAKEN_BACK and job.t_start is None
            return Outcome(
                state=TaskState.CANCELLED, reason=note or "cancelled", withdrawn=withdrawn, **common
            )
        if kind == "timeout":
            why = f"timed out after {timeout:g}s" if timeout is not None else "timed out"
            return Outcome(state=TaskState.TIMED_OUT, reason=f"{why} ({note})", **common)
        return Outcome(
            state=TaskState.FAILED,
            returncode=returncode,
            signal=signal,
            reason=f"flux {kind} exception: {note}",
            **common,
        )
    if status == 0:
        return Outcome(state=TaskState.SUCCEEDED, returncode=0, **common)
    if signal is not None:
        return Outcome(
            state=TaskState.FAILED, signal=signal, reason=f"killed by signal {signal}", **common
        )
    if returncode is None:
        return Outcome(state=TaskState.FAILED, reason="the job ended without finishing", **common)
    return Outcome(
        state=TaskState.FAILED, returncode=returncode, reason=f"exit code {returncode}", **common
    )


def ending_from_eventlog(
    flux: Any, handle: Any, jobid: int
) -> tuple[int | None, tuple[str, str] | None]:
    """The wait status of an ended job's ``finish`` event and its first fatal exception, read
    from the job's eventlog in the KVS (what job-list derives its answer from). The job is
    inactive, but its last events may not be committed yet: wait for ``clean``, its last."""
    try:
        flux.job.event_wait(handle, jobid, "clean", raiseJobException=False)
        found = flux.job.job_kvs_lookup(handle, jobid, keys=["eventlog"])
    except OSError:
        return None, None
    status: int | None = None
    exception: tuple[str, str] | None = None
    for line in str((found or {}).get("eventlog") or "").splitlines():
        event = json.loads(line)
        context = event.get("context") or {}
        if event.get("name") == "finish" and "status" in context:
            status = int(context["status"])
        elif event.get("name") == "exception" and context.get("severity", 0) == 0:
            exception = exception or (str(context.get("type")), str(context.get("note") or ""))
    return status, exception
