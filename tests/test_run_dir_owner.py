"""A run directory has one owner: unique directories, an OS lock, no second run in a run's
directory, no results from another kind of backend, a status that knows a dead driver, and no
task output written through a link.

Everything is real: ``matensemble`` driver processes (two at once where it matters), their
tasks, SIGKILL, symbolic links and files in a temporary directory.
"""

from __future__ import annotations

import math
import os
import select
import signal
import socket
import time
from pathlib import Path

import anyio
import pytest

from matensemble import Ensemble, LocalBackend, SimulatedBackend, Task, TaskState
from matensemble.backends import local as local_backend
from matensemble.backends.task_files import open_task_outputs, prepare_task_outputs
from matensemble.errors import RunDirectoryTaken, UnsafeTaskPath
from matensemble.events import RunStarted, TaskFinished
from matensemble.journal import JOURNAL_NAME, read_journal, replay
from matensemble.rundir import OWNER_NAME, create_unique_run_dir, read_owner

from conftest import dead, matensemble, start_matensemble

ENSEMBLE = """
[[sweep]]
id = "t{{i}}"
command = ["sh", "-c", "echo $MATENSEMBLE_TASK_ID $$ >> {side}; [ -e {go} ] || sleep {sleep}"]
parameters = {{ i = {{ start = 0, stop = {n} }} }}
"""


def write_ensemble(tmp_path: Path, n: int, sleep: float = 60) -> Path:
    """``n`` tasks that log ``id pid`` to ``side``, then sleep unless the file ``go`` exists."""
    spec = tmp_path / "e.toml"
    spec.write_text(ENSEMBLE.format(side=tmp_path / "side", go=tmp_path / "go", n=n, sleep=sleep))
    return spec


def side_lines(tmp_path: Path, count: int, timeout: float = 60.0) -> list[tuple[str, int]]:
    """Wait (test side) until the tasks logged ``count`` lines; return ``(task id, pid)``s."""
    side = tmp_path / "side"
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        lines = side.read_text().splitlines() if side.exists() else []
        if len(lines) >= count:
            return [(line.split()[0], int(line.split()[1])) for line in lines]
        select.select([], [], [], 0.05)
    raise AssertionError(f"{side} never reached {count} lines")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def finished_states(run_dir: Path) -> dict[str, list[TaskState]]:
    out: dict[str, list[TaskState]] = {}
    for e in read_journal(run_dir / JOURNAL_NAME):
        if isinstance(e, TaskFinished) and e.retry_in is None and not e.interrupted:
            out.setdefault(e.result.id, []).append(e.result.state)
    return out


# -- unique run ids and directories -------------------------------------------------------------


def test_drivers_started_together_from_one_directory_each_get_their_own_run(
    tmp_path: Path,
) -> None:
    """Three real drivers of one file, started at once: run ids come from the second they
    start, so at least two share it; each still gets its own directory and runs each task once."""
    spec = tmp_path / "e.toml"
    spec.write_text('[[task]]\nid = "one"\ncommand = ["sh", "-c", "echo $MATENSEMBLE_RUN_ID"]\n')
    drivers = [start_matensemble("run", spec, cwd=tmp_path) for _ in range(3)]
    for driver in drivers:
        assert driver.wait(timeout=120) == 0, driver.stderr.read() if driver.stderr else ""
    runs = sorted((tmp_path / "runs").iterdir())
    assert len(runs) == 3
    for run in runs:
        started = [e for e in read_journal(run / JOURNAL_NAME) if isinstance(e, RunStarted)]
        assert [e.run_id for e in started] == [run.name]
        assert finished_states(run) == {"one": [TaskState.SUCCEEDED]}
        assert (run / "tasks" / "one" / "stdout").read_text() == run.name + "\n"


