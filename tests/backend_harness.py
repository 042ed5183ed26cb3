"""Drive one backend directly (no engine): a recording sink, launches on pool allocations."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import anyio

from matensemble.backends.base import Backend, Launch, LaunchKey, Outcome
from matensemble.model import Placement, Task
from matensemble.resources import NodeSpec, ResourcePool

RUN_ID = "test-run"


async def read_fifo(fifo: Path, within: float) -> str:
    """What a task writes into the FIFO ``fifo``, read in a worker thread (no polling).

    A reader abandoned by a timeout stays blocked in ``open`` until a writer comes; a thread
    left so would keep the test process from ever exiting after the failure. So on the way
    out, a writer that opens and closes at once releases it.
    """
    try:
        with anyio.fail_after(within):
            return await anyio.to_thread.run_sync(fifo.read_text, abandon_on_cancel=True)
    except BaseException:
        with contextlib.suppress(OSError):  # ENXIO: no reader is waiting
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        raise


class Harness:
    """A backend opened with a sink that records outcomes and frees their allocations."""

    def __init__(self, backend: Backend, tmp_path: Path) -> None:
        self.backend = backend
        self.tmp_path = tmp_path
        self.nodes: list[NodeSpec] = []
        self.pool: ResourcePool | None = None
        self.outcomes: dict[LaunchKey, Outcome] = {}
        self.placements: dict[LaunchKey, Placement] = {}
        self.in_launch = False
        self.on_outcome: Callable[[Outcome], None] | None = None
        self._arrived = asyncio.Event()

    async def open(self, task_group: object) -> None:
        self.nodes = list(await self.backend.open(self.sink, task_group))  # type: ignore[arg-type]
        self.pool = ResourcePool(self.nodes)

    def sink(self, outcome: Outcome) -> None:
        assert not self.in_launch, "outcomes must not be reported from inside launch()"
        assert outcome.key not in self.outcomes, f"second outcome for {outcome.key}"
        self.outcomes[outcome.key] = outcome
        assert self.pool is not None
        self.pool.release(self.placements.pop(outcome.key))
        self._arrived.set()
        if self.on_outcome is not None:
            self.on_outcome(outcome)

    def task_dir(self, task_id: str) -> Path:
        return self.tmp_path / "tasks" / task_id

    def start(self, task: Task, attempt: int = 1, on: Placement | None = None) -> Launch:
        """Launch ``task`` on what the pool allocates for it, or on exactly ``on`` (queued
        ahead on cores that may be busy: the pool is not asked, and is given nothing back)."""
        assert self.pool is not None
        placement = on if on is not None else self.pool.allocate(task.resources)
        assert placement is not None, f"{task.id} does not fit now"
        launch = Launch(
            task=task,
            attempt=attempt,
            placement=placement,
            tasks_dir=self.task_dir(task.id).parent,
            run_id=RUN_ID,
        )
        self.placements[launch.key] = placement if on is None else ()
        self.in_launch = True
        try:
            self.backend.launch(launch)
        finally:
            self.in_launch = False
        return launch

    async def outcome(self, which: Launch | LaunchKey, within: float = 30) -> Outcome:
        key = which.key if isinstance(which, Launch) else which
        with anyio.fail_after(within):
            while key not in self.outcomes:
                self._arrived.clear()
                await self._arrived.wait()
        return self.outcomes[key]

    async def run(self, task: Task, attempt: int = 1, within: float = 30) -> Outcome:
        return await self.outcome(self.start(task, attempt), within)

    def stdout(self, task_id: str) -> str:
        return (self.task_dir(task_id) / "stdout").read_text()


@contextlib.asynccontextmanager
async def opened(backend: Backend, tmp_path: Path, within: float = 30) -> AsyncIterator[Harness]:
    """The backend, opened; closed on the way out (closing may take ``within`` seconds)."""
    harness = Harness(backend, tmp_path)
    async with anyio.create_task_group() as tg:
        with anyio.fail_after(within):
            await harness.open(tg)
        try:
            yield harness
        finally:
            with anyio.fail_after(within):
                await backend.close()
