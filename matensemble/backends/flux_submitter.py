"""From a launch to a submitted Flux job: which instance runs it, what it waits for, its jobspec.

``FluxBackend`` refuses what would be its caller's mistake (a launch before ``open()``, one
already running) and hands every other launch here. After ``close()`` it is cancelled at once,
once the instance is lost (``lost``) it fails at once; otherwise:

- **Instance** (``flux_routing``): the channel of the instance that holds the launch's nodes,
  and whether to constrain the job to its placement's broker ranks.
- **Dependency** (``flux_chains``): with ``queue_ahead="depend"``, the job of ours it depends
  on; a launch that must not be submitted yet waits in its channel (``wait_turn``) until its
  turn comes, and comes back here with the job the chains then chose for it (``after``).
- **Jobspec** (``flux_jobspec``): one builder per channel, with the backend's settings; the
  task directory is made (``flux_task_dirs``) before the submit, since the job shell opens
  the task's outputs in it.

A launch whose jobspec cannot be built, or whose submit cannot be sent, fails: ``submit``
returns its outcome, which the backend reports.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Mapping, Sequence
from typing import Any

from matensemble.backends.base import Launch, Outcome
from matensemble.backends.flux_chains import WAIT, DependencyChains, Turn
from matensemble.backends.flux_channel import FluxChannel
from matensemble.backends.flux_job import FluxJob
from matensemble.backends.flux_jobspec import JobspecBuilder
from matensemble.backends.flux_routing import FluxRouter
from matensemble.backends.flux_task_dirs import TaskDirs
from matensemble.model import TaskState
from matensemble.resources import NodeSpec

__all__ = ["ASK", "Ask", "FluxSubmitter"]


class Ask(enum.Enum):
    """The job a launch depends on is to be chosen when it is submitted (``FluxSubmitter``)."""

    ASK = "ask"


ASK = Ask.ASK


class FluxSubmitter:
    """Builds each launch's job and submits it through the channel of its instance.

    Args:
        router: the channels jobs run through; ``use`` adds them.
        token: names the backend's jobs in the journal.
        options: the jobspec settings every job gets (``JobspecBuilder``'s ``pmi``,
            ``queue``, ``shell_options`` and ``attributes``).
        urgency: pass each task's ``priority`` to Flux as job urgency (see ``FluxBackend``).
        depend: queue ahead by dependencies (``queue_ahead="depend"``: see ``flux_chains``).
    """

    def __init__(
        self,
        router: FluxRouter,
        *,
        token: str,
        options: Mapping[str, Any],
        urgency: bool,
        depend: bool,
    ) -> None:
        self._router = router
        self._token = token
        self._options = options
        self._urgency = urgency
        self._depend = depend
        self._builders: dict[int, JobspecBuilder] = {}  # by id() of the channel
        self._task_dirs = TaskDirs()
        self.closed = False  # the backend closed: every launch is cancelled at once
        self.lost: str | None = None  # why every launch fails at once (the instance is lost)

    def use(self, channel: FluxChannel, nodes: Sequence[NodeSpec], jobspec_class: Any) -> None:
        """Run the jobs of ``nodes`` through ``channel``, built with ``jobspec_class`` (Flux's
        ``JobspecV1``) and the channel's inventory map."""
        self._router.add(channel, nodes)
        if self._depend:
            if channel.chains is None:
                channel.chains = DependencyChains()
            channel.chains.add_nodes(nodes)
        self._builders[id(channel)] = JobspecBuilder(
            jobspec_class,
            channel.map,
            token=self._token,
            environ=os.environ,
            **self._options,
        )

    def submit(
        self, launch: Launch, *, in_turn: bool = False, after: FluxJob | Ask | None = ASK
    ) -> Outcome | None:
        """Submit ``launch``'s job, or keep it in its channel until its turn (``flux_chains``).
        Returns the outcome of a launch that failed at once, if it did.

        Args:
            in_turn: it waits behind no launch parked on its nodes (one taken back to move
                it, ``flux_takeback``).
            after: the job it depends on, for a parked launch whose turn came (the chains
                chose it in ``next_due``); ``ASK``: the chains choose now.
        """
        key = launch.key
        if self.closed:
            return Outcome(key=key, state=TaskState.CANCELLED, reason="backend closed")
        if self.lost is not None:
            return Outcome(key=key, state=TaskState.FAILED, reason=self.lost)
        try:
            channel, constrain = self._router.route(launch)
            task_dir = self._task_dirs.path(launch)
            builder = self._builders[id(channel)]
            chains = channel.chains if constrain else None
            depends: FluxJob | Turn | None = None
            if chains is not None:
                depends = chains.predecessor(launch, in_turn=in_turn) if after is ASK else after
            if depends is WAIT:
                channel.wait_turn(launch)  # booked behind ours, nothing to depend on yet
                return None
            jobspec = builder.build(
                launch,
                constrain=constrain,
                task_dir=task_dir,
                after=None if depends is None else depends.jobid,
            )
            self._task_dirs.prepare(task_dir)  # the shell opens the outputs in it
        except (OSError, ValueError, TypeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            return Outcome(key=key, state=TaskState.FAILED, reason=f"cannot build job: {reason}")
        try:
            channel.submit(launch, jobspec, self.urgency_of(launch), depends)
        except OSError as exc:
            return Outcome(key=key, state=TaskState.FAILED, reason=f"flux submit: {exc}")
        return None

    def urgency_of(self, launch: Launch) -> int:
        """The job urgency of ``launch``: ``16 + priority`` clamped to 0..31 with ``urgency``,
        else Flux's default, 16."""
        if self._urgency:
            return max(0, min(31, 16 + launch.task.priority))
        return 16

    def close(self) -> None:
        """Let go of the open ``tasks/`` directory."""
        self._task_dirs.close()
