"""The engine's behaviour, on the simulated backend (virtual clock, no processes)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import msgspec
import pytest

from matensemble import (
    DependencyError,
    Ensemble,
    Resources,
    SimulatedBackend,
    Task,
    TaskRejected,
    TaskResult,
    TaskState,
)
from matensemble.events import TaskFinished
from matensemble.journal import read_journal
from matensemble.status import read_status
from matensemble.strategies import (
    FIFO,
    CompletionPolicy,
    EnsembleControl,
    LongestFirst,
    Priority,
    RetryPolicy,
    Waves,
)

from conftest import InvariantChecker


def t(task_id: str, est: float = 1.0, **kw: object) -> Task:
    return Task(id=task_id, command=("true",), estimate=est, **kw)  # type: ignore[arg-type]


def sim(cores: int = 4, **kw: object) -> SimulatedBackend:
    return SimulatedBackend(nodes=1, cores_per_node=cores, **kw)  # type: ignore[arg-type]


async def test_independent_tasks_all_succeed_and_fill_every_core(run_dir: Path) -> None:
    summary = await Ensemble([t(f"a{i}") for i in range(8)], backend=sim(4), run_dir=run_dir).run()
    assert summary.counts["succeeded"] == 8
    assert summary.makespan == pytest.approx(2.0)
    assert summary.core_utilisation == pytest.approx(1.0)
    assert summary.ok


async def test_dependents_of_a_failed_task_are_skipped_with_the_upstream_as_reason(
    run_dir: Path,
) -> None:
    tasks = [t("a"), t("b", after=("a",)), t("c", after=("b",)), t("d")]
    backend = sim(returncode=lambda task, attempt: 3 if task.id == "a" else 0)
    summary = await Ensemble(tasks, backend=backend, run_dir=run_dir).run()
    r = summary.results
    assert r["a"].state is TaskState.FAILED and r["a"].returncode == 3
    assert r["b"].state is TaskState.SKIPPED and r["b"].reason == "prerequisite 'a' failed"
    assert r["c"].state is TaskState.SKIPPED and r["c"].reason == "prerequisite 'b' skipped"
    assert r["d"].state is TaskState.SUCCEEDED
    assert not summary.ok


async def test_a_100000_deep_chain_runs_without_recursion(run_dir: Path) -> None:
    n = 100_000
    tasks = [t("c0", est=0.0)] + [t(f"c{i}", est=0.0, after=(f"c{i - 1}",)) for i in range(1, n)]
    summary = await Ensemble(tasks, backend=sim(2), run_dir=run_dir).run()
    assert summary.counts["succeeded"] == n


async def test_a_failure_at_the_top_of_a_100000_deep_chain_skips_it_all_without_recursion(
    run_dir: Path,
) -> None:
    n = 100_000
    tasks = [t("c0")] + [t(f"c{i}", after=(f"c{i - 1}",)) for i in range(1, n)]
    backend = sim(returncode=lambda task, attempt: 1)
    summary = await Ensemble(tasks, backend=backend, run_dir=run_dir).run()
    assert summary.counts["failed"] == 1
    assert summary.counts["skipped"] == n - 1


async def test_a_cycle_is_rejected_at_submission_and_nothing_runs(run_dir: Path) -> None:
    tasks = [t("a", after=("c",)), t("b", after=("a",)), t("c", after=("b",)), t("x")]
    with pytest.raises(DependencyError, match="cycle: a -> c -> b -> a"):
        await Ensemble(tasks, backend=sim(), run_dir=run_dir).run()
    assert not run_dir.exists()  # refused before anything was written


async def test_an_unknown_prerequisite_is_rejected_with_a_suggestion(run_dir: Path) -> None:
    with pytest.raises(DependencyError, match="unknown prerequisite 'prepar'; did you mean"):
        await Ensemble(
            [t("prepare"), t("b", after=("prepar",))], backend=sim(), run_dir=run_dir
        ).run()


async def test_task_that_needs_more_gpus_than_exist_is_rejected(run_dir: Path) -> None:
    big = Task(id="big", command=("x",), resources=Resources(gpus_per_rank=9))
    with pytest.raises(TaskRejected, match="'big' rejected: it can never fit"):
        await Ensemble([big], backend=SimulatedBackend(2, 4, 8), run_dir=run_dir).run()


async def test_a_rejected_batch_adds_nothing_and_the_run_goes_on(run_dir: Path) -> None:
    async with Ensemble([t("a")], backend=sim(), run_dir=run_dir) as ens:
        with pytest.raises(TaskRejected, match="already submitted"):
            ens.submit([t("b"), t("a")])
        with pytest.raises(TaskRejected, match="never fit"):
            ens.submit([t("c"), Task(id="d", command=("x",), resources=Resources(ranks=99))])
        assert set(ens.counts.values()) <= {0, 1}
    assert ens.summary().counts["succeeded"] == 1
    assert set(ens.summary().results) == {"a"}


async def test_duplicate_ids_are_rejected(run_dir: Path) -> None:
    with pytest.raises(TaskRejected, match="'a' rejected: a task with this id"):
        await Ensemble([t("a"), t("a")], backend=sim(), run_dir=run_dir).run()


async def test_failed_task_is_retried_with_backoff_then_succeeds(run_dir: Path) -> None:
    backend = sim(returncode=lambda task, attempt: 0 if attempt == 3 else 1)
    retry = RetryPolicy(delay=0.01, factor=2.0)
    summary = await Ensemble(
        [t("flaky", retries=2)], backend=backend, retry=retry, run_dir=run_dir
    ).run()
    result = summary.results["flaky"]
    assert result.state is TaskState.SUCCEEDED and result.attempts == 3
    retries = [
        e
        for e in read_journal(run_dir / "journal.jsonl")
        if isinstance(e, TaskFinished) and e.retry_in is not None
    ]
    assert [e.retry_in for e in retries] == [0.01, 0.02]


async def test_a_retry_backoff_under_simulation_waits_on_the_virtual_clock(run_dir: Path) -> None:
    # Attempts 1 and 2 fail after 1 s each; the backoffs are 30 s and 60 s of virtual time.
    backend = sim(returncode=lambda task, attempt: 0 if attempt == 3 else 1)
    t0 = time.monotonic()
    summary = await Ensemble(
        [t("flaky", retries=2), t("other", est=2.0)],
        backend=backend,
        retry=RetryPolicy(delay=30.0, factor=2.0),
        run_dir=run_dir,
    ).run()
    elapsed = time.monotonic() - t0
    assert summary.results["flaky"].state is TaskState.SUCCEEDED
    assert summary.makespan == pytest.approx(1 + 30 + 1 + 60 + 1)  # the backoffs count
    assert summary.results["flaky"].start_time == pytest.approx(1 + 30 + 1 + 60)
    assert elapsed < 15.0  # far below the 90 s the backoffs would take on a wall clock


async def test_retries_are_bounded(run_dir: Path) -> None:
    backend = sim(returncode=lambda task, attempt: 1)
    summary = await Ensemble([t("bad", retries=2)], backend=backend, run_dir=run_dir).run()
    assert summary.results["bad"].attempts == 3
    assert summary.results["bad"].state is TaskState.FAILED


async def test_timeout_in_simulation_is_recorded_as_timed_out(run_dir: Path) -> None:
    summary = await Ensemble(
        [t("slow", est=10.0, timeout=2.0)], backend=sim(), run_dir=run_dir
    ).run()
    assert summary.results["slow"].state is TaskState.TIMED_OUT
    assert summary.makespan == pytest.approx(2.0)


async def test_cancelling_a_queued_task_skips_its_dependents(run_dir: Path) -> None:
    async with Ensemble(
        [t("a", est=5), t("b", after=("a",)), t("c", after=("b",))], backend=sim(), run_dir=run_dir
    ) as ens:
        ens.cancel("b")
    r = ens.summary().results
    assert r["a"].state is TaskState.SUCCEEDED
    assert r["b"].state is TaskState.CANCELLED
    assert r["c"].state is TaskState.SKIPPED


async def test_cancel_of_a_running_task_is_not_retried(run_dir: Path) -> None:
    async with Ensemble([t("a", est=100, retries=3)], backend=sim(), run_dir=run_dir) as ens:
        async for _ in _started(ens, "a"):
            ens.cancel("a")
    assert ens.summary().results["a"].state is TaskState.CANCELLED
    assert ens.summary().results["a"].attempts == 1


async def _started(ens: Ensemble, task_id: str):  # type: ignore[no-untyped-def]
    """Yield once, when the task is running (the producer has run)."""
    while ens.state(task_id) is not TaskState.RUNNING:
        await _yield()
    yield


async def _yield() -> None:
    import anyio

    await anyio.lowlevel.checkpoint()


async def test_steering_loop_submits_new_tasks_from_results(run_dir: Path) -> None:
    seen: list[str] = []
    async with Ensemble(backend=sim(2), run_dir=run_dir) as ens:
        ens.submit(t("gen0"))
        async for result in ens.completed():
            seen.append(result.id)
            generation = int(result.id.removeprefix("gen"))
            if generation < 5:
                ens.submit([t(f"gen{generation + 1}")])
    assert seen == [f"gen{i}" for i in range(6)]
    assert ens.summary().counts["succeeded"] == 6


async def test_a_user_strategy_adds_tasks_from_results_through_the_public_api(
    run_dir: Path,
) -> None:
    class Refine(CompletionPolicy):
        """Each success below depth 3 spawns two children (a binary tree of 15 tasks)."""

        def on_result(self, result: TaskResult, ensemble: EnsembleControl) -> None:
            if result.ok and result.id.count("x") < 3:
                ensemble.submit([t(result.id + "x0"), t(result.id + "x1")])

    summary = await Ensemble([t("root")], backend=sim(), completion=Refine(), run_dir=run_dir).run()
    assert summary.counts["succeeded"] == 15


async def test_an_error_in_a_user_strategy_stops_the_run_and_is_raised(run_dir: Path) -> None:
    class Broken(CompletionPolicy):
        def on_result(self, result: TaskResult, ensemble: EnsembleControl) -> None:
            raise RuntimeError("boom in strategy")

    tasks = [t(f"a{i}", est=float(i)) for i in range(5)]
    with pytest.raises(RuntimeError, match="boom in strategy"):
        await Ensemble(tasks, backend=sim(1), completion=Broken(), run_dir=run_dir).run()
    events = list(read_journal(run_dir / "journal.jsonl"))
    finals = {e.result.id: e.result.state for e in events if isinstance(e, TaskFinished)}
    assert len(finals) == 5 and TaskState.CANCELLED in finals.values()
    assert read_status(run_dir).phase == "error"


async def test_priority_order_and_reprioritise(run_dir: Path) -> None:
    tasks = [t(f"p{i}", priority=i) for i in range(5)]
    checker = InvariantChecker(1, 0)
    async with Ensemble(
        tasks, backend=sim(1), strategy=Priority(), run_dir=run_dir, observers=[checker]
    ) as ens:
        ens.reprioritise("p0", 100)
    assert checker.started == ["p0", "p4", "p3", "p2", "p1"]


async def test_longest_first_shortens_the_makespan() -> None:
    durations = [1.0] * 12 + [6.0]
    tasks = [t(f"j{i}", est=d) for i, d in enumerate(durations)]
    fifo = await Ensemble(tasks, backend=sim(3), strategy=FIFO(), run_dir=None).run()
    longest = await Ensemble(tasks, backend=sim(3), strategy=LongestFirst(), run_dir=None).run()
    assert longest.makespan == pytest.approx(6.0)
    assert fifo.makespan == pytest.approx(10.0)


async def test_waves_wait_for_the_whole_batch_and_adaptive_does_not(run_dir: Path) -> None:
    durations = [1.0, 4.0] * 4
    tasks = [t(f"w{i}", est=d) for i, d in enumerate(durations)]
    adaptive = await Ensemble(tasks, backend=sim(2), run_dir=run_dir / "a").run()
    waves = await Ensemble(tasks, backend=sim(2), completion=Waves(), run_dir=run_dir / "w").run()
    assert waves.makespan == pytest.approx(16.0)
    assert adaptive.makespan < waves.makespan


async def test_backfill_uses_idle_cores_without_delaying_a_large_head_task(run_dir: Path) -> None:
    # 4 cores. A long 2-core task runs; the 4-core head must wait for it; 1-core tasks that end
    # before the head's reserved start may fill the 2 idle cores, longer ones may not.
    wide = Resources(ranks=4)
    tasks = [
        t("long", est=10.0, resources=Resources(ranks=2)),
        t("head", est=1.0, resources=wide),
        t("short1", est=5.0),
        t("short2", est=10.0),
        t("too-long", est=50.0),
    ]
    checker = InvariantChecker(4, 0)
    summary = await Ensemble(tasks, backend=sim(4), run_dir=run_dir, observers=[checker]).run()
    r = summary.results
    assert r["short1"].start_time == 0.0 and r["short2"].start_time == 0.0
    assert r["head"].start_time == pytest.approx(10.0)
    assert r["too-long"].start_time == pytest.approx(11.0)


async def test_strict_fifo_blocks_behind_a_head_that_does_not_fit(run_dir: Path) -> None:
    tasks = [
        t("long", est=10.0, resources=Resources(ranks=2)),
        t("head", est=1.0, resources=Resources(ranks=4)),
        t("small", est=1.0),
    ]
    summary = await Ensemble(
        tasks, backend=sim(4), strategy=FIFO(backfill=False), run_dir=run_dir
    ).run()
    assert summary.results["small"].start_time == pytest.approx(11.0)


async def test_multi_node_tasks_get_whole_nodes_or_even_spreads(run_dir: Path) -> None:
    tasks = [
        Task(id="excl", command=("x",), estimate=1, resources=Resources(ranks=2, exclusive=True)),
        Task(id="spread", command=("x",), estimate=1, resources=Resources(ranks=4, nodes=2)),
        Task(id="gpu", command=("x",), estimate=1, resources=Resources(ranks=2, gpus_per_rank=2)),
    ]
    checker = InvariantChecker(8, 4)
    summary = await Ensemble(
        tasks, backend=SimulatedBackend(3, 8, 4), run_dir=run_dir, observers=[checker]
    ).run()
    excl = summary.results["excl"].placement
    assert len(excl) == 1 and len(excl[0].cores) == 8 and len(excl[0].gpus) == 4
    spread = summary.results["spread"].placement
    assert sorted(len(s.cores) for s in spread) == [2, 2]
    assert len({s.node for s in spread}) == 2
    gpu = summary.results["gpu"].placement
    assert sum(len(s.gpus) for s in gpu) == 4


async def test_run_directory_holds_journal_status_and_log(run_dir: Path) -> None:
    summary = await Ensemble([t("a"), t("b", after=("a",))], backend=sim(), run_dir=run_dir).run()
    assert summary.ok
    events = list(read_journal(run_dir / "journal.jsonl"))
    kinds = [type(e).__name__ for e in events]
    assert kinds[0] == "RunStarted" and kinds[-1] == "RunFinished"
    assert kinds.count("TaskStarted") == 2 and kinds.count("TaskFinished") == 2
    status = read_status(run_dir)
    assert status.phase == "finished" and status.counts["succeeded"] == 2
    log_lines = (run_dir / "ensemble.log").read_text().splitlines()
    assert msgspec.json.decode(log_lines[0])["event"] == "run_started"


async def test_two_ensembles_in_one_process_keep_their_logs_apart(tmp_path: Path) -> None:
    import anyio

    async with anyio.create_task_group() as tg:
        tg.start_soon(Ensemble([t("x")], backend=sim(), run_dir=tmp_path / "one", run_id="one").run)
        tg.start_soon(Ensemble([t("y")], backend=sim(), run_dir=tmp_path / "two", run_id="two").run)
    for name in ("one", "two"):
        lines = (tmp_path / name / "ensemble.log").read_text().splitlines()
        assert {msgspec.json.decode(line)["run_id"] for line in lines} == {name}


async def test_leaving_the_block_with_an_error_cancels_running_tasks(run_dir: Path) -> None:
    with pytest.raises(KeyError):
        async with Ensemble([t("a", est=100.0)], backend=sim(), run_dir=run_dir) as ens:
            async for _ in _started(ens, "a"):
                raise KeyError("user bug")
    assert ens.summary().results["a"].state is TaskState.CANCELLED
    assert "KeyError" in (ens.summary().results["a"].reason or "")


async def test_backfill_on_several_nodes_never_takes_the_node_reserved_for_the_head(
    run_dir: Path,
) -> None:
    # Two 4-core nodes. At 1 s each has 2 free cores; the head needs a whole node, which sim0
    # gives at 5 s. A 1-core, 1000 s task fits now, but on sim0 it would take the head's place.
    def task(task_id: str, seconds: float, **kw: object) -> Task:
        return t(task_id, est=seconds, **kw)

    tasks = [
        task("a", 5, resources=Resources(ranks=2)),
        task("b", 1, resources=Resources(ranks=2)),
        task("c", 10, resources=Resources(ranks=2)),
        task("d", 1, resources=Resources(ranks=2)),
        task("head", 1, resources=Resources(ranks=4, nodes=1)),
        task("long", 1000),
    ]
    starts = {}
    for backfill in (False, True):
        summary = await Ensemble(
            tasks,
            backend=SimulatedBackend(2, 4),
            strategy=FIFO(backfill=backfill),
            run_dir=run_dir / str(backfill),
        ).run()
        starts[backfill] = summary.results["head"].start_time
    assert starts[True] == starts[False] == pytest.approx(5.0)


def test_tasks_without_tags_share_one_empty_dict_that_refuses_to_change() -> None:
    plain, other = Task(id="a", command=["true"]), Task(id="b", command=["true"])
    assert plain.tags is other.tags and plain.env is other.env  # one dict for a million tasks
    with pytest.raises(TypeError, match="shared by every task"):
        plain.tags["kind"] = "x"  # would otherwise tag every task at once
    with pytest.raises(TypeError, match="shared by every task"):
        plain.env.update(A="1")
    assert other.tags == {} and other.env == {}
    tagged = msgspec.structs.replace(plain, tags={"kind": "x"})
    assert tagged.tags == {"kind": "x"} and other.tags == {}
    result = TaskResult(id="a", state=TaskState.SUCCEEDED, attempts=1)
    with pytest.raises(TypeError, match="shared by every task"):
        result.times["start"] = 0.0
    decoded = msgspec.json.decode(msgspec.json.encode(plain), type=Task)
    assert decoded == plain and decoded.tags is plain.tags


async def test_a_policy_that_steers_hears_of_a_result_before_its_freed_core_is_refilled(
    run_dir: Path,
) -> None:
    """The default policy ignores results, so the engine refills a freed core before telling
    it; a policy that reacts is told first, and what it submits competes for that core."""

    class Urgent(CompletionPolicy):
        def on_result(self, result: TaskResult, ensemble: EnsembleControl) -> None:
            if result.id == "a0":
                ensemble.submit([t("urgent", priority=10)])

    checker = InvariantChecker(1, 0)
    tasks = [t(f"a{i}") for i in range(3)]
    await Ensemble(
        tasks,
        backend=sim(1),
        strategy=Priority(),
        completion=Urgent(),
        run_dir=run_dir,
        observers=[checker],
    ).run()
    assert checker.started == ["a0", "urgent", "a1", "a2"]


async def test_a_policy_hears_blocked_at_most_once_per_pass_of_the_producer(
    run_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``blocked`` says a pass found nothing more that fits: a pass that starts a 1-core task,
    then reads to the end a 2-core one that cannot fit beside it, tells it once, not once for
    reading to the end and again for what it put back."""
    from matensemble.dispatch import Dispatcher

    passes = 0
    select = Dispatcher.select

    def counted(self: Dispatcher, *args: Any, **kw: Any) -> bool:
        nonlocal passes
        passes += 1
        return select(self, *args, **kw)

    monkeypatch.setattr(Dispatcher, "select", counted)

    class Counting(CompletionPolicy):
        told = 0

        def blocked(self) -> None:
            self.told += 1

    policy = Counting()
    tasks = [t("long", est=10.0), t("wide", resources=Resources(ranks=2))]
    summary = await Ensemble(tasks, backend=sim(2), completion=policy, run_dir=run_dir).run()
    assert summary.counts["succeeded"] == 2
    assert 0 < policy.told <= passes
