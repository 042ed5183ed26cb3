"""How the simulated backend moves its virtual clock through the event loop."""

from __future__ import annotations

import asyncio
import selectors
from pathlib import Path

from matensemble import Ensemble, SimulatedBackend, Task, TaskResult
from matensemble.backends.simulated import INLINE_ADVANCES


class CountingSelector(selectors.DefaultSelector):
    """A selector that counts the event loop's turns (one ``select`` per turn)."""

    turns = 0

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        self.turns += 1
        return super().select(timeout)


def tasks(n: int) -> list[Task]:
    """``n`` one-core tasks, each ending at its own instant."""
    return [Task(id=f"t{i}", command=("sim",), estimate=1.0 + i / n) for i in range(n)]


def test_a_batch_moves_the_clock_without_an_event_loop_turn_per_end(run_dir: Path) -> None:
    n = 2000
    selector = CountingSelector()
    loop = asyncio.SelectorEventLoop(selector)
    try:
        backend = SimulatedBackend(nodes=1, cores_per_node=4)
        summary = loop.run_until_complete(
            Ensemble(tasks(n), backend=backend, run_dir=run_dir).run()
        )
    finally:
        loop.close()
    assert summary.counts["succeeded"] == n
    # One turn through the loop per INLINE_ADVANCES ends, and a few to start and stop; the
    # clock moved through the loop each time would take two turns per end.
    assert selector.turns < 2 * n / INLINE_ADVANCES + 50, selector.turns
    # ...but the loop still turns on a long run (its timers, signals and I/O come in).
    assert selector.turns >= n / INLINE_ADVANCES


async def test_a_reader_of_completed_sees_each_result_before_the_clock_moves_on(
    run_dir: Path,
) -> None:
    n = 300
    backend = SimulatedBackend(nodes=1, cores_per_node=4)
    seen: list[tuple[TaskResult, float]] = []
    async with Ensemble(tasks(n), backend=backend, run_dir=run_dir) as ens:
        async for result in ens.completed():
            seen.append((result, backend.now()))
    assert len(seen) == n
    for result, clock in seen:
        assert clock == result.end_time, result.id
    ends = [result.end_time for result, _ in seen]
    assert ends == sorted(ends)
