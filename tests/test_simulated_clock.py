"""How the simulated backend moves its virtual clock through the event loop."""

from __future__ import annotations

import asyncio
import os
import selectors
from pathlib import Path

import pytest

from matensemble import Ensemble, SimulatedBackend, Task, TaskResult
from matensemble.backends import simulated
from matensemble.backends.simulated import INLINE_ADVANCES
from matensemble.events import TaskFinished, TaskStarted
from matensemble.journal import JOURNAL_NAME, read_journal

from backend_harness import opened


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


def test_a_simulated_batch_writes_its_journal_in_a_few_large_writes_and_keeps_every_event(
    run_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    n = 2000
    writes: list[int] = []
    real_write = os.write

    def counting_write(fd: int, data: bytes) -> int:
        writes.append(len(data))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", counting_write)
    summary = asyncio.run(Ensemble(tasks(n), backend=SimulatedBackend(1, 4), run_dir=run_dir).run())
    monkeypatch.undo()
    assert summary.counts["succeeded"] == n
    events = list(read_journal(run_dir / JOURNAL_NAME))
    assert sum(isinstance(e, TaskStarted) for e in events) == n
    assert sum(isinstance(e, TaskFinished) for e in events) == n
    # Each write to the OS carries many events (one or two per end before).
    assert len(writes) < n / 10, len(writes)


async def test_a_reader_of_completed_finds_each_result_it_hears_of_in_the_journal(
    run_dir: Path,
) -> None:
    async with Ensemble(tasks(200), backend=SimulatedBackend(1, 4), run_dir=run_dir) as ens:
        async for result in ens.completed():
            finished = {
                e.result.id
                for e in read_journal(run_dir / JOURNAL_NAME)
                if isinstance(e, TaskFinished)
            }
            assert result.id in finished


async def test_launches_and_timers_due_at_one_time_come_out_in_the_order_they_were_made(
    tmp_path: Path,
) -> None:
    """Ties on the clock keep launch order (a retry made later comes later), a timer made
    between two launches fires between them, and a cancelled launch never comes out again."""
    backend = SimulatedBackend(1, 8, duration=lambda task, attempt: 5.0)
    seen: list[str] = []
    async with opened(backend, tmp_path) as h:
        h.on_outcome = lambda outcome: seen.append(f"{outcome.key[0]}:{outcome.state.value}")
        a, b = h.start(Task(id="a", command=("x",))), h.start(Task(id="b", command=("x",)))
        backend.call_later(5.0, lambda: seen.append("timer"))
        h.start(Task(id="c", command=("x",)))
        h.start(Task(id="d", command=("x",)))
        backend.cancel(b.key)
        h.start(Task(id="b", command=("x",)), attempt=2)
        backend.call_later(7.0, lambda: seen.append("later"))
        backend.idle()
        await h.outcome(a)
        while len(seen) < 7:
            backend.idle()
            await asyncio.sleep(0)
    assert seen == [
        "b:cancelled",
        "a:succeeded",
        "timer",
        "c:succeeded",
        "d:succeeded",
        "b:succeeded",
        "later",
    ]
    assert backend.now() == 7.0


def test_the_clock_moves_without_asking_asyncio_for_the_loop_at_each_end(
    run_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``asyncio.get_running_loop`` makes a system call (getpid) each time: the backend keeps
    the loop that opened it instead of asking once per end of a million."""
    asked = 0

    class CountingAsyncio:
        def __getattr__(self, name: str) -> object:
            return getattr(asyncio, name)

        @staticmethod
        def get_running_loop() -> asyncio.AbstractEventLoop:
            nonlocal asked
            asked += 1
            return asyncio.get_running_loop()

    monkeypatch.setattr(simulated, "asyncio", CountingAsyncio())
    n = 2000
    summary = asyncio.run(Ensemble(tasks(n), backend=SimulatedBackend(1, 4), run_dir=run_dir).run())
    assert summary.counts["succeeded"] == n
    assert asked <= 2, asked
