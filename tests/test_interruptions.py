"""Invariant 7: whatever stops a run from outside its tasks leaves every unfinished task resumable.

Each test runs a real Python script (the way a user embeds the engine) as a subprocess, stops it
from outside its tasks (an exception in the steering loop, Ctrl-C, cancelling ``run()``, SIGTERM),
then checks that no task process outlived it and that ``matensemble resume`` finishes every task,
the running ones and those that never started.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from matensemble import Ensemble, LocalBackend, SimulatedBackend, Task, TaskState
from matensemble.journal import replay

from conftest import alive, matensemble

SCRIPT = """
import asyncio, os, signal, sys
from pathlib import Path
from matensemble import Ensemble, LocalBackend, Task

run_dir, go, mode = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
# Ctrl-C at a terminal reaches Python's default handler. A non-interactive shell that starts
# pytest in the background (`pytest &` in a script) hands SIGINT down ignored, and os.kill below
# would then do nothing: the script would wait out its 60 s sleeps.
signal.signal(signal.SIGINT, signal.default_int_handler)
# Each slow task sleeps until the file `go` exists: the first session never finishes them.
slow = [
    # The pid file appears whole (renamed into place): a reader never sees it empty.
    Task(
        id=f"slow{i}",
        command=["sh", "-c", f"echo $$ > pid.new; mv pid.new pid; [ -f {go} ] || exec sleep 60"],
    )
    for i in range(4)
]
last = Task(id="last", command=["true"], after=["slow3"])
tasks = [Task(id="quick", command=["true"]), *slow, last]


async def running(*task_ids: str) -> None:
    for task_id in task_ids:  # each started before the stop (the check reads their pids)
        while not (run_dir / "tasks" / task_id / "pid").exists():
            await asyncio.sleep(0.02)  # test script: nothing to wait on


def ensemble() -> Ensemble:
    return Ensemble(tasks, backend=LocalBackend(cores=2, kill_grace=1.0), run_dir=run_dir)


async def steer() -> None:
    async with ensemble() as ens:
        async for result in ens.completed():
            await running("slow0", "slow1")
            if mode == "raise":
                raise RuntimeError("steering gave up")
            os.kill(os.getpid(), signal.SIGINT)  # a real Ctrl-C
            await asyncio.sleep(60)


async def cancel_run() -> None:
    run = asyncio.create_task(ensemble().run())
    await running("slow0", "slow1")
    run.cancel()
    try:
        await run
    except asyncio.CancelledError:
        print("run() cancelled")


async def batch() -> None:
    (run_dir.parent / "script.pid").write_text(str(os.getpid()))
    summary = await ensemble().run()
    print("stopped:", summary.stopped)


