"""``status.json``: the latest snapshot of a run, for ``matensemble status`` and monitors.

Written atomically (temporary file, then rename) when events happened, at most once per
``interval`` seconds, with a trailing write so that the last change is never lost. Nothing is
written while nothing changes.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from matensemble.errors import DiskFull, MatEnsembleError
from matensemble.events import Event, RunFinished, RunStarted, TaskFinished
from matensemble.model import TaskState
from matensemble.observer import Observer

__all__ = ["STATUS_NAME", "RunStatus", "StatusFile", "read_status"]

STATUS_NAME = "status.json"


class Failure(msgspec.Struct, frozen=True):
    id: str
    state: str
    reason: str | None


class RunStatus(msgspec.Struct, kw_only=True):
    """What ``status.json`` holds."""

    run_id: str
    backend: str
    phase: str  # running | finished | cancelled | error
    started: float
    updated: float
    counts: dict[str, int]
    cores: dict[str, int]
    gpus: dict[str, int]
    failures: list[Failure]
    failures_total: int = 0
    pid: int = 0
    queued_ahead: int = 0  # of the running tasks: booked behind others, not started yet


class StatusFile(Observer):
    """Keeps ``<run-dir>/status.json`` current.

    Args:
        counts: returns the number of tasks per state (the engine's public ``counts``).
        usage: returns ``(free_cores, total_cores, free_gpus, total_gpus)``.
        queued_ahead: returns how many running tasks are booked behind others in the
            backend's queue and have not started (``matensemble.queue_ahead``).
    """

    def __init__(
        self,
        run_dir: Path,
        counts: Callable[[], dict[str, int]],
        usage: Callable[[], tuple[int, int, int, int]],
        *,
        queued_ahead: Callable[[], int] | None = None,
        interval: float = 1.0,
        keep_failures: int = 50,
    ) -> None:
        self.path = run_dir / STATUS_NAME
        self._counts = counts
        self._usage = usage
        self._queued_ahead = queued_ahead
        self._interval = interval
        self._failures: deque[Failure] = deque(maxlen=keep_failures)
        self._failures_total = 0
        self._meta: dict[str, Any] = {"run_id": "", "backend": "", "started": time.time()}
        self._phase = "running"
        self._dirty = False
        self._last_write = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._error: DiskFull | None = None  # a write from the timer failed: raised by flush

    def on_event(self, event: Event) -> None:
        self._dirty = True
        # The event types are final: ``type() is`` costs less than an isinstance chain, and
        # most events (starts) are none of these.
        if type(event) is TaskFinished:
            r = event.result
            if (
                r.state is not TaskState.SUCCEEDED
                and r.state is not TaskState.SKIPPED
                and event.retry_in is None
            ):
                self._failures.append(Failure(r.id, r.state.value, r.reason))
                self._failures_total += 1
        elif type(event) is RunStarted:
            self._meta = {"run_id": event.run_id, "backend": event.backend, "started": event.t}
        elif type(event) is RunFinished:
            self._phase = "finished" if event.reason == "completed" else event.reason

    def flush(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        if not self._dirty or self._timer is not None:
            return
        wait = self._last_write + self._interval - time.monotonic()
        if wait <= 0:
            self._write()
        else:
            self._timer = asyncio.get_running_loop().call_later(wait, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self._dirty:
            try:
                self._write()
            except DiskFull as exc:  # no one to raise to in a loop callback: the next flush
                self._error = exc

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._write()

    def _write(self) -> None:
        free_c, total_c, free_g, total_g = self._usage()
        status = RunStatus(
            run_id=self._meta["run_id"],
            backend=self._meta["backend"],
            phase=self._phase,
            started=self._meta["started"],
            updated=time.time(),
            counts=self._counts(),
            cores={"free": free_c, "total": total_c},
            gpus={"free": free_g, "total": total_g},
            failures=list(self._failures),
            failures_total=self._failures_total,
            pid=os.getpid(),
            queued_ahead=self._queued_ahead() if self._queued_ahead is not None else 0,
        )
        tmp = self.path.with_name(STATUS_NAME + ".tmp")
        try:
            tmp.write_bytes(msgspec.json.format(msgspec.json.encode(status), indent=2) + b"\n")
            os.replace(tmp, self.path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)  # never leave a half-written status behind
            if DiskFull.is_full(exc):
                raise DiskFull(self.path, exc) from exc
            raise
        self._dirty = False
        self._last_write = time.monotonic()


def read_status(run_dir: Path) -> RunStatus:
    """Read ``status.json`` of a run directory.

    Raises:
        FileNotFoundError: there is none.
        MatEnsembleError: it is not a status file (names the file and the problem).
    """
    path = run_dir / STATUS_NAME
    try:
        return msgspec.json.decode(path.read_bytes(), type=RunStatus)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise MatEnsembleError(f"{path}: not a MatEnsemble status file ({exc})") from None
