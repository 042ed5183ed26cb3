"""Nothing lost: resume after a stop or a crash, interruption by signals, the walltime."""

from __future__ import annotations

import os
import random
import select
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from matensemble import Ensemble, LocalBackend, SimulatedBackend, Task, TaskState
from matensemble.errors import JournalError, ResumeMismatch
from matensemble.events import TaskFinished, TaskStarted
from matensemble.journal import JOURNAL_NAME, read_journal, replay

from conftest import dead


def sim_task(task_id: str, duration: float = 1.0, exit: int = 0, **kw: object) -> Task:
    tags = {"sim_duration": str(duration), "sim_exit": str(exit)}
    return Task(id=task_id, command=("sim",), tags=tags, **kw)  # type: ignore[arg-type]


def finals(run_dir: Path) -> dict[str, list[TaskState]]:
    """Every outcome that stands, per task, over all sessions (no interruptions, no skips)."""
    out: dict[str, list[TaskState]] = {}
    for e in read_journal(run_dir / JOURNAL_NAME):
        if (
            isinstance(e, TaskFinished)
            and e.retry_in is None
            and not e.interrupted
            and e.result.state is not TaskState.SKIPPED
        ):
            out.setdefault(e.result.id, []).append(e.result.state)
    return out


def matensemble(*args: str | Path, cwd: Path, **kw: object) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "matensemble", *map(str, args), "--no-progress"],
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        **kw,  # type: ignore[arg-type]
    )


def wait_for_line(path: Path, lines: int, timeout: float = 30.0) -> None:
    """Block (test side) until ``path`` has ``lines`` lines, watching it with inotify-free reads."""
    import time

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if path.exists() and len(path.read_text().splitlines()) >= lines:
            return
        select.select([], [], [], 0.02)
    raise AssertionError(f"{path} never reached {lines} lines")


def wait_for_stderr(driver: subprocess.Popen[bytes], text: bytes, timeout: float = 30.0) -> bytes:
    """Read the driver's standard error until ``text`` appears; return what was read."""
    assert driver.stderr is not None
    fd, seen = driver.stderr.fileno(), b""
    while text not in seen:
        assert select.select([fd], [], [], timeout)[0], f"no {text!r} on stderr: {seen!r}"
        chunk = os.read(fd, 4096)
        assert chunk, f"stderr closed without {text!r}: {seen!r}"
        seen += chunk
    return seen


# -- resume through the API -----------------------------------------------------------------


async def test_resume_after_a_stop_runs_only_what_did_not_succeed(run_dir: Path) -> None:
    tasks = [sim_task(f"a{i}", 1.0) for i in range(4)] + [
        sim_task("b", 1.0, after=("a0",)),
        sim_task("c", 10.0),
        sim_task("d", 1.0, after=("c",)),
    ]
    async with Ensemble(tasks, backend=SimulatedBackend(1, 2), run_dir=run_dir) as ens:
        async for result in ens.completed():
            if result.id == "a1":
                ens.stop("test")
    first = ens.summary()
    assert first.stopped == "interrupted: test"
    done_before = {i for i, r in first.results.items() if r.ok}
    assert done_before and len(done_before) < len(tasks)

    second = await Ensemble(resume=run_dir, backend=SimulatedBackend(1, 2)).run()
    assert second.ok
    assert set(second.results) == {t.id for t in tasks}
    history = finals(run_dir)
    assert all(states == [TaskState.SUCCEEDED] for states in history.values()), history
    started = Counter(
        e.id for e in read_journal(run_dir / JOURNAL_NAME) if isinstance(e, TaskStarted)
    )
    for task_id in done_before:
        assert started[task_id] == 1  # a recorded success is never run again


async def test_resume_keeps_failures_and_user_cancels_and_redecides_skips(run_dir: Path) -> None:
    tasks = [
        sim_task("bad", 1.0, exit=3),
        sim_task("after-bad", after=("bad",)),
        sim_task("slow", 50.0),
        sim_task("after-slow", after=("slow",)),
    ]
    async with Ensemble(tasks, backend=SimulatedBackend(1, 2), run_dir=run_dir) as ens:
        async for result in ens.completed():
            if result.id == "bad":
                ens.stop("test")
    summary = await Ensemble(resume=run_dir, backend=SimulatedBackend(1, 2)).run()
    r = summary.results
    assert r["bad"].state is TaskState.FAILED
    assert r["bad"].attempts == 1  # not run again
    assert r["after-bad"].state is TaskState.SKIPPED
    assert r["slow"].state is TaskState.SUCCEEDED
    assert r["after-slow"].state is TaskState.SUCCEEDED


