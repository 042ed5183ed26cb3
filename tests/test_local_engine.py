"""The engine end to end on the local backend: real processes, real files."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import anyio
import pytest

from matensemble import Ensemble, LocalBackend, Resources, Task, TaskState
from matensemble.events import RunFinished, TaskFinished
from matensemble.journal import read_journal
from matensemble.status import read_status

from conftest import alive

# Each test runs with the worker threads, then with the helper processes, as spawners.
pytestmark = pytest.mark.usefixtures("local_spawners")

PY = sys.executable


def sh(task_id: str, script: str, **kw: object) -> Task:
    return Task(id=task_id, command=("sh", "-c", script), **kw)  # type: ignore[arg-type]


async def test_success_failure_and_missing_executable_each_get_their_state(run_dir: Path) -> None:
    tasks = [
        sh("ok", "echo hello"),
        sh("bad", "echo oops >&2; exit 7"),
        Task(id="missing", command=("no-such-program-xyz",)),
    ]
    summary = await Ensemble(tasks, backend=LocalBackend(), run_dir=run_dir).run()
    r = summary.results
    assert r["ok"].state is TaskState.SUCCEEDED
    assert (run_dir / "tasks" / "ok" / "stdout").read_text() == "hello\n"
    assert r["bad"].state is TaskState.FAILED
    assert r["bad"].returncode == 7
    assert (run_dir / "tasks" / "bad" / "stderr").read_text() == "oops\n"
    assert r["missing"].state is TaskState.FAILED
    assert "no-such-program-xyz" in (r["missing"].reason or "")


async def test_dependents_are_skipped_after_a_real_failure(run_dir: Path) -> None:
    tasks = [sh("a", "exit 1"), sh("b", "touch should-not-exist", after=("a",))]
    summary = await Ensemble(tasks, backend=LocalBackend(), run_dir=run_dir).run()
    assert summary.results["b"].state is TaskState.SKIPPED
    assert not (run_dir / "tasks" / "b").exists()


async def test_timeout_kills_the_process_tree_and_records_timed_out(run_dir: Path) -> None:
    script = "sleep 60 & echo $! > pids; sleep 60 & echo $! >> pids; wait"
    summary = await Ensemble(
        [sh("slow", script, timeout=0.5)], backend=LocalBackend(kill_grace=0.5), run_dir=run_dir
    ).run()
    assert summary.results["slow"].state is TaskState.TIMED_OUT
    pids = [int(p) for p in (run_dir / "tasks" / "slow" / "pids").read_text().split()]
    assert len(pids) == 2
    assert not any(alive(p) for p in pids)


async def test_five_hundred_short_tasks_all_succeed(run_dir: Path) -> None:
    tasks = [Task(id=f"t{i}", command=("true",)) for i in range(500)]
    summary = await Ensemble(tasks, backend=LocalBackend(), run_dir=run_dir).run()
    assert summary.counts["succeeded"] == 500
    assert len(list((run_dir / "tasks").iterdir())) == 500


async def test_tasks_are_pinned_to_distinct_cores_seen_from_inside(run_dir: Path) -> None:
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        pytest.skip("needs two cores")
    script = "grep Cpus_allowed_list /proc/self/status; sleep 0.3"
    tasks = [sh(f"p{i}", script) for i in range(2)]
    summary = await Ensemble(tasks, backend=LocalBackend(cores=2), run_dir=run_dir).run()
    seen = []
    for i in range(2):
        text = (run_dir / "tasks" / f"p{i}" / "stdout").read_text()
        allowed = text.split(":")[1].strip()
        (slot,) = summary.results[f"p{i}"].placement
        assert allowed == str(slot.cores[0])
        seen.append(allowed)
    assert len(set(seen)) == 2  # they ran at the same time, so on different cores


async def test_gpu_ids_from_a_configured_list_reach_each_task(run_dir: Path) -> None:
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two cores: both GPU tasks run at once")
    tasks = [
        sh(f"g{i}", "echo $CUDA_VISIBLE_DEVICES; sleep 0.2", resources=Resources(gpus_per_rank=1))
        for i in range(2)
    ] + [sh("cpu", 'echo "[$CUDA_VISIBLE_DEVICES]"')]
    summary = await Ensemble(
        tasks, backend=LocalBackend(cores=2, gpus=["4", "6"]), run_dir=run_dir
    ).run()
    got = {(run_dir / "tasks" / f"g{i}" / "stdout").read_text().strip() for i in range(2)}
    assert got == {"4", "6"}
    assert (run_dir / "tasks" / "cpu" / "stdout").read_text().strip() == "[]"
    for i in range(2):
        (slot,) = summary.results[f"g{i}"].placement
        assert slot.gpus in (("4",), ("6",))


async def test_cancelling_a_running_task_through_the_engine_kills_it(run_dir: Path) -> None:
    async with Ensemble(
        [sh("long", "echo $$ > pid; exec sleep 60")], backend=LocalBackend(), run_dir=run_dir
    ) as ens:
        pid_file = run_dir / "tasks" / "long" / "pid"
        while not (pid_file.exists() and pid_file.read_text().strip()):  # noqa: ASYNC110
            await anyio.sleep(0.01)  # test side: the child writes its pid (no event to wait on)
        ens.cancel("long")
    assert ens.summary().results["long"].state is TaskState.CANCELLED
    assert not alive(int(pid_file.read_text()))


async def test_cancelling_run_kills_running_tasks_and_records_them(run_dir: Path) -> None:
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two cores: both tasks run when the run is cancelled")
    tasks = [sh(f"s{i}", "echo $$ > pid.new; mv pid.new pid; exec sleep 60") for i in range(2)]
    ensemble = Ensemble(tasks, backend=LocalBackend(cores=2, kill_grace=0.5), run_dir=run_dir)
    pids = [run_dir / "tasks" / f"s{i}" / "pid" for i in range(2)]
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(ensemble.run)
            # Cancelled once both run (a fixed delay is too short where starting a task, or
            # the helper processes that start them, takes long: a loaded or slow machine).
            while not all(path.exists() for path in pids):  # noqa: ASYNC110
                await anyio.sleep(0.01)  # test side: the children write their pids (no event)
            tg.cancel_scope.cancel()
    events = list(read_journal(run_dir / "journal.jsonl"))
    finals = {e.result.id: e.result.state for e in events if isinstance(e, TaskFinished)}
    assert finals == {"s0": TaskState.CANCELLED, "s1": TaskState.CANCELLED}
    assert isinstance(events[-1], RunFinished)
    assert events[-1].reason == "cancelled"
    for i in range(2):
        assert not alive(int((run_dir / "tasks" / f"s{i}" / "pid").read_text()))
    assert read_status(run_dir).phase == "cancelled"


async def test_an_idle_engine_uses_no_cpu(run_dir: Path) -> None:
    """Invariant 4: while the only task sleeps, the driver burns (almost) no CPU time."""
    async with Ensemble(
        [Task(id="nap", command=("sleep", "1.5"))], backend=LocalBackend(), run_dir=run_dir
    ) as ens:
        await anyio.sleep(0.2)
        cpu0, wall0 = time.process_time(), time.monotonic()
        await ens.wait()
        cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
    assert wall > 1.0
    assert cpu < 0.05 * wall  # a busy or polling loop would use a large share of the wall time


async def test_steering_loop_bisects_with_real_processes(run_dir: Path) -> None:
    """Find the smallest n with n*n > 2000 by bisection, one real process per probe."""
    lo, hi = 0, 100

    def probe(n: int) -> Task:
        return Task(id=f"probe-{n}", command=(PY, "-c", f"import sys; sys.exit({n}*{n} <= 2000)"))

    async with Ensemble(backend=LocalBackend(cores=1), run_dir=run_dir) as ens:
        ens.submit(probe((lo + hi) // 2))
        async for result in ens.completed():
            n = int(result.id.split("-")[1])
            if result.ok:
                hi = n
            else:
                lo = n
            if hi - lo > 1:
                ens.submit(probe((lo + hi) // 2))
    assert hi == 45
    assert ens.summary().counts["succeeded"] + ens.summary().counts["failed"] >= 6


async def test_python_tasks_with_environment_and_cwd(run_dir: Path, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    task = Task(
        id="env",
        command=(PY, "-c", "import os; open('out.txt','w').write(os.environ['GREETING'])"),
        env={"GREETING": "bonjour"},
        cwd=str(work),
    )
    summary = await Ensemble([task], backend=LocalBackend(), run_dir=run_dir).run()
    assert summary.ok
    assert (work / "out.txt").read_text() == "bonjour"


async def test_an_mpi_task_whose_program_is_missing_names_the_program(run_dir: Path) -> None:
    task = Task(
        id="mpi-missing",
        command=("no-such-solver-xyz", "-in", "x"),
        resources=Resources(ranks=1, mpi=True),
    )
    summary = await Ensemble([task], backend=LocalBackend(mpiexec="true"), run_dir=run_dir).run()
    result = summary.results["mpi-missing"]
    assert result.state is TaskState.FAILED
    assert "executable not found: 'no-such-solver-xyz'" in (result.reason or "")


async def test_with_gpus_set_to_zero_tasks_see_no_gpu_of_the_driver(run_dir: Path) -> None:
    task = sh("cpu-only", 'echo "[$CUDA_VISIBLE_DEVICES]"', env={})
    old = os.environ.get("CUDA_VISIBLE_DEVICES")
    os.environ["CUDA_VISIBLE_DEVICES"] = "0,1"
    try:
        await Ensemble([task], backend=LocalBackend(gpus=0), run_dir=run_dir).run()
    finally:
        if old is None:
            del os.environ["CUDA_VISIBLE_DEVICES"]
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = old
    assert (run_dir / "tasks" / "cpu-only" / "stdout").read_text() == "[]\n"


async def test_each_end_reaches_the_journal_in_one_write_with_the_start_that_refills_its_core(
    run_dir: Path,
) -> None:
    """On one core without queueing ahead every end frees the slot for the next task: the end
    and that start are handed to the OS together (one journal write per end, not one for
    each), the end first."""
    n = 20
    tasks = [Task(id=f"t{i}", command=("true",)) for i in range(n)]
    backend = LocalBackend(cores=1, queue_ahead=False)
    ensemble = Ensemble(tasks, backend=backend, run_dir=run_dir)
    async with ensemble:
        journal = ensemble._journal
        assert journal is not None
        await ensemble.wait()
    assert journal.writes <= n + 3  # the start-up, the first start, one per end, the close
    order = [
        (type(e).__name__, e.result.id if isinstance(e, TaskFinished) else getattr(e, "id", None))
        for e in read_journal(run_dir / "journal.jsonl")
        if type(e).__name__ in ("TaskStarted", "TaskFinished")
    ]
    expected = [("TaskStarted", "t0")]
    for i in range(1, n):
        expected += [("TaskFinished", f"t{i - 1}"), ("TaskStarted", f"t{i}")]
    assert order == [*expected, ("TaskFinished", f"t{n - 1}")]