async def test_two_ensembles_with_the_same_run_id_at_once_get_distinct_directories(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same id forced on both (as two drivers in the same second get): never one directory."""
    monkeypatch.chdir(tmp_path)
    ensembles = [
        Ensemble([Task(id="a", command=["true"])], backend=LocalBackend(cores=1), run_id="same")
        for _ in range(2)
    ]
    async with anyio.create_task_group() as tg:
        for ens in ensembles:
            tg.start_soon(ens.run)
    assert sorted(e.run_id for e in ensembles) == ["same", "same-2"]
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["same", "same-2"]
    for ens in ensembles:
        assert replay(ens.run_dir).run_id == ens.run_id
        assert finished_states(ens.run_dir) == {"a": [TaskState.SUCCEEDED]}


def test_a_unique_run_directory_never_reuses_an_existing_one(tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep").write_text("mine")
    (tmp_path / "x-2").mkdir()
    made = create_unique_run_dir(tmp_path, "x")
    assert made == tmp_path / "x-3"
    assert list(made.iterdir()) == []
    assert (tmp_path / "x" / "keep").read_text() == "mine"


# -- the lock: one live driver ------------------------------------------------------------------


def test_a_second_driver_on_a_live_run_is_refused_naming_the_owner_and_leaves_its_tasks_alone(
    tmp_path: Path,
) -> None:
    spec = write_ensemble(tmp_path, n=2)
    owner = start_matensemble("run", spec, "--run-dir", "run", "--cores", "2", cwd=tmp_path)
    try:
        pids = [pid for _, pid in side_lines(tmp_path, 2)]
        for second in (
            ["resume", "run"],
            ["run", str(spec), "--run-dir", "run"],
        ):
            proc = matensemble(*second, "--no-progress", cwd=tmp_path)
            assert proc.returncode == 2, proc.stderr
            assert "Traceback" not in proc.stderr
            assert f"driver pid {owner.pid} on host {socket.gethostname()}" in proc.stderr
            assert "in use by" in proc.stderr
            assert all(alive(pid) for pid in pids), "the refused driver killed the owner's tasks"
        record = read_owner(tmp_path / "run")
        assert record is not None and record.pid == owner.pid
        (tmp_path / "go").touch()
        assert owner.wait(timeout=60) == 0, owner.stderr.read() if owner.stderr else ""
    finally:
        owner.kill()
        owner.wait()
    assert finished_states(tmp_path / "run") == {
        "t0": [TaskState.SUCCEEDED],
        "t1": [TaskState.SUCCEEDED],
    }
    assert len((tmp_path / "side").read_text().splitlines()) == 2  # each task ran once


def test_a_second_resume_of_a_crashed_run_is_refused_and_does_not_kill_the_first_ones_tasks(
    tmp_path: Path,
) -> None:
    spec = write_ensemble(tmp_path, n=2)
    crashed = start_matensemble("run", spec, "--run-dir", "run", "--cores", "2", cwd=tmp_path)
    first_pids = [pid for _, pid in side_lines(tmp_path, 2)]
    crashed.kill()
    crashed.wait()
    resumed = start_matensemble("resume", "run", "--cores", "2", cwd=tmp_path)
    try:
        lines = side_lines(tmp_path, 4)  # the resume killed the leftovers and started anew
        assert all(dead(pid, grace=10.0) for pid in first_pids)
        resumed_pids = [pid for _, pid in lines[2:]]
        second = matensemble("resume", "run", "--no-progress", cwd=tmp_path)
        assert second.returncode == 2, second.stderr
        assert f"driver pid {resumed.pid} on host" in second.stderr
        assert all(alive(pid) for pid in resumed_pids), "the refused resume killed tasks"
        (tmp_path / "go").touch()
        assert resumed.wait(timeout=60) == 0, resumed.stderr.read() if resumed.stderr else ""
    finally:
        resumed.kill()
        resumed.wait()
    assert len((tmp_path / "side").read_text().splitlines()) == 4
    assert finished_states(tmp_path / "run") == {
        "t0": [TaskState.SUCCEEDED],
        "t1": [TaskState.SUCCEEDED],
    }


async def test_a_second_ensemble_in_the_same_process_is_refused_while_the_first_runs(
    tmp_path: Path,
) -> None:
    """POSIX locks do not conflict within one process: the registry of held locks does."""
    run_dir = tmp_path / "run"
    gate = tmp_path / "gate"
    task = Task(id="wait", command=["sh", "-c", f"while [ ! -e {gate} ]; do sleep 0.05; done"])
    with anyio.fail_after(60):  # a second owner would wait for the gate forever
        async with Ensemble([task], backend=LocalBackend(cores=1), run_dir=run_dir) as first:
            with pytest.raises(RunDirectoryTaken, match=f"driver pid {os.getpid()}"):
                await Ensemble(resume=run_dir, backend=LocalBackend(cores=1)).run()
            gate.touch()
            await first.wait()
    assert first.state("wait") is TaskState.SUCCEEDED
    summary = await Ensemble(resume=run_dir, backend=LocalBackend(cores=1)).run()  # free again
    assert summary.results["wait"].state is TaskState.SUCCEEDED


# -- a new run never goes into a run's directory ------------------------------------------------


def test_a_new_run_refuses_a_directory_that_holds_a_run_and_points_to_resume(
    tmp_path: Path,
) -> None:
    spec = tmp_path / "e.toml"
    spec.write_text('[[task]]\nid = "one"\ncommand = ["true"]\n')
    first = matensemble("run", spec, "--run-dir", "run", "--no-progress", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    journal = (tmp_path / "run" / JOURNAL_NAME).read_bytes()
    owner = (tmp_path / "run" / OWNER_NAME).read_bytes()
    again = matensemble("run", spec, "--run-dir", "run", "--no-progress", cwd=tmp_path)
    assert again.returncode == 2, again.stderr
    assert "holds a run already" in again.stderr
    assert "matensemble resume run" in again.stderr
    assert (tmp_path / "run" / JOURNAL_NAME).read_bytes() == journal
    assert (tmp_path / "run" / OWNER_NAME).read_bytes() == owner
    assert replay(tmp_path / "run").sessions == 1


# -- the backend kind on resume ------------------------------------------------------------------


def documented_backend_change_commands() -> list[list[str]]:
    """The ``matensemble resume X ...`` lines of docs/nothing-lost.md's backend-change block,
    with ``X`` the run directory ``run`` and the leading ``matensemble`` dropped."""
    page = (Path(__file__).resolve().parent.parent / "docs" / "nothing-lost.md").read_text()
    block = next(b for b in page.split("```sh\n")[1:] if "--allow-backend-change" in b)
    lines = [line.split("#")[0].split() for line in block.split("```")[0].splitlines()]
    commands = [[("run" if w == "X" else w) for w in line[1:]] for line in lines if line]
    assert len(commands) == 3 and all(c[:2] == ["resume", "run"] for c in commands), commands
    return commands


def test_a_resume_on_another_kind_of_backend_is_refused_and_simulated_results_never_count(
    tmp_path: Path,
) -> None:
    spec = write_ensemble(tmp_path, n=2, sleep=60)
    stopped = matensemble(
        "run", spec, "--run-dir", "run", "--cores", "2", "--walltime", "2", cwd=tmp_path
    )
    assert stopped.returncode == 3, stopped.stderr  # the walltime interrupted both tasks
    side_lines(tmp_path, 2)
    journal = (tmp_path / "run" / JOURNAL_NAME).read_bytes()

    # The three commands of docs/nothing-lost.md, as a user would copy them (X = the run).
    refuse_line, allow_line, real_line = documented_backend_change_commands()
    refused = matensemble(*refuse_line, cwd=tmp_path)
    assert refused.returncode == 2, refused.stderr
    assert "recorded on the local backend, not simulated" in refused.stderr
    assert "--allow-backend-change" in refused.stderr
    assert (tmp_path / "run" / JOURNAL_NAME).read_bytes() == journal

    simulated = matensemble(*allow_line, cwd=tmp_path)
    assert simulated.returncode == 0, simulated.stderr
    assert replay(tmp_path / "run").simulated == {"t0", "t1"}
    assert len((tmp_path / "side").read_text().splitlines()) == 2  # nothing really ran

    (tmp_path / "go").touch()
    real = matensemble(*real_line, cwd=tmp_path)
    assert real.returncode == 0, real.stderr
    ran = [task_id for task_id, _ in side_lines(tmp_path, 4)]
    assert sorted(ran[2:]) == ["t0", "t1"]  # the simulated "successes" ran for real
    past = replay(tmp_path / "run")
    assert past.backends == ["local", "simulated", "local"]
    assert past.simulated == frozenset()
    assert {i: r.state for i, r in past.finished.items()} == {
        "t0": TaskState.SUCCEEDED,
        "t1": TaskState.SUCCEEDED,
    }


async def test_the_python_api_refuses_a_backend_change_unless_allowed(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    await Ensemble(
        [Task(id="a", command=["true"])], backend=SimulatedBackend(), run_dir=run_dir
    ).run()
    with pytest.raises(Exception, match="recorded on the simulated backend, not local"):
        await Ensemble(resume=run_dir, backend=LocalBackend(cores=1)).run()
    summary = await Ensemble(
        resume=run_dir, backend=LocalBackend(cores=1), allow_backend_change=True
    ).run()
    assert summary.results["a"].state is TaskState.SUCCEEDED
    assert summary.results["a"].start_time is not None  # a real run, not the simulated result
    assert replay(run_dir).simulated == frozenset()


# -- status: a live driver or a dead one ---------------------------------------------------------


def test_status_tells_a_sigkilled_driver_from_a_live_one(tmp_path: Path) -> None:
    spec = write_ensemble(tmp_path, n=1)
    driver = start_matensemble("run", spec, "--run-dir", "run", cwd=tmp_path)
    try:
        side_lines(tmp_path, 1)
        host = socket.gethostname()
        deadline = time.monotonic() + 30
        while not (tmp_path / "run" / "status.json").exists() and time.monotonic() < deadline:
            select.select([], [], [], 0.05)
        live = matensemble("status", "run", cwd=tmp_path)
        assert live.returncode == 0, live.stderr
        assert f"running (driver pid {driver.pid} on host {host})" in live.stdout
        driver.kill()
        driver.wait()
        dead = matensemble("status", "run", cwd=tmp_path)
        assert dead.returncode == 0, dead.stderr
        assert f"stopped (driver pid {driver.pid} on host {host} is gone" in dead.stdout
        assert "matensemble resume run" in dead.stdout
        assert "running" not in dead.stdout.splitlines()[0]
    finally:
        driver.kill()
        driver.wait()
        (tmp_path / "go").touch()
        for _, pid in side_lines(tmp_path, 1):
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


# -- nothing written through a link -------------------------------------------------------------


@pytest.mark.parametrize("opened_by", ["the loop", "the workers"])
async def test_task_outputs_are_never_written_through_a_symlink(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, opened_by: str
) -> None:
    # Opened in the event loop while that is quick, by the spawner workers once it is slow.
    below = math.inf if opened_by == "the loop" else 0.0
    monkeypatch.setattr(local_backend, "OPEN_INLINE_BELOW", below)
    run_dir = tmp_path / "run"
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (run_dir / "tasks" / "file-link").mkdir(parents=True)
    (run_dir / "tasks" / "dir-link").symlink_to(outside)
    (run_dir / "tasks" / "file-link" / "stdout").symlink_to(victim)
    (run_dir / "tasks" / "hard-link").mkdir()
    os.link(victim, run_dir / "tasks" / "hard-link" / "stderr")
    tasks = [
        Task(id=name, command=["sh", "-c", "echo written; echo oops >&2"])
        for name in ("dir-link", "file-link", "hard-link", "fine")
    ]
    summary = await Ensemble(tasks, backend=LocalBackend(cores=1), run_dir=run_dir).run()
    r = summary.results
    assert r["fine"].state is TaskState.SUCCEEDED
    assert (run_dir / "tasks" / "fine" / "stdout").read_text() == "written\n"
    for name, path, why in (
        ("dir-link", run_dir / "tasks" / "dir-link", "it is a symbolic link"),
        ("file-link", run_dir / "tasks" / "file-link" / "stdout", "it is a symbolic link"),
        ("hard-link", run_dir / "tasks" / "hard-link" / "stderr", "it has 2 hard links"),
    ):
        assert r[name].state is TaskState.FAILED
        assert r[name].reason is not None
        assert r[name].reason.startswith(f"refusing to write {str(path)!r}: {why}"), r[name].reason
    assert list(outside.iterdir()) == []
    assert victim.read_text() == "precious\n"


def test_the_flux_output_files_are_prepared_without_following_links(tmp_path: Path) -> None:
    """Flux's shell opens the output paths itself: they are made ours first, or refused."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    task_dir = tmp_path / "run" / "tasks" / "t"
    prepare_task_outputs(task_dir)
    assert (task_dir / "stdout").read_bytes() == b"" and (task_dir / "stderr").is_file()
    (task_dir / "stderr").unlink()
    (task_dir / "stderr").symlink_to(victim)
    with pytest.raises(UnsafeTaskPath, match=r"stderr'?: it is a symbolic link"):
        prepare_task_outputs(task_dir)
    fifo_dir = tmp_path / "run" / "tasks" / "fifo"
    fifo_dir.mkdir()
    os.mkfifo(fifo_dir / "stdout")
    with pytest.raises(UnsafeTaskPath, match="it is not a regular file"):
        open_task_outputs(fifo_dir)  # refused at once, not blocked on the FIFO
    assert victim.read_text() == "precious\n"
