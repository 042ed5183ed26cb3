"""One launch on its way through Flux, and the ``Outcome`` its events add up to."""

from __future__ import annotations

import os
from typing import Any

from matensemble.backends.base import Launch, Outcome
from matensemble.model import Placement, TaskState

__all__ = ["FluxJob", "outcome_of"]


class FluxJob:
    """What Flux has told us about one launch (owned by its channel, on the loop thread)."""

    __slots__ = (
        "cancel_requested",
        "cancel_sent",
        "exception",
        "jobid",
        "launch",
        "placement",
        "status",
        "t_end",
        "t_start",
        "times",
    )

    def __init__(self, launch: Launch) -> None:
        self.launch = launch
        self.jobid: int | None = None
        self.cancel_requested = False
        self.cancel_sent = False
        self.exception: tuple[str, str] | None = None  # first fatal exception: type, note
        self.status: int | None = None  # wait status from the finish event
        self.t_start: float | None = None
        self.t_end: float | None = None
        self.times: dict[str, float] = {}  # submit and alloc timestamps
        self.placement: Placement = ()  # what Flux assigned, from the alloc event


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
            return Outcome(state=TaskState.CANCELLED, reason=note or "cancelled", **common)
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
