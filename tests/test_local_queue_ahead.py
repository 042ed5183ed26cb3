"""``LocalBackend(queue_ahead=True)``: each core's next task launched while the one before it
runs there, started by the worker the moment that one exits. Real processes, real files."""

from __future__ import annotations

import itertools
import math
import os
import random
import sys
import time
from pathlib import Path

import anyio
import pytest

from matensemble import Ensemble, LocalBackend, Resources, Task, TaskState
from matensemble.backends.base import Launch
from matensemble.events import TaskFinished, TaskStarted, TaskWithdrawn
from matensemble.journal import read_journal
from matensemble.model import Slot
from matensemble.queue_ahead import AUTO_BELOW

from backend_harness import opened
from conftest import HOLD, InvariantChecker, alive, pid_of, started_at_most

pytestmark = [
    pytest.mark.skipif(
        len(os.sched_getaffinity(0)) < 2 or not sys.platform.startswith("linux"),
        reason="needs two cores on Linux",
    ),
    pytest.mark.usefixtures("local_spawners"),  # each test with threads, then helper processes
]


def sh(task_id: str, script: str, **kw: object) -> Task:
    return Task(id=task_id, command=("sh", "-c", script), **kw)  # type: ignore[arg-type]


def journal(run_dir: Path) -> list[object]:
    path = run_dir / "journal.jsonl"
    return list(read_journal(path)) if path.exists() else []


def started_ids(run_dir: Path) -> set[str]:
    return {e.id for e in journal(run_dir) if isinstance(e, TaskStarted)}


async def until_started(run_dir: Path, *task_ids: str) -> None:
    """Wait (test side: there is no event to wait on) until the journal has their starts."""
    deadline = time.monotonic() + 20
    while not set(task_ids) <= started_ids(run_dir):
        assert time.monotonic() < deadline, f"{task_ids} not started: {started_ids(run_dir)}"
        await anyio.sleep(0.01)


async def test_booked_tasks_run_pinned_to_the_cores_they_were_booked_on(run_dir: Path) -> None:
    show = "grep Cpus_allowed_list /proc/self/status; sleep 0.3"
    tasks = [sh(f"a{i}", show) for i in range(6)]
    tasks.insert(4, sh("wide", show, resources=Resources(cores_per_rank=2)))  # waits for both
    backend = LocalBackend(cores=2, queue_ahead=True)
    summary = await Ensemble(tasks, backend=backend, run_dir=run_dir).run()
    assert summary.counts["succeeded"] == len(tasks)
    events = journal(run_dir)
    order = [
        ("started", e.id) if isinstance(e, TaskStarted) else ("finished", e.result.id)
        for e in events
        if isinstance(e, TaskStarted | TaskFinished)
    ]
    # a2 and a3 were launched (booked) while a0 and a1 still ran on both cores
    assert order.index(("started", "a2")) < order.index(("finished", "a0"))
    assert order.index(("started", "a3")) < order.index(("finished", "a1"))
    booked_on = {e.id: e.placement for e in events if isinstance(e, TaskStarted)}
    for t in tasks:
        text = (run_dir / "tasks" / t.id / "stdout").read_text()
        allowed = text.split(":")[1].strip()
        (slot,) = summary.results[t.id].placement
        assert summary.results[t.id].placement == booked_on[t.id]  # moved in on the same ids
        expected = (
            f"{slot.cores[0]}-{slot.cores[-1]}" if len(slot.cores) > 1 else f"{slot.cores[0]}"
        )
        assert allowed == expected, (t.id, allowed, slot)


async def test_a_booked_task_cancelled_before_it_starts_never_runs(run_dir: Path) -> None:
    tasks = [sh("h0", HOLD), sh("h1", HOLD), sh("booked", "touch ran; sleep 60")]
    backend = LocalBackend(cores=2, queue_ahead=True, kill_grace=0.5)
    async with Ensemble(tasks, backend=backend, run_dir=run_dir) as ens:
        holders = [await pid_of(run_dir, "h0"), await pid_of(run_dir, "h1")]
        await until_started(run_dir, "booked")
        began = time.monotonic()
        ens.cancel("booked")
        while ens.summary().results.get("booked") is None:
            assert time.monotonic() - began < 10, "the booked task did not end"
            await anyio.sleep(0.01)
        assert all(alive(pid, grace=0) for pid in holders)  # the tasks before it run on
        ens.cancel()
    results = ens.summary().results
    assert results["booked"].state is TaskState.CANCELLED
    assert results["booked"].start_time is None
    assert not (run_dir / "tasks" / "booked" / "ran").exists()
    assert not any(alive(pid) for pid in holders)


