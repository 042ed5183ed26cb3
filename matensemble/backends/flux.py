"""The Flux backend: every launch is a Flux job, placed on the broker ranks the engine chose.

Run the driver inside a Flux instance it owns (``flux start``, ``flux alloc``, ``flux batch``).

- **Inventory**, read once at ``open()`` from ``sched.resource-status``: one node per broker
  rank that is up, with its core and GPU ids. From then on the engine accounts locally and
  launches only what fits, so Flux never holds a queue the engine does not know about.
- **Placement**: each job carries an RFC 31 constraint ``{"ranks": [...]}`` naming the ranks
  of the engine's placement, so Flux runs it where the engine accounted it. Flux picks the
  core ids itself (a constraint cannot name cores); the ranks, cores and GPUs it actually
  assigned come back in the job's ``alloc`` event and are reported in the ``Outcome``.
- **Watching**: one streaming ``job-manager.events-journal`` RPC, opened at ``open()``,
  carries the submit, alloc, start, exception, finish and clean events of every job: about
  six messages per job and no RPC per job beyond the submit itself. The journal names our jobs
  by the ``attributes.user.matensemble`` tag of their jobspec, so an event that overtakes the
  submit response is never lost. It needs the instance owner, which the driver is in an
  instance it started or was allocated.
- **Waiting** costs nothing: ``FluxReactorBridge`` runs the handle's reactor when its file
  descriptor turns readable; there is no thread, no timer and no poll interval.

What a jobspec holds (resources, rank constraint, duration, files, environment, tags) is
described in ``flux_jobspec``; how R maps to nodes in ``flux_inventory``.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import secrets
import time
from collections.abc import Mapping, Sequence
from typing import Any

from anyio.abc import TaskGroup

from matensemble.backends.base import Backend, Launch, LaunchKey, Outcome, Reporter, Sink
from matensemble.backends.flux_inventory import InventoryMap, read_inventory
from matensemble.backends.flux_jobspec import JobspecBuilder
from matensemble.backends.flux_reactor import FluxReactorBridge
from matensemble.backends.task_files import prepare_task_outputs
from matensemble.errors import BackendError, BackendUnavailable
from matensemble.model import Placement, TaskState
from matensemble.resources import NodeSpec

__all__ = ["FluxBackend"]

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
]

# Events the journal sends us; the others (validate, depend, priority, release, free, ...) are
# filtered out in the job manager, before they cost a message.
_EVENTS = {"submit": 1, "alloc": 1, "start": 1, "exception": 1, "finish": 1, "clean": 1}
_INSTALL_HINT = (
    "the Flux Python bindings cannot be imported ({error}). Install them with "
    "`pip install 'matensemble[flux]'` (flux-python, matching your flux-core), or put "
    "flux-core's own Python directory on PYTHONPATH, e.g. "
    "`export PYTHONPATH=\"$(flux python -c 'import flux, os; "
    "print(os.path.dirname(os.path.dirname(flux.__file__)))')\":$PYTHONPATH`"
)
_NO_INSTANCE_HINT = (
    "there is no Flux instance to connect to ({error}). Run the driver inside one: "
    "`flux start python driver.py` on a workstation, `flux alloc -N2` or `flux batch -N2 "
    "script.sh` on a cluster, or pass FluxBackend(uri=...) (see `flux uri --help`)"
)


class _Job:
    """One launch on its way through Flux (owned by the backend, on the loop thread)."""

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


class FluxBackend(Backend):
    """Run each launch as a Flux job on the broker ranks the engine placed it on.

    Args:
        uri: the instance to connect to; default: the enclosing one (``FLUX_URI``).
        pmi: PMI flavour(s) for ``mpi`` tasks, the ``pmi`` shell option (e.g. ``"pmix"``,
            ``"cray-pals"``, ``"simple,pmix"``); default: Flux's own (simple PMI, which the
            ``mpich`` wheel and most MPIs built for Flux speak).
        reserve_driver_cores: leave this many cores of the driver's broker rank out of the
            inventory (the highest-numbered ones, which Flux's first-fit core choice leaves
            free), so the driver has CPU to itself. Only our accounting changes; nothing in
            the instance is touched.
        urgency: pass each task's ``priority`` to Flux as job urgency ``16 + priority``,
            clamped to 0..31. Since the engine launches only what fits, this matters only
            while Flux is still freeing a finished job's resources.
        queue: the Flux queue to submit to, for instances with several.
        shell_options: extra job-shell options for every job (``flux-shell-options(7)``),
            e.g. ``{"cpu-affinity": "off"}``; they override the defaults (per-task CPU and GPU
            affinity, output appended to the task's files).
    """

    name = "flux"

    def __init__(
        self,
        uri: str | None = None,
        *,
        pmi: str | None = None,
        reserve_driver_cores: int = 0,
        urgency: bool = False,
        queue: str | None = None,
        shell_options: Mapping[str, Any] | None = None,
    ) -> None:
        if type(reserve_driver_cores) is not int or reserve_driver_cores < 0:
            raise ValueError(f"reserve_driver_cores must be an int >= 0: {reserve_driver_cores!r}")
        self._uri = uri
        self._options: dict[str, Any] = {
            "pmi": pmi,
            "queue": queue,
            "shell_options": dict(shell_options or {}),
        }
        self._reserve = reserve_driver_cores
        self._urgency = urgency
        self._loop: asyncio.AbstractEventLoop | None = None
        self._h: Any = None
        self._flux: Any = None  # the imported ``flux`` package
        self._bridge: FluxReactorBridge | None = None
        self._journal: Any = None
        self._journal_ready: asyncio.Future[None] | None = None
        self._status: asyncio.Future[Any] | None = None
        self._journal_ended = asyncio.Event()
        self._map = InventoryMap({})
        self._token = secrets.token_hex(8)  # names this backend's jobs in the journal
        self._deadline: float | None = None
        self._jobspecs: JobspecBuilder | None = None
        self._jobs: dict[LaunchKey, _Job] = {}
        self._cleaning = 0  # jobs reported at their finish, not yet clean in Flux
        self._by_id: dict[int, _Job] = {}
        self._reporter: Reporter | None = None
        self._closing = False
        self._broken: str | None = None

    # -- opening ------------------------------------------------------------------------------

    async def open(self, sink: Sink, task_group: TaskGroup) -> Sequence[NodeSpec]:
        """Connect, start the journal, and read the inventory (one RPC each, concurrently).

        Raises:
            BackendUnavailable: the bindings are missing, or there is no instance to reach.
            BackendError: the journal or the inventory cannot be read.
        """
        if self._loop is not None:
            raise BackendError("FluxBackend.open() was called twice")
        try:
            import flux
            import flux.constants
            import flux.job
        except ImportError as exc:
            raise BackendUnavailable(_INSTALL_HINT.format(error=exc)) from None
        try:
            self._h = flux.Flux(self._uri) if self._uri else flux.Flux()
        except OSError as exc:
            error = str(exc.strerror or exc)
            if self._uri is None and "FLUX_URI" not in os.environ:
                error = f"FLUX_URI is not set; {error}"
            raise BackendUnavailable(_NO_INSTANCE_HINT.format(error=error)) from None
        self._flux = flux
        self._loop = loop = asyncio.get_running_loop()
        self._reporter = Reporter(sink, loop, lambda: len(self._jobs) + self._cleaning)
        self._bridge = FluxReactorBridge(self._h, loop, self._on_bridge_error)
        try:
            self._journal_ready = ready = loop.create_future()
            self._journal = self._h.rpc(
                "job-manager.events-journal",
                {"full": False, "allow": _EVENTS},
                flags=flux.constants.FLUX_RPC_STREAMING,
            )
            self._journal.then(self._bridge.callback(self._on_journal))
            self._status = status = loop.create_future()
            self._h.rpc("sched.resource-status").then(self._bridge.callback(self._on_status))
            self._bridge.kick()
            try:
                await ready
            except OSError as exc:
                raise BackendError(
                    f"cannot follow Flux job events (job-manager.events-journal: "
                    f"{exc.strerror or exc}); the driver must run as the instance owner, "
                    "e.g. inside `flux alloc` or `flux batch`"
                ) from None
            try:
                nodes, self._map = read_inventory(
                    await status, driver_rank=self._h.get_rank(), reserve=self._reserve
                )
            except (OSError, ValueError) as exc:
                raise BackendError(f"cannot read the Flux inventory: {exc}") from None
        except BaseException:
            self._shutdown()
            raise
        self._jobspecs = JobspecBuilder(
            flux.job.JobspecV1, self._map, token=self._token, environ=os.environ, **self._options
        )
        self._deadline = _allocation_end(flux, self._h)
        return nodes

    def deadline(self) -> float | None:
        """When the enclosing allocation ends (``flux job timeleft``), if it has a limit."""
        return self._deadline

    async def adopt(self, launches: Sequence[tuple[Launch, str]]) -> set[LaunchKey]:
        """Take over jobs a crashed driver of this run submitted, by their journaled job ids.

        A job still pending or running is followed like one of ours from now on (its events
        arrive on our journal stream); one that has ended meanwhile reports its outcome from
        the job list. Blocking RPCs, once, before anything is launched.
        """
        taken: set[LaunchKey] = set()
        if self._h is None:
            return taken
        for launch, job_id in launches:
            jobid = int(job_id)
            job = _Job(launch)
            job.jobid = jobid
            self._jobs[launch.key] = job  # registered first: no event after this is missed
            self._by_id[jobid] = job
            try:
                info = self._flux.job.job_list_id(self._h, jobid, attrs=_ADOPT_ATTRS).get_job()
            except OSError:
                info = None
            if info is None or info.get("name") != launch.task.id:
                del self._jobs[launch.key], self._by_id[jobid]  # gone, or not that job
                continue
            taken.add(launch.key)
            if info.get("state") == _INACTIVE and jobid in self._by_id:
                job.t_start = info.get("t_run") or None
                job.t_end = info.get("t_cleanup") or info.get("t_inactive") or None
                if info.get("exception_occurred") and info.get("exception_severity", 0) == 0:
                    job.exception = (
                        str(info.get("exception_type")),
                        str(info.get("exception_note") or ""),
                    )
                if "waitstatus" in info:
                    job.status = int(info["waitstatus"])
                del self._jobs[launch.key], self._by_id[jobid]
                self._reports.soon(_outcome(job))
        return taken

    async def recover(self, run_id: str, keys: Sequence[LaunchKey]) -> None:
        """Cancel the jobs an earlier, crashed driver of ``run_id`` left running, and wait.

        They are found by name (the task id) among the instance's active jobs and confirmed
        by the ``run_id`` in their jobspec; the engine then runs those tasks again. Blocking
        RPCs, once, before anything is launched.
        """
        if not keys or self._h is None:
            return
        flux, names = self._flux, {task_id for task_id, _ in keys}
        stale = []
        for info in flux.job.JobList(self._h, filters=["pending", "running"]).jobs():
            if info.name not in names:
                continue
            try:
                spec = flux.job.job_kvs_lookup(self._h, info.id, keys=["jobspec"])["jobspec"]
                tag = spec["attributes"]["user"]["matensemble"]
            except (OSError, KeyError, TypeError):
                continue
            if tag.get("run_id") == run_id and tag.get("driver") != self._token:
                stale.append(info.id)
        for jobid in stale:
            with contextlib.suppress(OSError):
                flux.job.cancel(self._h, jobid, "left by a crashed matensemble driver")
        for jobid in stale:
            with contextlib.suppress(OSError):
                flux.job.event_wait(self._h, jobid, "clean", raiseJobException=False)

    def kill(self) -> None:
        """Send a cancel for every job in flight, without waiting (the driver exits next).

        The requests leave on the broker socket at once, so the jobs go even though nobody
        stays to hear the answers.
        """
        if self._h is None or self._bridge is None or self._bridge.lost:
            return
        for job in list(self._jobs.values()):
            if job.jobid is not None:
                with contextlib.suppress(OSError):
                    self._flux.job.cancel_async(self._h, job.jobid, "driver forced to exit")

    # -- launching ----------------------------------------------------------------------------

    def launch(self, launch: Launch) -> None:
        """Submit one job; its outcome arrives through the sink when the job is clean."""
        if self._bridge is None:
            raise BackendError("FluxBackend.launch() before open()")
        key = launch.key
        if key in self._jobs:
            raise ValueError(f"launch {key} is already running")
        if self._closing:
            self._reports.soon(Outcome(key=key, state=TaskState.CANCELLED, reason="backend closed"))
            return
        if self._broken is not None:
            self._reports.soon(Outcome(key=key, state=TaskState.FAILED, reason=self._broken))
            return
        try:
            assert self._jobspecs is not None
            jobspec = self._jobspecs.build(launch)
            prepare_task_outputs(launch.task_dir)  # no links followed: the shell opens ours
        except (OSError, ValueError, TypeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            self._reports.soon(
                Outcome(key=key, state=TaskState.FAILED, reason=f"cannot build job: {reason}")
            )
            return
        urgency = 16
        if self._urgency:
            urgency = max(0, min(31, 16 + launch.task.priority))
        job = _Job(launch)
        try:
            future = self._flux.job.submit_async(self._h, jobspec, urgency=urgency, novalidate=True)
        except OSError as exc:
            self._reports.soon(
                Outcome(key=key, state=TaskState.FAILED, reason=f"flux submit: {exc}")
            )
            return
        self._jobs[key] = job
        future.then(self._bridge.callback(self._on_submitted), job)
        self._bridge.kick()

    # -- cancelling ---------------------------------------------------------------------------

    def cancel(self, key: LaunchKey) -> None:
        """Cancel the launch's job; if its id is not known yet, as soon as it is."""
        job = self._jobs.get(key)
        if job is not None and not job.cancel_requested:
            job.cancel_requested = True
            self._send_cancel(job)

    def _send_cancel(self, job: _Job) -> None:
        if job.jobid is None or job.cancel_sent or not job.cancel_requested:
            return
        if self._bridge is None or self._bridge.lost:
            return
        job.cancel_sent = True
        reason = "backend closed" if self._closing else "cancelled by matensemble"
        future = self._flux.job.cancel_async(self._h, job.jobid, reason)
        future.then(self._bridge.callback(_ignore_reply))
        self._bridge.kick()

    # -- what Flux tells us -------------------------------------------------------------------

    def _on_status(self, future: Any) -> None:
        assert self._bridge is not None
        assert self._status is not None
        if not self._status.done():
            try:
                self._status.set_result(self._bridge.payload(future))
            except OSError as exc:
                self._status.set_exception(exc)

    def _on_submitted(self, future: Any, job: _Job) -> None:
        assert self._bridge is not None
        try:
            jobid = self._bridge.job_id(future)
        except OSError as exc:
            if self._jobs.get(job.launch.key) is job:
                del self._jobs[job.launch.key]
                reason = f"flux: {exc.strerror}"
                self._reports.now(
                    Outcome(key=job.launch.key, state=TaskState.FAILED, reason=reason)
                )
            return
        if job.jobid is None and self._jobs.get(job.launch.key) is job:
            self._known(job, jobid)

    def _on_journal(self, future: Any) -> None:
        assert self._bridge is not None
        try:
            payload = self._bridge.payload(future)
        except OSError as exc:
            self._journal_ended.set()
            ready = self._journal_ready
            if ready is not None and not ready.done():
                ready.set_exception(exc)
            elif not self._closing:
                self._fatal(f"Flux stopped sending job events: {exc}")
            return
        future.reset()
        jobid = payload["id"]
        if jobid == -1:  # the sentinel after the backlog: we are following live events now
            if self._journal_ready is not None and not self._journal_ready.done():
                self._journal_ready.set_result(None)
            return
        job = self._by_id.get(jobid)
        for event in payload["events"]:
            name = event["name"]
            if name == "submit":
                job = self._claim(jobid, payload.get("jobspec"))
                if job is not None:
                    job.times["submit"] = event["timestamp"]
            elif job is None:
                return  # not ours
            elif name == "alloc":
                job.placement = self._map.slots(payload.get("R"))
                job.times["alloc"] = event["timestamp"]
            elif name == "start":
                job.t_start = event["timestamp"]
            elif name == "exception":
                context = event.get("context", {})
                if context.get("severity") == 0 and job.exception is None and job.status is None:
                    job.exception = (str(context.get("type")), str(context.get("note") or ""))
            elif name == "finish":
                job.status = int(event.get("context", {}).get("status", 0))
                job.t_end = event["timestamp"]
                if self._jobs.get(job.launch.key) is job:
                    # Every process of the job is gone and its output is written: report
                    # now, while Flux frees the resources, so the next job is on its way.
                    del self._jobs[job.launch.key]
                    self._cleaning += 1
                    self._reports.now(_outcome(job))
            elif name == "clean":
                job.t_end = job.t_end or event["timestamp"]
                self._finish(jobid, job)

    def _claim(self, jobid: int, jobspec: Any) -> _Job | None:
        """The job whose submit event this is, if it is one of ours."""
        try:
            tag = jobspec["attributes"]["user"]["matensemble"]
            if tag.get("driver") != self._token:
                return None
            job = self._jobs.get((tag["task_id"], tag["attempt"]))
        except (KeyError, TypeError):
            return None
        if job is not None and job.jobid is None:
            self._known(job, jobid)
        return job

    def _known(self, job: _Job, jobid: int) -> None:
        """The job id of a launch is known: follow it, journal it, send a pending cancel."""
        job.jobid = jobid
        self._by_id[jobid] = job
        if self.job_ids is not None:
            self.job_ids(job.launch.key, str(jobid))
        self._send_cancel(job)

    def _finish(self, jobid: int, job: _Job) -> None:
        del self._by_id[jobid]
        if self._jobs.get(job.launch.key) is job:
            del self._jobs[job.launch.key]
            self._reports.now(_outcome(job))
        else:  # reported at its finish event
            self._cleaning -= 1
            self._reports.check()

    # -- reporting ----------------------------------------------------------------------------

    @property
    def _reports(self) -> Reporter:
        assert self._reporter is not None, "FluxBackend used before open()"
        return self._reporter

    def _on_bridge_error(self, exc: BaseException) -> None:
        self._fatal(f"Flux backend error: {exc}")

    def _fatal(self, reason: str) -> None:
        """Fail every launch in flight (cancelling its job if Flux can still be asked)."""
        if self._broken is None:
            self._broken = reason
        for opening in (self._journal_ready, self._status):
            if opening is not None and not opening.done():
                opening.set_exception(BackendError(reason))
        for job in list(self._jobs.values()):
            job.cancel_requested = True
            self._send_cancel(job)
        jobs = list(self._jobs.values())
        self._jobs.clear()
        self._by_id.clear()
        self._cleaning = 0
        for job in jobs:
            self._reports.now(Outcome(key=job.launch.key, state=TaskState.FAILED, reason=reason))
        if self._reporter is not None:
            self._reporter.check()

    # -- closing ------------------------------------------------------------------------------

    async def close(self) -> None:
        """Cancel every job of ours and return when each has reported (it is clean in Flux).

        If this wait is itself cancelled, the cancel requests are already with Flux (a send
        on the handle is complete when it returns); the launches still open are reported as
        cancelled at once, without waiting for Flux to confirm.
        """
        self._closing = True
        if self._bridge is None:
            return
        try:
            for job in list(self._jobs.values()):
                self.cancel(job.launch.key)
            await self._reports.wait_drained()
            journal_open = self._journal is not None and not self._journal_ended.is_set()
            if journal_open and not self._bridge.lost:
                self._stop_journal()
                await self._journal_ended.wait()
        except BaseException:
            jobs = list(self._jobs.values())
            self._jobs.clear()
            self._by_id.clear()
            self._cleaning = 0
            for job in jobs:
                reason = "backend closed (Flux asked to cancel the job)"
                self._reports.now(
                    Outcome(key=job.launch.key, state=TaskState.CANCELLED, reason=reason)
                )
            raise
        finally:
            self._shutdown()

    def _stop_journal(self) -> None:
        """Ask the job manager to end our journal stream; it answers with ENODATA."""
        from flux.core.inner import lib

        matchtag = lib.flux_rpc_get_matchtag(self._journal.handle)
        self._h.rpc(
            "job-manager.events-journal-cancel",
            {"matchtag": matchtag},
            flags=self._flux.constants.FLUX_RPC_NORESPONSE,
        )
        assert self._bridge is not None
        self._bridge.kick()

    def _shutdown(self) -> None:
        if self._bridge is not None:
            self._bridge.close()
        self._journal = None
        self._h = None  # the bindings close the handle when the last reference goes


def _allocation_end(flux: Any, handle: Any) -> float | None:
    """The epoch time the enclosing job or instance must end by, or ``None`` if unlimited."""
    try:
        left = float(flux.job.timeleft(handle))
    except (OSError, AttributeError):  # not inside a job (e.g. a plain `flux start`)
        return None
    return time.time() + left if math.isfinite(left) else None


def _ignore_reply(future: Any) -> None:
    """Cancel replies: an error only means the job had already ended."""
    with contextlib.suppress(OSError):
        future.get()


def _outcome(job: _Job) -> Outcome:
    """Map a clean job to an ``Outcome``: exceptions first, then the wait status."""
    key, timeout = job.launch.key, job.launch.task.timeout
    common: dict[str, Any] = {
        "key": key,
        "start_time": job.t_start,
        "end_time": job.t_end,
        "placement": job.placement,
        "times": job.times,
        "job_id": str(job.jobid) if job.jobid is not None else None,
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
