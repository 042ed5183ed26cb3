"""Launches queued ahead two or more deep on one core (``Backend.queue_ahead_depth``): the
local backend with helper processes starts the launches of a core one after another, in the
order they arrived, each the moment the one before it is over. Real helpers, real processes,
real files.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import sys
import time
from collections import deque
from pathlib import Path

import anyio
import pytest

from matensemble import LocalBackend, Task, TaskState
from matensemble.backends.base import Backend, Launch
from matensemble.backends.local_ahead import CoreHolders
from matensemble.backends.local_helpers import QUEUE_AHEAD_DEPTH
from matensemble.model import Slot

from backend_harness import Harness, opened
from conftest import HOLD, alive, pid_of

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")


@pytest.fixture(
    params=[
        {"cores": 1},
        pytest.param(
            {"cores": 2, "cores_per_helper": 2},
            marks=pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="two cores"),
            id="one helper for two cores",
        ),
    ],
    ids=lambda given: "one helper per core" if given == {"cores": 1} else None,
)
def backend(request: pytest.FixtureRequest) -> LocalBackend:
    """A backend whose helper processes take two launches queued ahead per core."""
    return LocalBackend(queue_ahead=True, kill_grace=0.5, **request.param)


def on_the_last_core(h: Harness, task: Task) -> Launch:
    """Launch ``task`` on the backend's last core, whoever holds it (queued ahead)."""
    (node,) = h.nodes
    return h.start(task, on=(Slot(node.name, node.cores[-1:], ()),))


def logged(log: Path, name: str, seconds: float) -> Task:
    """A task that writes its start and its end into ``log``."""
    script = f"echo start {name} >> {log}; sleep {seconds}; echo end {name} >> {log}"
    return Task(id=name, command=("sh", "-c", script))


def lines(log: Path) -> list[str]:
    return log.read_text().splitlines()


def test_helpers_take_three_launches_ahead_per_core_and_worker_threads_one() -> None:
    assert Backend.queue_ahead_depth == 1
    assert LocalBackend().queue_ahead_depth == QUEUE_AHEAD_DEPTH == 3
    assert LocalBackend(spawners="processes").queue_ahead_depth == 3
    assert LocalBackend(spawners="threads").queue_ahead_depth == 1


def test_launches_take_a_core_in_the_order_they_arrived_on_it() -> None:
    holders = CoreHolders()
    holders.hold("a", [0])
    holders.wait("wide", [0, 1])  # core 1 is free, but wide waits for core 0
    assert holders.blockers([1]) == ["wide"]  # what comes to core 1 now comes after wide
    holders.wait("c", [1])
    holders.wait("d", [0])
    assert holders.blockers([0, 1]) == ["d", "c"]  # per core, the one that came last
    assert holders.forget("a", [0]) == ["wide"]  # wide takes both, c and d wait on
    assert holders.forget("wide", [0, 1]) == ["d", "c"]


def test_a_launch_that_ends_while_it_waits_lets_the_next_ones_on_its_cores_go() -> None:
    holders = CoreHolders()
    holders.hold("a", [0])
    holders.wait("wide", [0, 1])
    holders.wait("c", [1])
    holders.wait("d", [0])
    assert holders.forget("wide", [0, 1]) == ["c"]  # its core 1 is free; core 0 is a's
    assert holders.blockers([0]) == ["d"]
    assert holders.forget("a", [0]) == ["d"]


def test_a_third_launch_on_a_core_comes_after_the_second() -> None:
    holders = CoreHolders()
    holders.hold("a", [0])
    holders.wait("b", [0])
    assert holders.blockers([0]) == ["b"]
    holders.wait("c", [0])
    assert holders.blockers([0]) == ["c"]
    assert holders.forget("a", [0]) == ["b"]
    assert holders.forget("b", [0]) == ["c"]
    assert holders.forget("c", [0]) == []
    assert holders.blockers([0]) == []


def held(log: Path, go: Path) -> Task:
    """A task that writes its start into ``log``, runs until ``go`` exists, writes its end."""
    wait = f"while [ ! -e {go} ]; do sleep 0.01; done"
    script = f"echo start a >> {log}; {wait}; echo end a >> {log}"
    return Task(id="a", command=("sh", "-c", script))


async def until_logged(log: Path, line: str) -> None:
    """Wait, with the event loop running, until ``line`` is in ``log``."""
    deadline = time.monotonic() + 20
    while not (log.exists() and line in lines(log)):
        assert time.monotonic() < deadline, f"{line!r} not logged"
        await anyio.sleep(0.01)