async def test_a_booked_two_core_task_cancelled_while_it_waits_for_both_never_runs(
    run_dir: Path,
) -> None:
    wide = sh("wide", "touch ran; sleep 60", resources=Resources(cores_per_rank=2))
    tasks = [sh("h0", HOLD), sh("h1", HOLD), wide]  # wide waits for two tasks: in the loop
    backend = LocalBackend(cores=2, queue_ahead=True, kill_grace=0.5)
    async with Ensemble(tasks, backend=backend, run_dir=run_dir) as ens:
        holders = [await pid_of(run_dir, "h0"), await pid_of(run_dir, "h1")]
        await until_started(run_dir, "wide")
        ens.cancel("wide")
        began = time.monotonic()
        while ens.summary().results.get("wide") is None:
            assert time.monotonic() - began < 10, "the booked task did not end"
            await anyio.sleep(0.01)
        assert all(alive(pid, grace=0) for pid in holders)
        ens.cancel()
    assert ens.summary().results["wide"].state is TaskState.CANCELLED
    assert not (run_dir / "tasks" / "wide" / "ran").exists()


async def test_a_booked_task_times_out_counting_from_its_own_start(run_dir: Path) -> None:
    tasks = [
        sh("h0", "sleep 1.5"),
        sh("h1", "sleep 1.5"),
        sh("late", "sleep 0.2", timeout=1.0),  # booked behind a 1.5 s task: it still succeeds
        sh("slow", "sleep 30", timeout=0.5),
    ]
    backend = LocalBackend(cores=2, queue_ahead=True, kill_grace=0.5)
    summary = await Ensemble(tasks, backend=backend, run_dir=run_dir).run()
    assert summary.results["late"].state is TaskState.SUCCEEDED
    assert summary.results["slow"].state is TaskState.TIMED_OUT


async def test_a_stopped_run_leaves_its_booked_tasks_to_resume(
    run_dir: Path, tmp_path: Path
) -> None:
    go = tmp_path / "go"
    hold = f"test -e {go} && exit 0; {HOLD}"
    tasks = [sh("h0", hold), sh("h1", hold), sh("b0", "touch ran"), sh("b1", "touch ran")]
    backend = LocalBackend(cores=2, queue_ahead=True, kill_grace=0.5)
    async with Ensemble(tasks, backend=backend, run_dir=run_dir) as ens:
        holders = [await pid_of(run_dir, "h0"), await pid_of(run_dir, "h1")]
        await until_started(run_dir, "b0", "b1")
        ens.stop("walltime")
    assert not any(alive(pid) for pid in holders)
    for task_id in ("b0", "b1"):
        assert ens.summary().results[task_id].state is TaskState.CANCELLED
        assert not (run_dir / "tasks" / task_id / "ran").exists()
    go.touch()
    backend = LocalBackend(cores=2, queue_ahead=True)
    summary = await Ensemble(tasks, backend=backend, resume=run_dir).run()
    assert summary.counts["succeeded"] == 4
    for task_id in ("b0", "b1"):
        assert (run_dir / "tasks" / task_id / "ran").exists()


async def test_many_short_tasks_queued_ahead_all_succeed(run_dir: Path) -> None:
    tasks = [Task(id=f"t{i}", command=("true",)) for i in range(400)]
    backend = LocalBackend(cores=2, queue_ahead=True)
    summary = await Ensemble(tasks, backend=backend, run_dir=run_dir).run()
    assert summary.counts["succeeded"] == 400
    assert len(list((run_dir / "tasks").iterdir())) == 400