asyncio.run({"raise": steer, "interrupt": steer, "cancel": cancel_run, "term": batch}[mode]())
"""


def start_script(tmp_path: Path, mode: str) -> subprocess.Popen[str]:
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    return subprocess.Popen(
        [sys.executable, str(script), str(tmp_path / "run"), str(tmp_path / "go"), mode],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_file(path: Path, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while not path.exists():  # test side: the subprocess gives us nothing else to wait on
        assert time.monotonic() < end, f"{path} never appeared"
        time.sleep(0.02)


def check_resumable_and_resume(tmp_path: Path) -> None:
    """No task process survived; the journal keeps only `quick`; resume runs all the rest."""
    run = tmp_path / "run"
    for task_id in ("slow0", "slow1"):  # both were running when the run was stopped
        pid = int((run / "tasks" / task_id / "pid").read_text())
        assert not alive(pid), f"{task_id} (pid {pid}) outlived its driver"
    past = replay(run)
    assert set(past.finished) == {"quick"}, past.finished
    (tmp_path / "go").touch()
    proc = matensemble("resume", run, "--no-progress", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    after = replay(run)
    assert {i: r.state for i, r in after.finished.items()} == dict.fromkeys(
        ["quick", "slow0", "slow1", "slow2", "slow3", "last"], TaskState.SUCCEEDED
    )
    assert after.finished["slow2"].attempts == 1  # it never started before the resume


def test_a_steering_loop_that_raises_leaves_every_unfinished_task_resumable(
    tmp_path: Path,
) -> None:
    proc = start_script(tmp_path, "raise")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1 and "steering gave up" in err
    check_resumable_and_resume(tmp_path)


def test_ctrl_c_around_asyncio_run_leaves_every_unfinished_task_resumable(
    tmp_path: Path,
) -> None:
    proc = start_script(tmp_path, "interrupt")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0 and "KeyboardInterrupt" in err
    check_resumable_and_resume(tmp_path)


def test_cancelling_the_run_task_leaves_every_unfinished_task_resumable(tmp_path: Path) -> None:
    proc = start_script(tmp_path, "cancel")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0 and "run() cancelled" in out, err
    check_resumable_and_resume(tmp_path)


def test_sigterm_to_a_python_script_stops_its_run_gracefully_and_resumably(
    tmp_path: Path,
) -> None:
    proc = start_script(tmp_path, "term")
    run = tmp_path / "run"
    wait_for_file(run / "tasks" / "slow0" / "pid")
    wait_for_file(run / "tasks" / "slow1" / "pid")
    os.kill(proc.pid, signal.SIGTERM)  # what a batch system sends before the walltime
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err  # not killed by the signal: run() returned
    assert "stopped: interrupted: SIGTERM" in out
    assert "matensemble resume" in err  # the library says how to continue
    check_resumable_and_resume(tmp_path)


async def test_an_explicit_cancel_is_final_on_resume(run_dir: Path) -> None:
    tasks = [Task(id=i, command=("sim",), tags={"sim_duration": "5"}) for i in ("a", "b", "c")]
    with pytest.raises(RuntimeError):
        async with Ensemble(tasks, backend=SimulatedBackend(1, 1), run_dir=run_dir) as ens:
            ens.cancel("b")
            raise RuntimeError("user code stops the run")
    past = replay(run_dir)
    assert set(past.finished) == {"b"}  # a and c are resumable; b was cancelled on purpose
    summary = await Ensemble(backend=SimulatedBackend(1, 1), resume=run_dir).run()
    assert summary.counts["succeeded"] == 2 and summary.results["b"].state is TaskState.CANCELLED


async def test_sigterm_handling_is_installed_only_while_a_run_is_active(run_dir: Path) -> None:
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    seen: dict[str, object] = {}
    async with Ensemble(backend=SimulatedBackend(), run_dir=run_dir / "a"):
        seen["default"] = signal.getsignal(signal.SIGTERM)
    assert seen["default"] is not signal.SIG_DFL
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # given back
    async with Ensemble(backend=SimulatedBackend(), run_dir=run_dir / "b", handle_signals=False):
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # opted out


async def test_an_applications_own_sigterm_handler_is_left_alone(run_dir: Path) -> None:
    def mine(signum: int, frame: object) -> None:
        pass

    previous = signal.signal(signal.SIGTERM, mine)
    try:
        async with Ensemble(backend=SimulatedBackend(), run_dir=run_dir):
            assert signal.getsignal(signal.SIGTERM) is mine
        assert signal.getsignal(signal.SIGTERM) is mine
    finally:
        signal.signal(signal.SIGTERM, previous)


async def test_one_sigterm_stops_every_run_active_in_the_process(tmp_path: Path) -> None:
    def sleeper(task_id: str) -> Task:
        return Task(id=task_id, command=["sleep", "30"])

    t0 = time.monotonic()
    async with Ensemble(
        [sleeper("a")], backend=LocalBackend(cores=1, kill_grace=0.5), run_dir=tmp_path / "one"
    ) as one:
        async with Ensemble(
            [sleeper("b")], backend=LocalBackend(cores=1, kill_grace=0.5), run_dir=tmp_path / "two"
        ) as two:
            os.kill(os.getpid(), signal.SIGTERM)
        assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL  # `one` is still active
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    assert one.summary().stopped == two.summary().stopped == "interrupted: SIGTERM"
    assert time.monotonic() - t0 < 20
