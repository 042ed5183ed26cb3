"""Taking queued-ahead jobs back from Flux (``queue_ahead="depend"``, ``flux_takeback``).

Against real brokers: a job that waits (by its dependency) for a long job moves to the cores a
short one frees on its node, or to another node's idle cores when the engine asks for it back;
a job taken back never started; under random lengths every task still runs exactly once. The
decision itself (take back, or release the hold) is checked on made-up event orders first.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any, cast

import anyio
import pytest

from matensemble import Ensemble
from matensemble.backends.base import Launch
from matensemble.backends.flux import FluxBackend
from matensemble.backends.flux_job import FluxJob, outcome_of
from matensemble.backends.flux_takeback import HOLD, TAKEN_BACK, TakeBack, TakeBacks
from matensemble.events import TaskStarted, TaskSubmitted
from matensemble.journal import read_journal, replay
from matensemble.model import Resources, Slot, Task, TaskState

from backend_harness import RUN_ID, opened
from flux_instance import (
    broker_cores,
    eventlog,
    flux_python,
    flux_uri,
    running_instance,
    taken_back,
)

__all__ = ["flux_python", "flux_uri"]  # fixtures, re-exported so pytest finds them


def sh(task_id: str, script: str, **kwargs: Any) -> Task:
    return Task(id=task_id, command=("sh", "-c", script), **kwargs)


# -- the decision, on made-up event orders ------------------------------------------------------


class Requests:
    """Stands in for the reactor bridge: records the urgency requests."""

    lost = False

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, int]]] = []

    def request(self, topic: str, payload: dict[str, int]) -> asyncio.Future[Any]:
        self.sent.append((topic, payload))
        answer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        answer.set_result({"old_urgency": 16})
        return answer


def job(task_id: str, jobid: int | None, after: FluxJob | None = None) -> FluxJob:
    launch = Launch(
        task=sh(task_id, "true"),
        attempt=1,
        placement=(Slot("n0", (0,)),),
        tasks_dir=Path("/nonexistent"),
        run_id="r",
    )
    made = FluxJob(launch, after, urgency=16)
    made.jobid = jobid
    return made


def urgency(value: int) -> dict[str, Any]:
    return {"name": "urgency", "timestamp": 1.0, "context": {"userid": 0, "urgency": value}}


class Decisions:
    """A ``TakeBacks`` whose urgency requests and cancels are recorded."""

    def __init__(self) -> None:
        self.requests = Requests()
        self.cancels: list[tuple[int, str]] = []
        self.relaunched: list[Launch] = []
        bridge = cast(Any, self.requests)
        cancel = self.cancels.append
        self.made = TakeBacks(bridge, lambda j, note: cancel((j, note)), self.relaunched.append)

    def hold_behind_long(self) -> tuple[FluxJob, FluxJob]:
        """``W`` waits (by its dependency) for ``L``, and is held to take it back."""
        long = job("L", 1)
        waiting = job("W", 2, after=long)
        assert self.made.ask(waiting)
        assert self.requests.sent == [("job-manager.urgency", {"id": 2, "urgency": HOLD})]
        return long, waiting


async def test_a_hold_set_while_the_job_waits_for_its_dependency_takes_it_back() -> None:
    decisions = Decisions()
    _, waiting = decisions.hold_behind_long()
    decisions.made.on_urgency(waiting, urgency(HOLD))  # came before L's clean: W in DEPEND
    assert decisions.cancels == [(2, TAKEN_BACK)]
    assert waiting.taking_back is TakeBack.TAKING
    waiting.exception = ("cancel", TAKEN_BACK)
    outcome = outcome_of(waiting, "2")
    assert outcome.state is TaskState.CANCELLED and outcome.withdrawn


async def test_a_hold_that_lands_after_the_dependency_ended_is_released() -> None:
    decisions = Decisions()
    long, waiting = decisions.hold_behind_long()
    long.clean = True  # L's clean came first: W may have an alloc request out
    decisions.made.on_urgency(waiting, urgency(HOLD))
    assert decisions.cancels == []
    assert decisions.requests.sent[-1] == ("job-manager.urgency", {"id": 2, "urgency": 16})
    assert waiting.taking_back is TakeBack.RELEASED
    decisions.made.on_urgency(waiting, urgency(16))  # the release's own event changes nothing
    assert decisions.cancels == [] and len(decisions.requests.sent) == 2


async def test_a_job_that_could_be_allocated_is_never_held() -> None:
    decisions = Decisions()
    made, requests = decisions.made, decisions.requests
    no_dependency = job("A", 1)
    after_clean = job("B", 2, after=job("P", 3))
    assert after_clean.after is not None
    after_clean.after.clean = True
    allocated = job("C", 4, after=job("Q", 5))
    allocated.times["alloc"] = 1.0
    unnamed = job("D", None, after=job("R", 6))
    for refused in (no_dependency, after_clean, allocated, unnamed):
        assert not made.ask(refused)
    assert requests.sent == []


def test_a_cancel_that_is_not_a_take_back_or_came_after_the_start_is_not_withdrawn() -> None:
    started = job("S", 1)
    started.exception, started.t_start = ("cancel", TAKEN_BACK), 5.0
    other = job("O", 2)
    other.exception = ("cancel", "cancelled by matensemble")
    assert not outcome_of(started, "1").withdrawn
    assert not outcome_of(other, "2").withdrawn


# -- against real brokers -------------------------------------------------------------------------


def job_ids(run_dir: Path) -> dict[str, list[str]]:
    """Every job id journaled for each task, in order."""
    ids: dict[str, list[str]] = {}
    for event in read_journal(run_dir / "journal.jsonl"):
        if isinstance(event, TaskSubmitted):
            ids.setdefault(event.id, []).append(event.job_id)
    return ids


@pytest.fixture
def two_cores(flux_python: None) -> Any:
    """A one-broker instance of which the engine uses two cores (the others reserved)."""
    with running_instance(1) as uri:
        cores = broker_cores(uri)[0]
        if cores < 2:
            pytest.skip("needs two cores")
        yield uri, cores - 2


@pytest.mark.flux
async def test_a_job_waiting_behind_a_long_one_moves_to_the_cores_a_short_one_frees(
    two_cores: tuple[str, int], tmp_path: Path
) -> None:
    uri, reserve = two_cores
    ran = tmp_path / "ran"
    log = f'echo "$MATENSEMBLE_TASK_ID" >> {ran}; '
    backend = FluxBackend(uri, queue_ahead="depend", reserve_driver_cores=reserve)
    with anyio.fail_after(60):
        async with Ensemble(
            [sh("L", log + "sleep 4"), sh("s", log + "sleep 0.5")],
            backend=backend,
            run_dir=tmp_path,
        ) as ens:
            await asyncio.sleep(0.3)  # their job ids are known: the next two get dependencies
            ens.submit([sh("B1", log + "sleep 0.2"), sh("B2", log + "sleep 0.2")])
            await ens.wait()
    past = replay(tmp_path)
    assert {r.id: r.state for r in past.finished.values()} == dict.fromkeys(
        ["L", "s", "B1", "B2"], TaskState.SUCCEEDED
    )
    assert sorted(ran.read_text().split()) == ["B1", "B2", "L", "s"]  # each ran once
    ends = {r.id: r.end_time or 0.0 for r in past.finished.values()}
    assert ends["B1"] < ends["L"] - 1 and ends["B2"] < ends["L"] - 1  # none waited for L
    ids = job_ids(tmp_path)
    moved = [task for task, jobs in ids.items() if len(jobs) == 2]
    assert len(moved) == 1  # one of them waited for L, and was submitted again
    first, second = ids[moved[0]]
    assert taken_back(uri, first) and not taken_back(uri, second)
    assert any(e["name"] == "dependency-add" for e in eventlog(uri, first))
    started = [e for e in read_journal(tmp_path / "journal.jsonl") if isinstance(e, TaskStarted)]
    assert [e.attempt for e in started if e.id == moved[0]] == [1]  # the engine saw one start


@pytest.mark.flux
@pytest.mark.parametrize("ids_known", [True, False], ids=["ids-known", "before-any-id"])
async def test_the_engine_takes_a_waiting_job_back_to_run_it_on_an_idle_node(
    flux_uri: str, tmp_path: Path, ids_known: bool
) -> None:
    """ "next" is booked behind a 5-s "long" and taken back to the node a 0.5-s "short" frees.
    ``before-any-id``: the three come at once, and "next" is booked before Flux has named any
    job; it waits in the driver (not in Fluxion's queue, where it could not be taken back)
    until it can depend on "long", or is taken back before that."""
    whole = Resources(cores_per_rank=min(broker_cores(flux_uri)))  # each task fills a node
    backend = FluxBackend(flux_uri, queue_ahead="depend")
    tasks = [sh("long", "sleep 5", resources=whole), sh("short", "sleep 0.5", resources=whole)]
    after = sh("next", "sleep 0.2", resources=whole)
    with anyio.fail_after(60):
        async with Ensemble(
            tasks + ([] if ids_known else [after]), backend=backend, run_dir=tmp_path
        ) as ens:
            if ids_known:
                await asyncio.sleep(0.3)
                ens.submit(after)
            await ens.wait()
    past = replay(tmp_path)
    assert {r.state for r in past.finished.values()} == {TaskState.SUCCEEDED}
    started = [e for e in read_journal(tmp_path / "journal.jsonl") if isinstance(e, TaskStarted)]
    on = {e.id: e.placement[0].node for e in started if e.id != "next"}
    nexts = [e for e in started if e.id == "next"]
    assert nexts[0].placement[0].node == on["long"]  # booked behind the long task
    assert nexts[-1].placement[0].node == on["short"]  # then run where the short one was
    assert past.finished["next"].end_time < past.finished["long"].end_time - 2  # type: ignore[operator]
    jobs = job_ids(tmp_path)["next"]
    if ids_known:
        assert [e.attempt for e in nexts] == [1, 1]  # withdrawn, then launched again
        assert taken_back(flux_uri, jobs[0])
    for job_id in jobs[:-1]:  # a job submitted for its booking, if any
        assert taken_back(flux_uri, job_id)


@pytest.mark.flux
async def test_a_launch_waiting_for_its_turn_ends_without_a_job_if_withdrawn_or_cancelled(
    flux_uri: str, tmp_path: Path
) -> None:
    """Launches booked behind jobs of another size (nothing to depend on) wait in the driver:
    withdrawn or cancelled there, they end at once and no job is ever made for them; the one
    left goes when the node has room for it."""
    async with opened(FluxBackend(flux_uri, queue_ahead="depend"), tmp_path) as harness:
        node = harness.nodes[0]
        if len(node.cores) < 2:
            pytest.skip("needs two cores per broker")
        longs = [
            harness.start(sh(f"long{core}", "sleep 1"), on=(Slot(node.name, (core,)),))
            for core in node.cores
        ]
        whole = Resources(cores_per_rank=len(node.cores))
        behind = (Slot(node.name, node.cores),)
        wide, taken, cancelled = (
            harness.start(sh(name, "true", resources=whole), on=behind)
            for name in ("parked-wide", "parked-taken", "parked-cancelled")
        )
        harness.backend.withdraw(taken.key)
        harness.backend.cancel(cancelled.key)
        withdrawn = await harness.outcome(taken, within=0.5)
        assert withdrawn.withdrawn and withdrawn.job_id is None
        stopped = await harness.outcome(cancelled, within=0.5)
        assert stopped.state is TaskState.CANCELLED and not stopped.withdrawn
        assert stopped.job_id is None
        gone = await harness.outcome(wide, within=30)
        ended = [await harness.outcome(launch) for launch in longs]
    assert gone.state is TaskState.SUCCEEDED
    assert gone.start_time >= max(o.end_time or 0.0 for o in ended)  # type: ignore[operator]
    import flux
    import flux.job

    handle = flux.Flux(flux_uri)
    names = {job.name for job in flux.job.JobList(handle, max_entries=0).jobs()}
    assert "parked-wide" in names and not names & {"parked-taken", "parked-cancelled"}


@pytest.mark.flux
async def test_under_random_lengths_every_task_runs_once_and_no_job_taken_back_started(
    two_cores: tuple[str, int], tmp_path: Path
) -> None:
    uri, reserve = two_cores
    rng = random.Random(11)
    ran = tmp_path / "ran"
    backend = FluxBackend(uri, queue_ahead="depend", reserve_driver_cores=reserve)
    ids: list[str] = []
    with anyio.fail_after(120):
        async with Ensemble([], backend=backend, run_dir=tmp_path) as ens:
            for wave in range(8):
                lengths = [rng.choice([1.2, 0.05, 0.1, 0.3]) for _ in range(4)]
                batch = [
                    sh(f"w{wave}t{i}", f'echo "$MATENSEMBLE_TASK_ID" >> {ran}; sleep {length}')
                    for i, length in enumerate(lengths)
                ]
                ids += [t.id for t in batch]
                ens.submit(batch)
                await asyncio.sleep(rng.uniform(0.1, 0.5))
            await ens.wait()
    past = replay(tmp_path)
    assert {r.state for r in past.finished.values()} == {TaskState.SUCCEEDED}
    assert sorted(ran.read_text().split()) == sorted(ids)  # each ran exactly once
    every = [j for jobs in job_ids(tmp_path).values() for j in jobs]
    moved = sum(taken_back(uri, j) for j in every)  # asserts each never started
    assert moved >= 1


@pytest.mark.flux
async def test_a_resume_adopts_the_job_a_crashed_driver_moved_a_task_to(
    flux_uri: str, tmp_path: Path
) -> None:
    """A driver took a job back to move it, submitted the task again, and died before the
    new job's id reached the journal: the journal names the job taken back. The resume finds
    the new job by the task's name, run and attempt, and adopts it (running it again would
    run the task twice)."""
    import flux
    import flux.job

    handle = flux.Flux(flux_uri)
    ran = tmp_path / "ran"
    task = sh("moved", f"echo once >> {ran}; sleep 0.5")
    tag = {"driver": "crashed", "task_id": task.id, "attempt": 1, "run_id": RUN_ID}

    def spec() -> Any:
        jobspec = flux.job.JobspecV1.from_command(list(task.command))
        jobspec.setattr("system.job.name", task.id)
        jobspec.setattr("user.matensemble", tag)
        return jobspec

    first = flux.job.submit(handle, spec(), urgency=HOLD)  # held: it never runs
    flux.job.cancel(handle, first, TAKEN_BACK)
    flux.job.event_wait(handle, first, "clean", raiseJobException=False)
    second = flux.job.submit(handle, spec())  # its id never reached the journal
    async with opened(FluxBackend(flux_uri), tmp_path) as harness:
        assert harness.pool is not None
        placement = harness.pool.allocate(task.resources)
        assert placement is not None
        launch = Launch(
            task=task, attempt=1, placement=placement, tasks_dir=tmp_path / "tasks", run_id=RUN_ID
        )
        harness.placements[launch.key] = placement
        assert await harness.backend.adopt([(launch, str(int(first)))]) == {launch.key}
        outcome = await harness.outcome(launch.key)
    assert outcome.state is TaskState.SUCCEEDED and not outcome.withdrawn
    assert outcome.job_id == str(int(second))
    assert ran.read_text() == "once\n"