async def test_an_aborted_run_starts_none_of_its_booked_tasks(run_dir: Path) -> None:
    tasks = [sh("h0", HOLD), sh("h1", HOLD), sh("b0", "touch ran"), sh("b1", "touch ran")]
    backend = LocalBackend(cores=2, queue_ahead=True, kill_grace=0.5)
    async with Ensemble(tasks, backend=backend, run_dir=run_dir) as ens:
        holders = [await pid_of(run_dir, "h0"), await pid_of(run_dir, "h1")]
        await until_started(run_dir, "b0", "b1")
        ens.abort()  # the holders are killed: their workers must not start what waits behind
        deadline = time.monotonic() + 20
        while any(alive(pid, grace=0) for pid in holders):
            assert time.monotonic() < deadline, "the holders outlived the abort"
            await anyio.sleep(0.01)
        ens.stop("aborted")
    for task_id in ("b0", "b1"):
        result = ens.summary().results[task_id]
        assert result.start_time is None, task_id
        assert not (run_dir / "tasks" / task_id / "ran").exists()
        # never ran, so not done: ``resume`` runs it
        assert result.state is TaskState.CANCELLED and "interrupted" in (result.reason or "")


async def test_a_task_booked_behind_a_long_one_moves_to_a_core_that_stands_idle(
    run_dir: Path,
) -> None:
    """One core runs a long task; the other runs the short ones, then stands idle. The short
    task booked behind the long one is taken back and run there, not after the long one."""
    tasks = [sh("long", "sleep 2.5")] + [sh(f"s{i}", "sleep 0.1") for i in range(3)]
    backend = LocalBackend(cores=2, queue_ahead=True)
    summary = await Ensemble(tasks, backend=backend, run_dir=run_dir).run()
    assert summary.counts["succeeded"] == 4
    results = summary.results
    long_end = results["long"].end_time
    assert long_end is not None
    for task_id in ("s0", "s1", "s2"):
        end = results[task_id].end_time
        assert end is not None and end < long_end - 1.0, (task_id, end, long_end)
    # The one booked behind "long" was started twice in the journal, as attempt 1 both times:
    # booked on the long task's core, then on the idle one, where it ran.
    starts: dict[str, list[TaskStarted]] = {}
    for event in journal(run_dir):
        if isinstance(event, TaskStarted):
            starts.setdefault(event.id, []).append(event)
    (moved,) = [task_id for task_id, seen in starts.items() if len(seen) > 1]
    first, last = starts[moved]
    assert first.attempt == last.attempt == results[moved].attempts == 1
    assert first.placement == results["long"].placement != last.placement
    assert results[moved].placement == last.placement
    # Between them the journal says it was taken back (so a resume counts its core free).
    order = [
        (type(e).__name__, e.attempt)
        for e in journal(run_dir)
        if isinstance(e, TaskStarted | TaskWithdrawn) and e.id == moved
    ]
    assert order == [("TaskStarted", 1), ("TaskWithdrawn", 1), ("TaskStarted", 1)]


async def test_withdraw_takes_back_a_waiting_launch_and_leaves_one_that_started(
    tmp_path: Path,
) -> None:
    backend = LocalBackend(cores=2, queue_ahead=True, kill_grace=0.5)
    async with opened(backend, tmp_path) as h:
        (node,) = h.nodes
        one, two = node.cores[:2]

        def launch(task_id: str, script: str, *cores: int) -> Launch:
            task = sh(task_id, script, resources=Resources(cores_per_rank=len(cores)))
            return h.start(task, on=(Slot(node.name, cores, ()),))

        # Waiting behind a running launch (in its worker or helper): taken back, never runs.
        holder = launch("holder", "sleep 1", one)
        behind = launch("behind", "touch ran", one)
        backend.withdraw(behind.key)
        got = await h.outcome(behind, within=20)
        assert got.withdrawn and got.state is TaskState.CANCELLED and got.start_time is None
        # Waiting in the loop for two cores: the same.
        other = launch("other", "sleep 1", two)
        wide = launch("wide", "touch ran", one, two)
        backend.withdraw(wide.key)
        got = await h.outcome(wide, within=20)
        assert got.withdrawn and got.start_time is None
        assert (await h.outcome(holder, within=20)).state is TaskState.SUCCEEDED
        assert (await h.outcome(other, within=20)).state is TaskState.SUCCEEDED
        # Started before the request came (the loop was held while the one before it ended):
        # it runs on and reports as usual.
        first = launch("first", "sleep 0.2", one)
        then = launch("then", "touch ran", one)
        time.sleep(1.5)
        backend.withdraw(then.key)
        got = await h.outcome(then, within=20)
        assert not got.withdrawn and got.state is TaskState.SUCCEEDED
        assert got.start_time is not None
        assert (await h.outcome(first, within=20)).state is TaskState.SUCCEEDED
    ran = [t for t in ("behind", "wide", "then") if (h.task_dir(t) / "ran").exists()]
    assert ran == ["then"]


