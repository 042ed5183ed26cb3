"""Queue-ahead under a real broker: ``FluxBackend(queue_ahead=True)`` on ``--test-size=2``.

Each broker has this machine's cores (2 here, so 4 slots; fewer or more elsewhere): each slot's
next task is queued in Flux behind the running one, on the rank the engine booked for it. The
tests size their tasks by the slots there are (``broker_cores``), never by this machine's.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest

from matensemble import Ensemble, RunSummary
from matensemble.backends.base import Launch, LaunchKey
from matensemble.backends.flux import FluxBackend
from matensemble.backends.flux_chains import WAIT, DependencyChains, Turn
from matensemble.backends.flux_job import FluxJob
from matensemble.backends.flux_takeback import TakeBacks
from matensemble.events import RunStarted, TaskStarted, TaskSubmitted
from matensemble.journal import read_journal, replay
from matensemble.model import Task, TaskState
from matensemble.queue_ahead import AUTO_BELOW

from conftest import started_at_most
from flux_instance import active_jobs, broker_cores, flux_python, flux_uri, taken_back

__all__ = ["flux_python", "flux_uri"]  # fixtures, re-exported so pytest finds them

pytestmark = pytest.mark.flux


def sh(task_id: str, script: str) -> Task:
    return Task(id=task_id, command=("sh", "-c", script))


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def wait_for(condition: Callable[[], object], timeout: float = 60) -> None:
    """Wait (in a thread: the test watches Flux, not the engine) until ``condition()``."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def most_jobs_in_flux_at_once(results: list[tuple[float, float]]) -> int:
    """The largest number of (submit, end) intervals open at one moment."""
    moments = sorted([(s, 1) for s, _ in results] + [(e, -1) for _, e in results])
    most = now = 0
    for _, step in moments:
        now += step
        most = max(most, now)
    return most


def dependencies_of(uri: str, job_id: str) -> list[dict[str, str]]:
    """The ``dependencies`` of a job's jobspec, as Flux holds it."""
    import flux
    import flux.job

    spec = flux.job.job_kvs_lookup(flux.Flux(uri), int(job_id), keys=["jobspec"])["jobspec"]
    return list(spec["attributes"]["system"].get("dependencies", []))


async def run_sleeps(
    flux_uri: str, tmp_path: Path, per_slot: int, queue_ahead: bool | str
) -> RunSummary:
    """``per_slot`` tasks of ``sleep 0.2`` per slot of the instance (more than the slots,
    whatever their number), run with ``queue_ahead``; every one of them succeeded."""
    n = per_slot * sum(broker_cores(flux_uri))
    tasks = [sh(f"t{i:02d}", "sleep 0.2") for i in range(n)]
    backend = FluxBackend(flux_uri, queue_ahead=queue_ahead)
    with anyio.fail_after(90):
        summary = await Ensemble(tasks, backend=backend, run_dir=tmp_path).run()
    assert summary.counts["succeeded"] == n
    return summary


@pytest.mark.parametrize("ahead", [True, "depend"])
async def test_queued_ahead_tasks_all_succeed_on_the_nodes_the_engine_booked(
    flux_uri: str, tmp_path: Path, ahead: bool | str
) -> None:
    summary = await run_sleeps(flux_uri, tmp_path, 6, ahead)
    events = list(read_journal(tmp_path / "journal.jsonl"))
    slots = next(e.cores for e in events if isinstance(e, RunStarted))
    booked = {e.id: {s.node for s in e.placement} for e in events if isinstance(e, TaskStarted)}
    results = summary.results.values()
    for result in results:
        assert {s.node for s in result.placement} == booked[result.id], result
    spans = [(r.times["submit"], r.end_time) for r in results if r.end_time is not None]
    assert most_jobs_in_flux_at_once(spans) > slots  # some waited in Flux behind a running one


