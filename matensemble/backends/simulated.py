"""A virtual cluster on a virtual clock: the real engine and strategies, at any scale, instantly.

Tasks do not run; each launch ends after a duration the user chooses (by default the task's
``sim_duration`` tag or its ``estimate``), with an exit code the user chooses (default the
``sim_exit`` tag, else 0). Time advances only
when the engine reports that it has nothing more to start (``idle``), and then jumps to the next
completion, so a day on a whole Frontier takes as long as the engine's own bookkeeping.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Sequence

from anyio.abc import TaskGroup

from matensemble.backends.base import Backend, Launch, LaunchKey, Outcome, Sink
from matensemble.backends.simulated_events import EventQueue
from matensemble.limits import MAX_CORES_PER_NODE, MAX_GPUS_PER_NODE, MAX_MACHINE_IDS, MAX_NODES
from matensemble.model import Task, TaskState
from matensemble.resources import NodeSpec

__all__ = ["SimulatedBackend"]

DurationFn = Callable[[Task, int], float]
# Clock advances made at once in a row before one goes through the event loop again, so that
# its timers, signals and I/O (status.json's timer, SIGTERM) still come in on a long run.
INLINE_ADVANCES = 64
ReturncodeFn = Callable[[Task, int], int]
_Entry = tuple[float, int, LaunchKey | None, float, int, float | None]


def _from_tags(task: Task, attempt: int) -> float:
    """``tags["sim_duration"]`` if given, else the task's estimate, else zero."""
    given = task.tags.get("sim_duration")
    return float(given) if given is not None else task.estimate or 0.0


def _exit_from_tags(task: Task, attempt: int) -> int:
    """``tags["sim_exit"]`` if given, else 0."""
    return int(task.tags.get("sim_exit", 0))