async def test_tasks_of_random_lengths_queued_ahead_each_run_once_one_per_core(
    run_dir: Path, tmp_path: Path
) -> None:
    """Waves of a long task and three short ones, each wave after the short ones of the one
    before: a short task booked behind the long one is taken back in most waves, at moments
    the random lengths move about (also against its own start). Every task still runs exactly
    once, one at a time on each core, and none is counted as a further attempt."""
    rng = random.Random(11)
    ran = tmp_path / "ran"
    tasks: list[Task] = []
    for wave in range(15):
        after = tuple(f"w{wave - 1}s{j}" for j in range(3)) if wave else ()
        lengths = [rng.choice((0.1, 0.3))] + [rng.choice((0.0, 0.01, 0.03)) for _ in range(3)]
        names = [f"w{wave}long"] + [f"w{wave}s{j}" for j in range(3)]
        tasks += [
            sh(name, f"echo $MATENSEMBLE_TASK_ID >> {ran}; sleep {length}", after=after)
            for name, length in zip(names, lengths, strict=True)
        ]
    backend = LocalBackend(cores=2, queue_ahead=True)
    summary = await Ensemble(tasks, backend=backend, run_dir=run_dir).run()
    assert summary.counts["succeeded"] == len(tasks)
    assert sorted(ran.read_text().split()) == sorted(t.id for t in tasks)
    on_core: dict[int, list[tuple[float, float]]] = {}
    for result in summary.results.values():
        assert result.attempts == 1, result
        assert result.start_time is not None and result.end_time is not None
        (slot,) = result.placement
        on_core.setdefault(slot.cores[0], []).append((result.start_time, result.end_time))
    for spans in on_core.values():
        spans.sort()
        for (_, end), (start, _) in itertools.pairwise(spans):
            assert end <= start, (end, start)
    starts = [e.id for e in journal(run_dir) if isinstance(e, TaskStarted)]
    assert len(starts) - len(set(starts)) >= 3  # taken back and launched again (12-14 seen)


@pytest.mark.parametrize(("script", "booked"), [("true", True), ("sleep 0.7", False)])
async def test_by_default_tasks_are_booked_only_while_they_run_shorter(
    run_dir: Path, script: str, booked: bool
) -> None:
    """The default ``queue_ahead="auto"`` (``Backend.queue_ahead_below``), with real processes:
    no booking before a task has finished, then only while the tasks run shorter than
    ``AUTO_BELOW`` on average."""
    backend = LocalBackend(cores=2)
    assert backend.queue_ahead and backend.queue_ahead_below == AUTO_BELOW
    tasks = [sh(f"t{i}", script) for i in range(8)]
    with anyio.fail_after(30):
        summary = await Ensemble(tasks, backend=backend, run_dir=run_dir).run()
    assert summary.counts["succeeded"] == 8
    before_first_end, most = started_at_most(run_dir / "journal.jsonl")
    assert before_first_end == 2  # one task per core until one has finished
    assert (most > 2) is booked, most


@pytest.mark.parametrize("given", [False, True, "auto", "depend", 2])
def test_queue_ahead_is_true_false_or_auto(given: object) -> None:
    if given in (False, True, "auto"):
        backend = LocalBackend(queue_ahead=given)  # type: ignore[arg-type]
        assert backend.queue_ahead is (given is not False)
        assert (backend.queue_ahead_below < math.inf) is (given == "auto")
    else:
        with pytest.raises(ValueError, match="queue_ahead must be True, False or 'auto'"):
            LocalBackend(queue_ahead=given)  # type: ignore[arg-type]