async def test_queued_ahead_by_dependency_each_waiting_job_depends_on_one_on_its_node(
    flux_uri: str, tmp_path: Path
) -> None:
    summary = await run_sleeps(flux_uri, tmp_path, 6, "depend")
    results = {r.job_id: r for r in summary.results.values()}
    journaled = {
        e.job_id for e in read_journal(tmp_path / "journal.jsonl") if isinstance(e, TaskSubmitted)
    }
    awaited: list[str] = []
    for job_id, result in results.items():
        assert job_id is not None
        for dependency in dependencies_of(flux_uri, job_id):
            assert dependency["scheme"] == "afterany"
            if dependency["value"] not in results:  # a job of this run taken back, never run
                assert dependency["value"] in journaled
                assert taken_back(flux_uri, dependency["value"])
                awaited.append(dependency["value"])
                continue
            before = results[dependency["value"]]  # a job of this run ...
            assert before.placement[0].node == result.placement[0].node  # ... on its node
            assert before.end_time is not None and result.start_time is not None
            assert result.start_time >= before.end_time  # it started after that one ended
            awaited.append(dependency["value"])
    assert len(awaited) >= len(results) - 2 * sum(broker_cores(flux_uri))
    assert len(set(awaited)) == len(awaited)  # no job had two waiting for it
    # No job waited in Fluxion's queue: one submitted without a dependency found room on its
    # node (those booked before any job id was known waited in the driver until one was).
    per_node = min(broker_cores(flux_uri))  # each broker has the same cores
    for job_id, result in results.items():
        if dependencies_of(flux_uri, str(job_id)):
            continue
        node, submit = result.placement[0].node, result.times["submit"]
        beside = [
            other
            for other in results.values()
            if other is not result
            and other.placement[0].node == node
            and other.times["submit"] < submit
            and (other.end_time is None or other.end_time > submit)
        ]
        assert len(beside) < per_node, (result.id, [b.id for b in beside])