def logged_while_the_loop_is_held(log: Path, line: str) -> bool:
    """Hold the event loop (a blocking wait: the driver sees no exit meanwhile) until ``line``
    is in ``log``: only a helper that starts the launches queued on a core one after another
    on its own gets it there."""
    deadline = time.monotonic() + 10
    while not (log.exists() and line in lines(log)):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


async def test_three_launches_on_one_core_run_one_after_another_in_arrival_order(
    tmp_path: Path, backend: LocalBackend
) -> None:
    """The helper starts the second when the first exits and the third when the second does,
    without waiting for the driver."""
    log, go = tmp_path / "log", tmp_path / "go"
    async with opened(backend, tmp_path) as h:
        launches = [
            on_the_last_core(h, task)
            for task in (held(log, go), logged(log, "b", 0.2), logged(log, "c", 0.1))
        ]
        await until_logged(log, "start a")
        go.touch()
        assert logged_while_the_loop_is_held(log, "end c"), lines(log)
        outcomes = [await h.outcome(launch) for launch in launches]
    assert all(outcome.state is TaskState.SUCCEEDED for outcome in outcomes), outcomes
    assert lines(log) == ["start a", "end a", "start b", "end b", "start c", "end c"]
    for before, after in itertools.pairwise(outcomes):
        assert before.end_time is not None and after.start_time is not None
        assert before.end_time <= after.start_time


@pytest.mark.parametrize("how", ["withdrawn", "cancelled"])
@pytest.mark.parametrize("third", ["queued before", "launched after"])
async def test_the_second_launch_ended_while_it_waits_lets_the_third_run_after_the_first(
    tmp_path: Path, backend: LocalBackend, how: str, third: str
) -> None:
    """The second launch on a core ends before it started (taken back or cancelled while the
    first runs): the third runs once the first is over, never beside it. Queued before, it
    waits in the helper, in the second's place; launched after, in the driver."""
    log, go = tmp_path / "log", tmp_path / "go"
    async with opened(backend, tmp_path) as h:
        a = on_the_last_core(h, held(log, go))
        b = on_the_last_core(h, logged(log, "b", 0.1))
        c = on_the_last_core(h, logged(log, "c", 0.1)) if third == "queued before" else None
        if how == "withdrawn":
            backend.withdraw(b.key)
        else:
            backend.cancel(b.key)
        c = c or on_the_last_core(h, logged(log, "c", 0.1))
        dropped = await h.outcome(b)
        await until_logged(log, "start a")
        go.touch()
        if third == "queued before":
            assert logged_while_the_loop_is_held(log, "end c"), lines(log)
        first, last = await h.outcome(a), await h.outcome(c)
    assert dropped.state is TaskState.CANCELLED and dropped.start_time is None
    assert dropped.withdrawn is (how == "withdrawn")
    assert first.state is last.state is TaskState.SUCCEEDED
    assert lines(log) == ["start a", "end a", "start c", "end c"]
    assert first.end_time is not None and last.start_time is not None
    assert first.end_time <= last.start_time


async def test_a_second_launch_that_cannot_start_lets_the_third_run_after_the_first(
    tmp_path: Path, backend: LocalBackend
) -> None:
    log, go = tmp_path / "log", tmp_path / "go"
    missing = Task(id="b", command=(str(tmp_path / "no-such-program"),))
    async with opened(backend, tmp_path) as h:
        a = on_the_last_core(h, held(log, go))
        b = on_the_last_core(h, missing)
        c = on_the_last_core(h, logged(log, "c", 0.1))
        await until_logged(log, "start a")
        go.touch()
        assert logged_while_the_loop_is_held(log, "end c"), lines(log)
        first, failed, last = await h.outcome(a), await h.outcome(b), await h.outcome(c)
    assert failed.state is TaskState.FAILED and failed.start_time is None
    assert "no-such-program" in (failed.reason or ""), failed
    assert first.state is last.state is TaskState.SUCCEEDED
    assert lines(log) == ["start a", "end a", "start c", "end c"]


