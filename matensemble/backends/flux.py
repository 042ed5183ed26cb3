"""The Flux backend: every launch is a Flux job, placed on the broker ranks the engine chose.

Run the driver inside a Flux instance it owns (``flux start``, ``flux alloc``, ``flux batch``).

- **Inventory**, read once at ``open()`` from ``sched.resource-status``: one node per broker
  rank that is up, with its core and GPU ids. From then on the engine accounts locally and
  launches only what fits, so Flux never holds a queue the engine does not know about.
- **Placement**: each job carries an RFC 31 constraint ``{"ranks": [...]}`` naming the ranks
  of the engine's placement, so Flux runs it where the engine accounted it. Flux picks the
  core ids itself (a constraint cannot name cores); the ranks, cores and GPUs it actually
  assigned come back in the job's ``alloc`` event and are reported in the ``Outcome``.
- **Watching**: one streaming ``job-manager.events-journal`` RPC per instance (see
  ``flux_channel``); no RPC per job beyond the submit itself. It needs the instance owner,
  which the driver is in an instance it started or was allocated.
- **Waiting** costs nothing: ``FluxReactorBridge`` runs each handle's reactor when its file
  descriptor turns readable; there is no thread, no timer and no poll interval.
- **Partitions** (``partitions=k``): k child instances inside the allocation, each with its own
  scheduler (see ``flux_partitions``); a launch goes to the partition that holds its nodes.

How a launch becomes a job is in ``flux_submitter`` (what its jobspec holds: ``flux_jobspec``);
how R maps to nodes in ``flux_inventory``; how the backend closes in ``flux_closing``.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Mapping, Sequence
from typing import Any

from anyio.abc import TaskGroup

from matensemble.backends.base import Backend, Launch, LaunchKey, Reporter, Sink
from matensemble.backends.flux_channel import FluxChannel
from matensemble.backends.flux_closing import close_instances, end_partitions
from matensemble.backends.flux_connect import allocation_end, connect
from matensemble.backends.flux_inventory import read_inventory
from matensemble.backends.flux_job import FluxJob
from matensemble.backends.flux_jobspec import check_attributes
from matensemble.backends.flux_partitions import Partition, prepare_partitions
from matensemble.backends.flux_recovery import adopt_launches, cancel_leftovers, sweep_leftovers
from matensemble.backends.flux_routing import FluxRouter
from matensemble.backends.flux_submitter import ASK, Ask, FluxSubmitter
from matensemble.errors import BackendError
from matensemble.model import Resources
from matensemble.queue_ahead import queue_ahead_setting
from matensemble.resources import NodeSpec

__all__ = ["FluxBackend"]


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
            the instance is touched. Not with partitions.
        urgency: pass each task's ``priority`` to Flux as job urgency ``16 + priority``,
            clamped to 0..31. Since the engine launches only what fits, this matters only
            while Flux is still freeing a finished job's resources.
        queue: the Flux queue to submit to, for instances with several.
        shell_options: extra job-shell options for every job (``flux-shell-options(7)``),
            e.g. ``{"cpu-affinity": "off"}``; they override the defaults (per-task CPU and GPU
            affinity, output appended to the task's files).
        partitions: run the jobs in this many child Flux instances started inside the
            allocation, each with its own scheduler (1: in the enclosing instance itself).
        queue_ahead: keep each slot's next task queued in Flux behind the running one,
            constrained to the ranks the engine booked for it (see
            ``matensemble.queue_ahead``), so that Flux starts it the moment the slot frees;
            ``"depend"``: the same, each queued job also depending (``afterany``) on the
            running job it waits for, and one with no job to depend on kept in the driver
            until it has one or room (see ``flux_chains``): every queued task can be taken
            back; ``"auto"`` (the default): ``"depend"`` while the tasks finishing run shorter
            than ``AUTO_BELOW`` seconds on average and Flux starts them on time (see
            ``matensemble.queue_ahead``), where the driver's round trip between two jobs of a
            slot costs most, and no queueing ahead before a task has finished or otherwise
            (see ``docs/flux.md``); ``False``: never.
        attributes: extra jobspec attributes for every job, by dotted key, as ``flux submit
            --setattr`` takes them (a key not under ``user.`` is under ``system.``), e.g.
            ``{"system.bank": "chem"}`` or, to run against a fake allocation without starting
            any process, ``{"exec.test.run_duration": "0.1s"}``; not those the backend sets
            itself (environment, working directory, name, shell options, constraint,
            dependencies, duration, queue).
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
        partitions: int = 1,
        queue_ahead: bool | str = "auto",
        attributes: Mapping[str, Any] | None = None,
    ) -> None:
        if type(reserve_driver_cores) is not int or reserve_driver_cores < 0:
            raise ValueError(f"reserve_driver_cores must be an int >= 0: {reserve_driver_cores!r}")
        if type(partitions) is not int or partitions < 1:
            raise ValueError(f"partitions must be an int >= 1: {partitions!r}")
        if partitions > 1 and reserve_driver_cores:
            raise ValueError("reserve_driver_cores cannot be combined with partitions > 1")
        self.queue_ahead, self.queue_ahead_below = queue_ahead_setting(queue_ahead, "depend")
        self._depend = queue_ahead in ("depend", "auto")
        self.can_withdraw = self._depend  # a job waiting for its dependency: see flux_takeback
        self._uri = uri
        self._reserve = reserve_driver_cores
        self._k = partitions
        self._loop: asyncio.AbstractEventLoop | None = None
        self._flux: Any = None  # the imported ``flux`` package
        self._parent: FluxChannel | None = None  # the enclosing instance
        self._partitions: list[Partition] = []
        self._router = FluxRouter()  # where jobs run: the parent, or the partitions
        self._token = secrets.token_hex(8)  # names this backend's jobs in the journal
        options = {
            "pmi": pmi,
            "queue": queue,
            "shell_options": dict(shell_options or {}),
            "attributes": check_attributes(attributes or {}),
        }
        self._submitter = FluxSubmitter(
            self._router, token=self._token, options=options, urgency=urgency, depend=self._depend
        )
        self._deadline: float | None = None
        self._reporter: Reporter | None = None
        self._sweep: list[FluxChannel] = []  # reused partitions whose leftovers go at launch

    # -- opening ------------------------------------------------------------------------------

    async def open(self, sink: Sink, task_group: TaskGroup) -> Sequence[NodeSpec]:
        """Connect, start the journal, read the inventory; start the partitions, if any.

        Raises:
            BackendUnavailable: the bindings are missing, or there is no instance to reach.
            BackendError: the journal or the inventory cannot be read, or a partition fails
                to start.
        """
        if self._loop is not None:
            raise BackendError("FluxBackend.open() was called twice")
        flux, handle = connect(self._uri)
        self._flux = flux
        self._loop = loop = asyncio.get_running_loop()
        self._reporter = Reporter(sink, loop, self._in_flight)
        self._parent = parent = self._channel(handle, "", memo=self._k > 1)
        try:
            status = await parent.open()
            try:
                nodes, parent.map = read_inventory(
                    status, driver_rank=handle.get_rank(), reserve=self._reserve
                )
            except (OSError, ValueError) as exc:
                raise BackendError(f"cannot read the Flux inventory: {exc}") from None
            self._deadline = allocation_end(flux, handle)
            if self._k == 1:
                self._submitter.use(parent, nodes, flux.job.JobspecV1)
                return nodes
            return await self._start_partitions(nodes)
        except BaseException:
            await end_partitions(
                self._parent, self._partitions, "the driver could not open the Flux backend"
            )
            self._shutdown()
            raise

    def _channel(self, handle: Any, prefix: str, memo: bool = False) -> FluxChannel:
        assert self._loop is not None
        return FluxChannel(
            self._flux,
            handle,
            self._loop,
            token=self._token,
            report=self._reports.now,
            settled=self._reports.check,
            job_ids=self._job_id,
            on_lost=self._on_lost,
            relaunch=self._in_turn,
            submit_due=self._submit_due,
            prefix=prefix,
            memo=memo,
        )

    async def _start_partitions(self, nodes: Sequence[NodeSpec]) -> Sequence[NodeSpec]:
        parent = self._parent
        assert parent is not None
        try:
            self._partitions = prepare_partitions(parent, nodes, self._k)
        except ValueError as exc:
            raise BackendError(str(exc)) from None
        for partition in self._partitions:
            partition.on_end = self._on_partition_end
        await asyncio.gather(*(p.open(self._token, self._channel) for p in self._partitions))
        every: list[NodeSpec] = []
        for partition in self._partitions:
            assert partition.channel is not None
            self._submitter.use(partition.channel, partition.nodes, self._flux.job.JobspecV1)
            every.extend(partition.nodes)
            if partition.reused:
                self._sweep.append(partition.channel)
        return every

    def deadline(self) -> float | None:
        """When the enclosing allocation ends (``flux job timeleft``), if it has a limit."""
        return self._deadline

    # -- resume -------------------------------------------------------------------------------

    async def adopt(self, launches: Sequence[tuple[Launch, str]]) -> set[LaunchKey]:
        """Take over jobs a crashed driver of this run submitted, by their journaled job ids.

        A job still pending or running is followed like one of ours from now on (its events
        arrive on our journal stream); one that has ended meanwhile reports its outcome from
        the job list. A job in a partition is found if that partition still lives (``open()``
        took it over). Blocking RPCs, once, before anything is launched.
        """
        taken, ended = adopt_launches(self._router, launches, self._submitter.urgency_of)
        for outcome in ended:
            self._reports.soon(outcome)
        return taken

    async def recover(self, run_id: str, keys: Sequence[LaunchKey]) -> None:
        """Cancel the jobs an earlier, crashed driver of ``run_id`` left running, and wait.

        They are found by name (the task id) among the instance's active jobs and confirmed
        by the ``run_id`` in their jobspec; the engine then runs those tasks again. In a
        partition taken over from a crashed driver, every job of ours not adopted goes.
        Blocking RPCs, once, before anything is launched.
        """
        cancel_leftovers(self._router.channels, self._sweep, run_id, keys)
        self._sweep.clear()

    # -- launching ----------------------------------------------------------------------------

    def launch(self, launch: Launch) -> None:
        """Submit one job; its outcome arrives through the sink when the job has finished."""
        self._launch(launch, in_turn=False)

    def _in_turn(self, launch: Launch) -> None:
        """Submit a moved launch again (``flux_takeback``)."""
        self._launch(launch, in_turn=True)

    def _submit_due(self, launch: Launch, after: FluxJob | None) -> None:
        """Submit a parked launch whose turn came, depending on ``after`` (``flux_chains``)."""
        self._launch(launch, in_turn=True, after=after)

    def _launch(self, launch: Launch, *, in_turn: bool, after: FluxJob | Ask | None = ASK) -> None:
        if self._parent is None:
            raise BackendError("FluxBackend.launch() before open()")
        key = launch.key
        if any(channel.has(key) for channel in self._router.channels):
            raise ValueError(f"launch {key} is already running")
        if self._sweep:
            sweep_leftovers(self._sweep)
            self._sweep.clear()
        failed = self._submitter.submit(launch, in_turn=in_turn, after=after)
        if failed is not None:
            self._reports.soon(failed)

    def why_never_fits(self, resources: Resources) -> str | None:
        """With partitions: why a task fits none of them (a job runs in one instance)."""
        return self._router.why_never_fits(resources)

    # -- cancelling ---------------------------------------------------------------------------

    def cancel(self, key: LaunchKey) -> None:
        """Cancel the launch's job; if its id is not known yet, as soon as it is."""
        for channel in self._router.channels:
            channel.cancel(key)

    def withdraw(self, key: LaunchKey) -> None:
        """Take back a queued job that waits for its dependency (``flux_takeback``)."""
        for channel in self._router.channels:
            channel.withdraw(key)

    def kill(self) -> None:
        """Send a cancel for every job in flight (and every partition), without waiting.

        The requests leave on the broker sockets at once, so the jobs go even though nobody
        stays to hear the answers.
        """
        for channel in self._router.channels:
            channel.kill("driver forced to exit")
        for partition in self._partitions:
            partition.cancel("driver forced to exit")

    # -- what Flux tells us -------------------------------------------------------------------

    def _job_id(self, key: LaunchKey, job_id: str) -> None:
        if self.job_ids is not None:
            self.job_ids(key, job_id)

    def _on_lost(self, reason: str) -> None:
        """A channel failed: its launches were reported failed; without partitions, or if the
        enclosing instance is gone, every later launch fails too. A partition we lost touch
        with is ended (its job cancelled), so that its nodes are freed in the enclosing
        instance; later launches on them go to the live partitions."""
        for partition in self._partitions:
            channel = partition.channel
            if channel is not None and channel.broken is not None and partition.ended is None:
                partition.cancel(channel.broken)
        parent = self._parent
        if self._k == 1 or (parent is not None and parent.broken is not None):
            if self._submitter.lost is None:
                self._submitter.lost = reason
            for channel in self._router.channels:
                if channel.broken is None:
                    channel.fail(reason)
        if self._reporter is not None:
            self._reporter.check()

    def _on_partition_end(self, partition: Partition, why: str) -> None:
        """A child instance ended: fail what ran there (later launches go elsewhere)."""
        if partition.channel is not None and partition.channel.broken is None:
            partition.channel.fail(why)

    def _in_flight(self) -> int:
        return sum(channel.in_flight() for channel in self._router.channels)

    @property
    def _reports(self) -> Reporter:
        assert self._reporter is not None, "FluxBackend used before open()"
        return self._reporter

    # -- closing ------------------------------------------------------------------------------

    async def close(self) -> None:
        """Cancel every job of ours, return when each is clean; end every partition.

        If this wait is itself cancelled, the cancel requests are already with Flux (a send
        on the handle is complete when it returns); the launches still open are reported as
        cancelled at once, without waiting for Flux to confirm.
        """
        self._submitter.closed = True
        if self._parent is None:
            return
        try:
            await close_instances(
                self._parent, self._router.channels, self._partitions, self._reports.wait_drained
            )
        finally:
            self._shutdown()

    def _shutdown(self) -> None:
        self._submitter.close()
        for channel in self._router.channels:
            channel.shutdown()
        if self._parent is not None:
            self._parent.shutdown()
        self._router.channels.clear()