class SimulatedBackend(Backend):
    """A synthetic cluster of identical nodes (e.g. 9,408 x 56 cores x 8 GPUs for Frontier).

    Args:
        nodes, cores_per_node, gpus_per_node: the machine.
        duration: seconds a launch runs, from ``(task, attempt)``; by default the task's
            ``sim_duration`` tag, else its ``estimate``, else zero.
        returncode: exit code of a launch, from ``(task, attempt)``; non-zero fails it. By
            default the task's ``sim_exit`` tag, else 0.
        start: the virtual clock's initial reading.

    Raises:
        LimitExceeded: the machine is larger than ``matensemble.limits`` allows (by default
            1,000,000 nodes, 65,536 cores and 1,024 GPUs per node, 10,000,000 ids in all).
    """

    name = "simulated"
    virtual_clock = True

    def __init__(
        self,
        nodes: int = 1,
        cores_per_node: int = 8,
        gpus_per_node: int = 0,
        *,
        duration: DurationFn = _from_tags,
        returncode: ReturncodeFn = _exit_from_tags,
        start: float = 0.0,
    ) -> None:
        if nodes < 1 or cores_per_node < 1 or gpus_per_node < 0:
            raise ValueError("a simulated machine needs nodes >= 1, cores >= 1 and gpus >= 0")
        # Checked by arithmetic here: open() builds every id, and the pool keeps lists of them.
        MAX_NODES.check(nodes, "nodes")
        MAX_CORES_PER_NODE.check(cores_per_node, "cores_per_node")
        MAX_GPUS_PER_NODE.check(gpus_per_node, "gpus_per_node")
        MAX_MACHINE_IDS.check(
            nodes * (cores_per_node + gpus_per_node),
            f"the simulated machine's number of core and GPU ids ({nodes:,} nodes x "
            f"({cores_per_node:,} cores + {gpus_per_node:,} GPUs))",
        )
        self._shape = (nodes, cores_per_node, gpus_per_node)
        self._duration = duration
        self._returncode = returncode
        self._now = start
        self._sink: Sink | None = None
        # (end, seq, key, start, code, timeout) per launch, (time, seq, None, ...) per timer.
        self._events = EventQueue()
        self._timers: dict[int, Callable[[], None]] = {}  # event sequence number -> callback
        # Each running launch's own event entry (one tuple per launch, not a second one).
        self._live: dict[LaunchKey, _Entry] = {}
        self._seq = itertools.count()
        self._advance_scheduled = False
        # The loop that opened it: asking asyncio for the running loop costs a system call
        # (getpid, to tell a forked child) on every end of a run's million.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._inline = 0  # clock advances made inside idle() since the loop last ran one
        self.most_running = 0  # the most launches that ran at once

    def now(self) -> float:
        return self._now

    async def open(self, sink: Sink, task_group: TaskGroup) -> Sequence[NodeSpec]:
        self._sink = sink
        self._loop = asyncio.get_running_loop()
        nodes, cores, gpus = self._shape
        width = len(str(nodes - 1))
        return [
            NodeSpec(f"sim{i:0{width}d}", tuple(range(cores)), tuple(str(g) for g in range(gpus)))
            for i in range(nodes)
        ]

    def launch(self, launch: Launch) -> None:
        task, attempt = launch.task, launch.attempt
        start = self._now
        try:
            runtime = float(self._duration(task, attempt))
            code = self._returncode(task, attempt)
        except Exception as exc:  # a user's model failing is one task failing
            self._deliver(
                Outcome(key=launch.key, state=TaskState.FAILED, reason=f"simulation: {exc!r}")
            )
            return
        timeout = task.timeout if task.timeout is not None and runtime > task.timeout else None
        end = start + (timeout if timeout is not None else max(0.0, runtime))
        key = launch.key
        # Only what the outcome is made of, while it runs: a million in flight add up.
        entry = (end, next(self._seq), key, start, code, timeout)
        live = self._live
        live[key] = entry
        if len(live) > self.most_running:
            self.most_running = len(live)
        self._events.push(entry)

    @staticmethod
    def _outcome(
        key: LaunchKey, end: float, start: float, code: int, timeout: float | None
    ) -> Outcome:
        """The outcome of a launch that ran from ``start`` to ``end``."""
        if timeout is not None:
            return Outcome(
                key=key,
                state=TaskState.TIMED_OUT,
                reason=f"timed out after {timeout:g}s",
                start_time=start,
                end_time=end,
            )
        return Outcome(
            key=key,
            state=TaskState.SUCCEEDED if code == 0 else TaskState.FAILED,
            returncode=code,
            reason=None if code == 0 else f"exit code {code}",
            start_time=start,
            end_time=end,
        )

    def cancel(self, key: LaunchKey) -> None:
        entry = self._live.pop(key, None)
        if entry is not None:
            self._deliver(
                Outcome(
                    key=key,
                    state=TaskState.CANCELLED,
                    reason="cancelled",
                    start_time=entry[3],
                    end_time=self._now,
                )
            )

    def call_later(self, delay: float, callback: Callable[[], None]) -> None:
        """Call ``callback`` when the virtual clock reaches ``now() + delay``."""
        seq = next(self._seq)
        self._timers[seq] = callback
        self._events.push((self._now + max(0.0, delay), seq, None, 0.0, 0, None))

    def idle(self) -> None:
        """Advance the clock on the event loop's next turn, or at once where that turn would
        run nothing else (see ``_nothing_else_ready``): two loop turns per end saved."""
        if self._advance_scheduled or not (self._live or self._timers):
            return
        loop = self._loop
        if loop is None:  # not opened (a test driving it by hand)
            loop = asyncio.get_running_loop()
        if self._inline < INLINE_ADVANCES and _nothing_else_ready(loop):
            self._inline += 1
            self._advance()
            return
        self._inline = 0
        self._advance_scheduled = True
        loop.call_soon(self._advance)

    def _advance(self) -> None:
        """Jump to the next completion or timer; report every launch that ends then, and call
        every timer that is due."""
        self._advance_scheduled = False
        events, live, timers = self._events, self._live, self._timers
        top = events.first()
        while top is not None:
            if top[1] in timers or (top[2] is not None and live.get(top[2]) is top):
                break
            events.pop()  # cancelled
            top = events.first()
        if top is None:
            return
        now = self._now = max(self._now, top[0])
        while top is not None and top[0] <= now:
            events.pop()
            end, seq, key, start, code, timeout = top
            if key is None:
                timers.pop(seq)()
            elif live.get(key) is top:  # else cancelled (a later attempt has its own entry)
                del live[key]
                self._deliver(self._outcome(key, end, start, code, timeout))
            top = events.first()

    def _deliver(self, outcome: Outcome) -> None:
        assert self._sink is not None, "launch() before open()"
        self._sink(outcome)

    async def close(self) -> None:
        for key in list(self._live):
            self.cancel(key)
        self._events.clear()
        self._timers.clear()
        self._loop = None


def _nothing_else_ready(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether no callback waits to run on ``loop`` (asyncio's own loops keep them in
    ``_ready``; on another loop, e.g. uvloop, the answer is no).

    Then advancing the clock at once is what the loop would do next anyway, in the same order:
    no coroutine of the user's (a reader of ``completed()``, a policy's task) waits to see the
    results so far, so none can miss the instant they came at.
    """
    ready = getattr(loop, "_ready", None)
    return ready is not None and not ready