@pytest.mark.parametrize("how", ["killed", "closed"])
async def test_a_killed_or_closed_backend_starts_neither_launch_queued_on_a_core(
    tmp_path: Path, backend: LocalBackend, how: str
) -> None:
    """``kill()`` (the helper's KillAll: the running task dies, what waits behind it in a row
    is reported never started) or ``close()`` (each is stopped: the two waiting are dropped)."""
    ran = tmp_path / "ran"
    async with opened(backend, tmp_path) as h:
        a = on_the_last_core(h, Task(id="a", command=("sh", "-c", HOLD)))
        queued = [
            on_the_last_core(h, Task(id=name, command=("sh", "-c", f"echo {name} >> {ran}")))
            for name in ("b", "c")
        ]
        pid = await pid_of(tmp_path, "a")
        if how == "killed":
            backend.kill()
            for launch in queued:  # reported by the helper, before close() stops anything
                await h.outcome(launch)
    outcomes = [h.outcomes[launch.key] for launch in queued]
    assert all(outcome.start_time is None for outcome in outcomes), outcomes
    assert all(outcome.state is TaskState.CANCELLED for outcome in outcomes), outcomes
    assert not ran.exists(), ran.read_text()
    assert h.outcomes[a.key].state is not TaskState.SUCCEEDED
    assert not alive(pid, grace=5)


async def test_rows_of_three_on_each_core_some_taken_back_some_failing_run_in_arrival_order(
    tmp_path: Path, backend: LocalBackend
) -> None:
    """Each core kept at one launch running and two queued ahead, as the engine books them,
    while a few launches cannot start and a few queued ones are taken back: on each core the
    launches that ran did so one at a time, in the order they arrived."""
    rng = random.Random(7)
    total = 50
    arrived: dict[int, list[str]] = {}
    launches: dict[str, Launch] = {}
    outcome_in = asyncio.Event()
    async with opened(backend, tmp_path) as h:
        h.on_outcome = lambda outcome: outcome_in.set()
        (node,) = h.nodes
        rows: dict[int, deque[Launch]] = {core: deque() for core in node.cores}
        while len(launches) < total * len(node.cores) or any(rows.values()):
            outcome_in.clear()
            for core, row in rows.items():
                while row and row[0].key in h.outcomes:
                    row.popleft()
                for launch in [launch for launch in row if launch.key in h.outcomes]:
                    row.remove(launch)  # taken back, or could not start, before the first
                while len(row) < 3 and len(arrived.get(core, ())) < total:
                    name = f"c{core}t{len(arrived.get(core, ()))}"
                    draw = rng.random()
                    if draw < 0.1:
                        task = Task(id=name, command=(str(tmp_path / "no-such-program"),))
                    else:
                        task = logged(tmp_path / f"log{core}", name, rng.choice((0, 0.01, 0.03)))
                    launch = h.start(task, on=(Slot(node.name, (core,), ()),))
                    if row and draw > 0.85:
                        backend.withdraw(launch.key)
                    row.append(launch)
                    launches[name] = launch
                    arrived.setdefault(core, []).append(name)
            if any(rows.values()):
                with anyio.fail_after(20):
                    await outcome_in.wait()
    for core, names in arrived.items():
        log = lines(tmp_path / f"log{core}")
        started = [line.split()[1] for line in log[::2]]
        assert log == [f"{way} {name}" for name in started for way in ("start", "end")]
        assert started == [name for name in names if name in set(started)]
        for name in names:
            outcome = h.outcomes[launches[name].key]
            assert (outcome.start_time is not None) is (name in started), outcome
            assert outcome.withdrawn or outcome.state is not TaskState.CANCELLED, outcome


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="two cores")
@pytest.mark.parametrize("spawners", ["processes", "threads"])
async def test_a_killed_backend_never_starts_a_launch_waiting_in_the_loop(
    tmp_path: Path, spawners: str
) -> None:
    """A launch on two cores held by two different tasks waits in the driver's loop, not in a
    helper or worker: ``kill()`` ends it as never started (cancelled), and it does not start
    once those two are reaped."""
    backend = LocalBackend(cores=2, queue_ahead=True, kill_grace=0.5, spawners=spawners)
    ran = tmp_path / "ran"
    async with opened(backend, tmp_path) as h:
        (node,) = h.nodes
        holders = [
            h.start(
                Task(id=f"h{core}", command=("sh", "-c", HOLD)), on=(Slot(node.name, (core,), ()),)
            )
            for core in node.cores
        ]
        wide = h.start(
            Task(id="wide", command=("touch", str(ran))), on=(Slot(node.name, node.cores, ()),)
        )
        for holder in holders:
            await pid_of(tmp_path, holder.task.id)
        backend.kill()
        for holder in holders:
            await h.outcome(holder)
        outcome = await h.outcome(wide)
        await anyio.sleep(0.3)  # time for a wrongly started `touch`
    assert outcome.state is TaskState.CANCELLED and outcome.start_time is None, outcome
    assert not ran.exists()