async def test_the_ensemble_says_how_many_running_tasks_are_queued_ahead(run_dir: Path) -> None:
    """``Ensemble.queued_ahead``: of the running tasks, those booked behind the task on their
    core and not started yet (the CLI's progress display shows it beside the running count)."""
    tasks = [sh(f"t{i}", "sleep 0.5") for i in range(3)]  # one core: t1 booked behind t0, ...
    seen: list[tuple[str, int, int]] = []
    backend = LocalBackend(cores=1, queue_ahead=True)
    async with Ensemble(tasks, backend=backend, run_dir=run_dir) as ens:
        with anyio.fail_after(30):
            async for result in ens.completed():
                seen.append((result.id, ens.counts["running"], ens.queued_ahead))
    # After t0's end t1 runs and t2 is booked behind it (0.5 s before either changes); after
    # t1's, t2 runs with nothing behind it; at the end nothing runs.
    assert seen == [("t0", 2, 1), ("t1", 1, 0), ("t2", 0, 0)], seen
    assert ens.queued_ahead == 0


async def test_a_task_booked_with_a_gpu_waits_for_that_gpu_held_on_another_core(
    run_dir: Path,
) -> None:
    """``gpu_c`` is booked on core 1 (core 0 of that layer went to ``plain_d``) with the one
    GPU, which ``gpu_a`` holds on core 0: it starts when ``gpu_a`` ends, not when core 1 does."""
    gpu = Resources(gpus_per_rank=1)
    tasks = [
        sh("gpu_a", "sleep 0.8", resources=gpu),
        sh("plain_b", "sleep 0.1"),
        sh("plain_d", "sleep 0.1"),
        sh("gpu_c", "true", resources=gpu),
    ]
    backend = LocalBackend(cores=2, gpus=["7"], queue_ahead=True)
    checker = InvariantChecker(2, 1, queue_ahead=backend.queue_ahead_depth)
    summary = await Ensemble(tasks, backend=backend, run_dir=run_dir, observers=[checker]).run()
    assert summary.counts["succeeded"] == len(tasks)
    booked = {e.id: e.placement for e in journal(run_dir) if isinstance(e, TaskStarted)}
    assert booked["gpu_c"] == (Slot(booked["gpu_a"][0].node, (1,), ("7",)),)
    a, c = summary.results["gpu_a"], summary.results["gpu_c"]
    assert a.end_time is not None and c.start_time is not None
    assert c.start_time >= a.end_time  # never both on GPU 7 (the checker says so too)


async def test_each_core_has_its_next_tasks_booked_up_to_the_depth_and_runs_them_in_order(
    run_dir: Path,
) -> None:
    """Each core has ``Backend.queue_ahead_depth`` tasks waiting behind its running one (three
    with helper processes, one with worker threads), and runs its tasks in the order they were
    booked there."""
    backend = LocalBackend(cores=2, queue_ahead=True)
    tasks = [sh(f"t{i}", "sleep 0.2") for i in range(10)]
    with anyio.fail_after(30):
        summary = await Ensemble(tasks, backend=backend, run_dir=run_dir).run()
    assert summary.counts["succeeded"] == 10
    before_first_end, _ = started_at_most(run_dir / "journal.jsonl")
    assert before_first_end == 2 * (1 + backend.queue_ahead_depth)
    booked: dict[int, list[str]] = {}
    for event in journal(run_dir):
        if isinstance(event, TaskStarted):
            booked.setdefault(event.placement[0].cores[0], []).append(event.id)
    for core, ids in booked.items():
        ran = sorted(ids, key=lambda i: summary.results[i].start_time or math.inf)
        assert ran == ids, (core, ran, ids)
        spans = [(summary.results[i].start_time, summary.results[i].end_time) for i in ran]
        for (_, end), (start, _) in itertools.pairwise(spans):
            assert end is not None and start is not None and end <= start
