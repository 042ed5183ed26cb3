"""The command line's options for how a backend launches (``--queue-ahead``, ``--no-queue-ahead``,
``--queue-ahead-depend``, ``--local-spawners``, ``--local-cores-per-helper``) reach the
backend: a real ``matensemble`` process, real tasks, the run's own journal."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from matensemble.events import RunStarted, TaskFinished, TaskStarted
from matensemble.journal import read_journal

from conftest import flux_cli_environment, matensemble, under_flux_cli

# A task that prints the command line of the process that started it.
PARENT = "tr '\\0' ' ' < /proc/$PPID/cmdline"
HELPER = "matensemble.backends.local_helper"  # -m, or -c on Python 3.10


def write_tasks(path: Path, *commands: str, cores: int = 1) -> Path:
    lines = []
    for i, command in enumerate(commands):
        lines += [
            "[[task]]",
            f'id = "t{i}"',
            f"command = ['sh', '-c', {command!r}]",
            f"resources = {{ cores_per_rank = {cores} }}",
        ]
    path.write_text("\n".join(lines) + "\n")
    return path


def order(run_dir: Path) -> list[tuple[str, str]]:
    return [
        ("started", e.id) if isinstance(e, TaskStarted) else ("finished", e.result.id)
        for e in read_journal(run_dir / "journal.jsonl")
        if isinstance(e, TaskStarted | TaskFinished)
    ]


def test_local_spawners_processes_starts_the_tasks_in_a_helper_process(tmp_path: Path) -> None:
    spec = write_tasks(tmp_path / "e.toml", PARENT, PARENT)
    run = tmp_path / "run"
    args = ("--run-dir", run, "--no-progress", "--cores", "1")
    proc = matensemble("run", spec, *args, "--local-spawners", "processes", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    for task in ("t0", "t1"):
        parent = (run / "tasks" / task / "stdout").read_text()
        assert HELPER in parent, parent


two_cores = pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores")
# A task that prints its parent's pid, then the parent's command line.
PARENT_PID = f"echo $PPID; {PARENT}"


def started_by(run_dir: Path, task: str) -> tuple[str, list[str]]:
    """The pid and the command line of the process that started ``task``."""
    pid, cmdline = (run_dir / "tasks" / task / "stdout").read_text().splitlines()
    return pid, cmdline.split()


@two_cores
@pytest.mark.parametrize("command", ["run", "resume"])
def test_local_cores_per_helper_starts_the_tasks_of_both_cores_in_one_helper(
    tmp_path: Path, command: str
) -> None:
    """``resume`` takes the option as ``run`` does; the helper is given the cores of its
    group (its last argument), and both tasks, one per core, are its children."""
    tasks = [PARENT_PID, PARENT_PID]
    if command == "resume":  # both are stopped by the walltime the first time
        tasks = [f"if ! test -f {i}; then touch {i}; exec sleep 60; fi; {PARENT_PID}" for i in "ab"]
    spec = write_tasks(tmp_path / "e.toml", *tasks)
    run = tmp_path / "run"
    common = ("--no-progress", "--cores", "2")
    options = ("--local-cores-per-helper", "2")  # helper processes are the default
    if command == "resume":
        stopped = matensemble(
            "run", spec, "--run-dir", run, *common, "--walltime", "1", cwd=tmp_path
        )
        assert stopped.returncode == 3, stopped.stderr
        proc = matensemble("resume", run, *common, *options, cwd=tmp_path)
    else:
        proc = matensemble("run", spec, "--run-dir", run, *common, *options, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    (pid0, cmdline0), (pid1, _) = started_by(run, "t0"), started_by(run, "t1")
    assert pid0 == pid1, "the two tasks were started by two helpers"
    assert HELPER in " ".join(cmdline0), cmdline0
    cores = sorted(os.sched_getaffinity(0))[:2]
    assert cmdline0[-1] == ",".join(map(str, cores)), cmdline0


@pytest.mark.parametrize("spawners", [None, "threads"])
def test_helpers_start_the_tasks_by_default_and_worker_threads_from_the_driver_itself(
    tmp_path: Path, spawners: str | None
) -> None:
    spec = write_tasks(tmp_path / "e.toml", PARENT)
    run = tmp_path / "run"
    options = ("--local-spawners", spawners) if spawners else ()
    proc = matensemble("run", spec, "--run-dir", run, "--no-progress", *options, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    parent = (run / "tasks" / "t0" / "stdout").read_text()
    if spawners == "threads":
        assert "-m matensemble run" in parent and HELPER not in parent, parent
    else:
        assert HELPER in parent, parent


@pytest.mark.parametrize("spawners", ["threads", "processes"])
def test_queue_ahead_launches_the_next_task_while_the_one_before_runs(
    tmp_path: Path, spawners: str
) -> None:
    spec = write_tasks(tmp_path / "e.toml", "sleep 0.3", "true", "true")
    run = tmp_path / "run"
    args = ("--run-dir", run, "--no-progress", "--cores", "1", "--local-spawners", spawners)
    proc = matensemble("run", spec, *args, "--queue-ahead", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "3" in proc.stdout and "succeeded" in proc.stdout
    seen = order(run)
    # one core: t1 was launched (booked behind t0) before t0 ended
    assert seen.index(("started", "t1")) < seen.index(("finished", "t0")), seen


def test_without_queue_ahead_one_core_runs_one_task_at_a_time(tmp_path: Path) -> None:
    spec = write_tasks(tmp_path / "e.toml", "sleep 0.3", "true")
    run = tmp_path / "run"
    args = ("--run-dir", run, "--no-progress", "--cores", "1", "--no-queue-ahead")
    proc = matensemble("run", spec, *args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    seen = order(run)
    assert seen.index(("finished", "t0")) < seen.index(("started", "t1")), seen


def test_resume_takes_the_launch_options_without_allow_backend_change(tmp_path: Path) -> None:
    """The same backend launching another way is no backend change: the journal keeps the kind
    (``local``), and a run stopped with worker threads resumes with helpers, queued ahead."""
    again = tmp_path / "again"
    first = f"if ! test -f {again}; then touch {again}; exec sleep 60; fi; {PARENT}"
    spec = write_tasks(tmp_path / "e.toml", first, PARENT)
    run = tmp_path / "run"
    common = ("--no-progress", "--cores", "1")
    first = ("--walltime", "1", "--local-spawners", "threads", "--no-queue-ahead")
    stopped = matensemble("run", spec, "--run-dir", run, *common, *first, cwd=tmp_path)
    assert stopped.returncode == 3, stopped.stderr
    options = ("--local-spawners", "processes", "--queue-ahead")
    resumed = matensemble("resume", run, *common, *options, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    for task in ("t0", "t1"):
        assert HELPER in (run / "tasks" / task / "stdout").read_text()
    sessions = [e for e in read_journal(run / "journal.jsonl") if isinstance(e, RunStarted)]
    assert [s.backend for s in sessions] == ["local", "local"]
    seen = order(run)
    last = len(seen) - seen[::-1].index(("started", "t0")) - 1  # the resumed session's start
    assert seen.index(("started", "t1"), last) < seen.index(("finished", "t0"), last), seen


def run_whole_node_tasks_in_flux(
    tmp_path: Path, commands: list[str], *options: str
) -> list[tuple[str, str]]:
    """``matensemble run`` under a real ``flux start`` with ``options``: one task per command,
    each taking every core of the broker; the run's starts and ends in journal order."""
    cores = len(os.sched_getaffinity(0))  # what each broker gets (not the host's count)
    spec = write_tasks(tmp_path / "e.toml", *commands, cores=cores)
    run = tmp_path / "run"
    driver = [sys.executable, "-m", "matensemble", "run", str(spec), "--run-dir", str(run)]
    env = flux_cli_environment()
    assert env is not None
    proc = subprocess.run(
        ["flux", "start", "--test-size=1", *driver, "--no-progress", "--backend", "flux", *options],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return order(run)


@under_flux_cli
@pytest.mark.parametrize("option", ["--queue-ahead", "--queue-ahead-depend"])
def test_flux_queue_ahead_options_book_the_next_job_behind_the_running_one(
    tmp_path: Path, option: str
) -> None:
    """Under a real ``flux start``: each task takes every core, so the next one can only have
    been submitted before the one before it ended by being queued ahead."""
    seen = run_whole_node_tasks_in_flux(tmp_path, ["sleep 0.5", "true", "true"], option)
    assert seen.index(("started", "t1")) < seen.index(("finished", "t0")), seen


@under_flux_cli
@pytest.mark.parametrize(("options", "booked"), [((), True), (("--no-queue-ahead",), False)])
def test_flux_queues_short_tasks_ahead_by_default_and_never_with_no_queue_ahead(
    tmp_path: Path, options: tuple[str, ...], booked: bool
) -> None:
    """Each task takes every core: after the first (short) ones have finished, the default
    books each next task behind the running one; ``--no-queue-ahead`` never does."""
    seen = run_whole_node_tasks_in_flux(tmp_path, ["true"] * 8, *options)
    assert seen.index(("started", "t1")) > seen.index(("finished", "t0")), seen  # first wave
    early = [
        i
        for i in range(2, 8)
        if seen.index(("started", f"t{i}")) < seen.index(("finished", f"t{i - 1}"))
    ]
    assert bool(early) is booked, seen