async def test_resume_with_a_changed_task_is_refused_and_says_what_changed(run_dir: Path) -> None:
    tasks = [sim_task("a"), sim_task("b", 5.0)]
    async with Ensemble(tasks, backend=SimulatedBackend(1, 1), run_dir=run_dir) as ens:
        async for _ in ens.completed():
            ens.stop("test")
    journal_before = (run_dir / JOURNAL_NAME).read_bytes()
    changed = [sim_task("a"), Task(id="b", command=("sim",), timeout=99)]
    with pytest.raises(ResumeMismatch, match=r"'b' \(timeout: None -> 99"):
        await Ensemble(changed, resume=run_dir, backend=SimulatedBackend(1, 1)).run()
    with pytest.raises(ResumeMismatch, match=r"not in the journal: 'new'.*add_new=True"):
        await Ensemble([*tasks, sim_task("new")], resume=run_dir, backend=SimulatedBackend()).run()
    assert (run_dir / JOURNAL_NAME).read_bytes() == journal_before  # nothing recorded changed
    summary = await Ensemble(
        [*tasks, sim_task("new")], resume=run_dir, add_new=True, backend=SimulatedBackend()
    ).run()
    assert summary.ok
    assert set(summary.results) == {"a", "b", "new"}


async def test_a_torn_last_line_is_skipped_reported_and_cut_before_appending(
    run_dir: Path,
) -> None:
    async with Ensemble(
        [sim_task("a"), sim_task("b", 9.0)], backend=SimulatedBackend(1, 1), run_dir=run_dir
    ) as ens:
        async for _ in ens.completed():
            ens.stop("test")
    path = run_dir / JOURNAL_NAME
    with path.open("ab") as f:
        f.write(b'{"type":"task_started","t":1.0,"id":"b","att')  # a crash mid-write
    assert replay(run_dir).torn_line == len(path.read_bytes().splitlines())
    summary = await Ensemble(resume=run_dir, backend=SimulatedBackend(1, 1)).run()
    assert summary.ok
    log = (run_dir / "ensemble.log").read_text()
    assert "journal_torn_line_skipped" in log
    list(read_journal(path))  # every line decodes again


async def test_a_corrupt_journal_is_refused_naming_the_line(run_dir: Path) -> None:
    await Ensemble([sim_task("a")], backend=SimulatedBackend(), run_dir=run_dir).run()
    path = run_dir / JOURNAL_NAME
    lines = path.read_bytes().splitlines(keepends=True)
    lines.insert(2, b"this is not json\n")
    path.write_bytes(b"".join(lines))
    with pytest.raises(JournalError, match=r"journal.jsonl:3: not a journal event"):
        await Ensemble(resume=run_dir, backend=SimulatedBackend()).run()