async def test_the_job_a_parked_launch_depends_on_is_chosen_once(
    flux_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tasks booked before Flux named the jobs ahead of them wait in the driver. When the
    turn of one comes, ``next_due`` chooses the job it depends on (or finds room) and the launch
    is submitted with that choice: it is not chosen again on the way to Flux. Only a launch
    moved by ``flux_takeback`` is given a job anew, outside ``next_due``."""
    choices: list[tuple[LaunchKey, bool]] = []  # a launch given a job or room in turn, in next_due
    moved: list[LaunchKey] = []
    in_next_due = False
    predecessor, next_due = DependencyChains.predecessor, DependencyChains.next_due
    relaunched = TakeBacks.relaunched

    def counted_predecessor(
        self: DependencyChains, launch: Launch, *, in_turn: bool = False
    ) -> FluxJob | Turn | None:
        chosen = predecessor(self, launch, in_turn=in_turn)
        if in_turn and chosen is not WAIT:
            choices.append((launch.key, in_next_due))
        return chosen

    def counted_next_due(self: DependencyChains) -> tuple[FluxJob, FluxJob | None] | None:
        nonlocal in_next_due
        in_next_due = True
        try:
            return next_due(self)
        finally:
            in_next_due = False

    def counted_relaunched(self: TakeBacks, job: FluxJob) -> bool:
        moving = relaunched(self, job)
        if moving:
            moved.append(job.launch.key)
        return moving

    monkeypatch.setattr(DependencyChains, "predecessor", counted_predecessor)
    monkeypatch.setattr(DependencyChains, "next_due", counted_next_due)
    monkeypatch.setattr(TakeBacks, "relaunched", counted_relaunched)
    await run_sleeps(flux_uri, tmp_path, 3, "depend")
    assert any(inside for _, inside in choices)  # some launches waited in the driver
    assert [key for key, inside in choices if not inside and key not in moved] == []


@pytest.mark.parametrize(("script", "booked"), [("true", True), ("sleep 0.7", False)])
async def test_by_default_only_short_tasks_are_queued_ahead(
    flux_uri: str, tmp_path: Path, script: str, booked: bool
) -> None:
    """``FluxBackend()`` (``queue_ahead="auto"``): the first wave is not queued ahead; then
    tasks are, through dependencies, while they run under ``AUTO_BELOW`` (0.5 s) on average
    (and Flux starts them on time, as on a test instance)."""
    slots = sum(broker_cores(flux_uri))
    n = (6 if booked else 2) * slots
    tasks = [sh(f"t{i:02d}", script) for i in range(n)]
    with anyio.fail_after(90):
        summary = await Ensemble(tasks, backend=FluxBackend(flux_uri), run_dir=tmp_path).run()
    assert summary.counts["succeeded"] == n
    before_first_end, most = started_at_most(tmp_path / "journal.jsonl")
    assert before_first_end == slots  # the first wave: one task per slot, nothing booked
    waiting = [r.job_id for r in summary.results.values() if dependencies_of(flux_uri, r.job_id)]
    if booked:  # a booked task was started beside every slot's running one, and depended on it
        assert most > slots and len(waiting) >= n // 2, (most, len(waiting))
    else:
        assert most == slots and waiting == []


def test_queue_ahead_accepts_only_true_false_depend_or_auto() -> None:
    with pytest.raises(ValueError, match="queue_ahead must be True, False, 'depend' or 'auto'"):
        FluxBackend(queue_ahead="yes")
    assert FluxBackend().queue_ahead_below == AUTO_BELOW < math.inf  # the default is "auto"
    assert FluxBackend(queue_ahead="depend").queue_ahead_below == math.inf


@pytest.mark.parametrize("ahead", [True, "depend"])
async def test_cancelling_a_task_queued_ahead_cancels_its_pending_job(
    flux_uri: str, tmp_path: Path, ahead: bool | str
) -> None:
    go, ran = tmp_path / "go", tmp_path / "ran"
    wait = f'echo "$MATENSEMBLE_TASK_ID" >> {ran}; while [ ! -e {go} ]; do sleep 0.05; done'
    slots = sum(broker_cores(flux_uri))
    blockers = [sh(f"b{i}", wait) for i in range(slots)]  # one on every core
    queued = sh("queued", f'echo "$MATENSEMBLE_TASK_ID" >> {ran}')
    with anyio.fail_after(60):
        async with Ensemble(
            backend=FluxBackend(flux_uri, queue_ahead=ahead), run_dir=tmp_path / "run"
        ) as ens:
            ens.submit([*blockers, queued])
            await anyio.to_thread.run_sync(
                wait_for, lambda: len(lines(ran)) == slots and active_jobs(flux_uri, "queued")
            )
            assert ens.state("queued") is TaskState.RUNNING  # launched: pending in Flux
            ens.cancel("queued")
            async for result in ens.completed():
                assert result.id == "queued"  # the first result: nothing else has ended
                break
            assert not active_jobs(flux_uri, "queued")
            go.touch()
            await ens.wait()
    result = ens.result("queued")
    assert result is not None and result.state is TaskState.CANCELLED
    assert result.start_time is None  # it never started
    assert sorted(lines(ran)) == sorted(t.id for t in blockers)
    assert all(ens.state(t.id) is TaskState.SUCCEEDED for t in blockers)


DRIVER = """
import asyncio, sys
from matensemble import Ensemble, Task
from matensemble.backends.flux import FluxBackend
base, n = sys.argv[1], int(sys.argv[3])
wait = f'echo "$MATENSEMBLE_TASK_ID $FLUX_JOB_ID" >> {base}/ran; '
wait += f'while [ ! -e {base}/go ]; do sleep 0.05; done'
tasks = [Task(id=f"w{i}", command=("sh", "-c", wait)) for i in range(n)]
resume = f"{base}/run" if sys.argv[2] == "resume" else None
ens = Ensemble(tasks, backend=FluxBackend(queue_ahead=True), run_dir=f"{base}/run", resume=resume)
summary = asyncio.run(ens.run())
sys.exit(0 if summary.counts["succeeded"] == n else 1)
"""


@pytest.mark.parametrize("held", [False, True])
def test_resume_adopts_a_job_a_killed_driver_left_queued_ahead(
    flux_uri: str, tmp_path: Path, held: bool
) -> None:
    """``held``: the driver died while it held the queued job to take it back (urgency 0,
    ``flux_takeback``): the resume releases it."""
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    slots = sum(broker_cores(flux_uri))
    n, ids = slots + 1, [f"w{i}" for i in range(slots + 1)]  # one queued behind the others
    env = {**os.environ, "FLUX_URI": flux_uri, "PYTHONPATH": os.pathsep.join(sys.path)}
    driver = subprocess.Popen([sys.executable, str(script), str(tmp_path), "run", str(n)], env=env)
    ran, journal = tmp_path / "ran", tmp_path / "run" / "journal.jsonl"
    wait_for(
        lambda: (
            len(lines(ran)) == slots
            and journal.exists()
            and journal.read_text().count("task_submitted") == n
        )
    )
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    left = [j for task_id in ids for j in active_jobs(flux_uri, task_id)]
    assert len(left) == n  # one running on every core, one queued behind them
    if held:
        import flux
        import flux.job

        handle = flux.Flux(flux_uri)
        pending = [int(j.id) for j in flux.job.JobList(handle, filters=["pending"]).jobs()]
        assert len(pending) == 1
        handle.rpc("job-manager.urgency", {"id": pending[0], "urgency": 0}).get()
    (tmp_path / "go").touch()
    resumed = subprocess.run(
        [sys.executable, str(script), str(tmp_path), "resume", str(n)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    ran_once = sorted(line.split()[0] for line in lines(ran))
    assert ran_once == sorted(ids)  # each ran once
    past = replay(tmp_path / "run")
    assert set(past.finished) == set(ids)
    jobs = {int(j) for j in left}
    assert {int(r.job_id or 0) for r in past.finished.values()} == jobs  # adopted, all of them
    assert not [j for task_id in ids for j in active_jobs(flux_uri, task_id)]