async def test_a_journal_mixing_two_runs_is_refused(tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    await Ensemble([sim_task("a")], backend=SimulatedBackend(), run_dir=one).run()
    await Ensemble([sim_task("a")], backend=SimulatedBackend(), run_dir=two).run()
    with (one / JOURNAL_NAME).open("ab") as f:
        f.write((two / JOURNAL_NAME).read_bytes())
    with pytest.raises(JournalError, match="mixes runs"):
        await Ensemble(resume=one, backend=SimulatedBackend()).run()


async def test_resume_of_a_directory_without_a_journal_says_so(tmp_path: Path) -> None:
    with pytest.raises(JournalError, match=r"no journal\.jsonl here"):
        await Ensemble(resume=tmp_path, backend=SimulatedBackend()).run()


async def test_retries_continue_across_a_resume(run_dir: Path) -> None:
    # Fails on attempts 1 and 2, succeeds on 3; retries=2. Stop after the first failure.
    def code(task: Task, attempt: int) -> int:
        return 0 if attempt >= 3 else 1

    async with Ensemble(
        [Task(id="flaky", command=("sim",), retries=2), sim_task("long", 100.0)],
        backend=SimulatedBackend(1, 2, returncode=code),
        run_dir=run_dir,
    ) as ens:
        await _until_attempt_failed(run_dir)
        ens.stop("test")
    summary = await Ensemble(resume=run_dir, backend=SimulatedBackend(1, 2, returncode=code)).run()
    assert summary.results["flaky"].state is TaskState.SUCCEEDED
    assert summary.results["flaky"].attempts == 3


async def _until_attempt_failed(run_dir: Path) -> None:
    import anyio

    while not any(
        isinstance(e, TaskFinished) and e.retry_in is not None
        for e in read_journal(run_dir / JOURNAL_NAME)
    ):
        await anyio.lowlevel.checkpoint()


# -- walltime ---------------------------------------------------------------------------------


async def test_walltime_holds_long_tasks_drains_and_resume_finishes(run_dir: Path) -> None:
    quick = [Task(id=f"q{i}", command=("sleep", "0.1"), estimate=0.1) for i in range(4)]
    long = [Task(id="long", command=("sleep", "0.5"), estimate=30.0)]
    summary = await Ensemble(
        [*quick, *long], backend=LocalBackend(), run_dir=run_dir, walltime=3.0
    ).run()
    assert summary.stopped is not None
    assert "walltime" in summary.stopped
    assert all(summary.results[t.id].ok for t in quick)
    assert summary.results["long"].attempts == 0  # never started: it could not finish in time
    assert summary.makespan < 3.0  # drained as soon as nothing could start, not at the deadline
    again = await Ensemble(resume=run_dir, backend=LocalBackend()).run()
    assert again.ok
    assert again.results["long"].attempts == 1


async def test_walltime_cancels_running_tasks_at_the_deadline(run_dir: Path) -> None:
    summary = await Ensemble(
        [Task(id="unknown-length", command=("sleep", "30"))],
        backend=LocalBackend(kill_grace=0.5),
        run_dir=run_dir,
        walltime=0.5,
    ).run()
    assert summary.makespan < 5.0
    assert summary.results["unknown-length"].state is TaskState.CANCELLED
    assert replay(run_dir).finished == {}  # it will run again on resume


# -- signals and crashes, through the CLI -------------------------------------------------------


ENSEMBLE = """
[[sweep]]
id = "t{{i}}"
command = ["sh", "-c", "echo $MATENSEMBLE_TASK_ID $$ >> {side}; [ -e {go} ] || sleep {sleep}"]
parameters = {{ i = {{ start = 0, stop = {n} }} }}
"""


def write_ensemble(tmp_path: Path, n: int, sleep: float) -> Path:
    """``n`` tasks that log ``id pid`` to ``side``, then sleep unless the file ``go`` exists."""
    spec = tmp_path / "e.toml"
    spec.write_text(ENSEMBLE.format(side=tmp_path / "side", go=tmp_path / "go", n=n, sleep=sleep))
    return spec


def test_sigterm_stops_gracefully_kills_every_task_and_resume_completes(tmp_path: Path) -> None:
    spec = write_ensemble(tmp_path, n=6, sleep=30)
    driver = matensemble("run", spec, "--run-dir", "run", "--cores", "2", cwd=tmp_path)
    wait_for_line(tmp_path / "side", 2)
    driver.send_signal(signal.SIGTERM)
    assert driver.wait(timeout=30) == 128 + signal.SIGTERM
    pids = [int(line.split()[1]) for line in (tmp_path / "side").read_text().splitlines()]
    assert len(pids) == 2
    assert all(dead(pid) for pid in pids)
    assert replay(tmp_path / "run").finished == {}  # interrupted, so all of them run again
    (tmp_path / "go").touch()
    resumed = matensemble("resume", "run", cwd=tmp_path)
    assert resumed.wait(timeout=60) == 0
    history = finals(tmp_path / "run")
    assert sorted(history) == [f"t{i}" for i in range(6)]
    assert all(states == [TaskState.SUCCEEDED] for states in history.values())


def test_second_signal_forces_an_exit_that_leaves_a_replayable_journal(tmp_path: Path) -> None:
    spec = write_ensemble(tmp_path, n=4, sleep=30)
    script = tmp_path / "ignore-term.sh"
    script.write_text("trap '' TERM; echo $MATENSEMBLE_TASK_ID $$ >> side; sleep 30 & wait\n")
    spec.write_text(
        '[[task]]\nid = "stubborn"\ncommand = ["sh", "' + str(script) + '"]\ncwd = "."\n'
    )
    driver = matensemble("run", spec, "--run-dir", "run", cwd=tmp_path)
    wait_for_line(tmp_path / "side", 1)
    driver.send_signal(signal.SIGINT)
    # The second only once the first was handled: two sent back to back are one pending
    # signal to the kernel (the driver has not run in between), and the run would stop
    # gracefully, after the grace period.
    said = wait_for_stderr(driver, b"SIGINT: stopping")
    driver.send_signal(signal.SIGINT)
    assert driver.wait(timeout=30) == 128 + signal.SIGINT
    assert driver.stderr is not None
    said += driver.stderr.read()
    assert b"SIGINT: forced exit" in said, said
    pid = int((tmp_path / "side").read_text().split()[1])
    assert dead(pid)  # killed outright, without waiting for a grace period
    past = replay(tmp_path / "run")  # the journal is replayable ...
    assert "stubborn" not in past.finished  # ... and a resume runs the task again


def test_resuming_a_crashed_run_leaves_alone_a_run_of_a_file_of_the_same_name(
    tmp_path: Path,
) -> None:
    """Two runs of ``e.toml`` from two directories, started together (as a job array does):
    the resume of the one whose driver was killed kills that run's leftover task, never the
    other run's. The run id, by which ``resume`` finds leftovers, was the file's name and the
    second the run started: the same for both."""
    from matensemble.cli import new_run_id

    assert new_run_id("e") != new_run_id("e")
    one, two = tmp_path / "one", tmp_path / "two"
    drivers = []
    for where in (one, two):
        where.mkdir()
        spec = write_ensemble(where, n=1, sleep=60)
        # Worker threads: a killed driver's helper processes would take its task with them.
        args = ("run", spec, "--run-dir", "run", "--local-spawners", "threads")
        drivers.append(matensemble(*args, cwd=where))
    crashed, other = drivers
    try:
        for where in (one, two):
            wait_for_line(where / "side", 1)
        crashed.kill()
        crashed.wait(timeout=30)
        leftover = int((one / "side").read_text().split()[1])
        assert not dead(leftover, grace=0.2)  # a killed driver leaves its task running
        (one / "go").touch()
        assert matensemble("resume", "run", cwd=one).wait(timeout=60) == 0
        assert dead(leftover)
        mine = int((two / "side").read_text().split()[1])
        assert not dead(mine, grace=0.5), "the other run's task was killed"
    finally:
        other.send_signal(signal.SIGTERM)
        other.wait(timeout=30)


@pytest.mark.slow
def test_crashes_at_random_moments_lose_nothing_and_rerun_no_recorded_success(
    tmp_path: Path,
) -> None:
    """SIGKILL the driver again and again during 300 real tasks; resume each time."""
    n, rng = 300, random.Random(20261125)
    spec = write_ensemble(tmp_path, n=n, sleep=0.02)
    run = tmp_path / "run"
    hits: Counter[str] = Counter()  # crashes that struck while the task ran
    crashes = 0
    # At most two cores, however many the machine has: 300 tasks of 0.02 s then take seconds
    # per life, so that the kills (0.3-1.5 s into each) strike several times before the end.
    cores = str(min(2, len(os.sched_getaffinity(0))))
    args: list[str | Path] = ["run", spec, "--run-dir", "run", "--cores", cores]
    while True:
        driver = matensemble(*args, cwd=tmp_path)
        if args[0] == "run":  # on a loaded machine, starting Python alone may take a second:
            wait_for_line(run / JOURNAL_NAME, 1)  # crashes count from the run's first record
        try:
            code = driver.wait(timeout=rng.uniform(0.3, 1.5))
        except subprocess.TimeoutExpired:
            driver.kill()
            driver.wait()
            crashes += 1
            past = replay(run)
            hits.update(past.was_running)
            args = ["resume", "run", "--cores", cores]
            continue
        assert code == 0, driver.stderr.read() if driver.stderr else code
        break
    assert crashes >= 3, "the test should crash the driver several times"
    history = finals(run)
    assert len(history) == n
    assert all(states == [TaskState.SUCCEEDED] for states in history.values())
    executions = Counter(line.split()[0] for line in (tmp_path / "side").read_text().splitlines())
    assert set(executions) == {f"t{i}" for i in range(n)}
    for task_id, count in executions.items():
        assert count <= 1 + hits[task_id], (task_id, count, hits[task_id])
    print(f"crash test: {n} tasks, {crashes} crashes, {sum(executions.values()) - n} re-executions")
