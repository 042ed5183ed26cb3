"""Random SIGKILLs of a driver under a real Flux instance: resume adopts, nothing runs twice."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from matensemble.events import TaskFinished, TaskSubmitted
from matensemble.journal import JOURNAL_NAME, read_journal, replay
from matensemble.model import TaskState

from flux_instance import active_jobs, broker_cores, flux_python, running_instance

__all__ = ["flux_python"]

pytestmark = [pytest.mark.flux, pytest.mark.slow]

ENSEMBLE = """
[[sweep]]
id = "t{{i}}"
command = ["sh", "-c", "echo $MATENSEMBLE_TASK_ID $FLUX_JOB_ID >> {side}; {sleep}"]
parameters = {{ i = {{ start = 0, stop = {n} }} }}
"""


@pytest.fixture
def fresh_uri(flux_python: None) -> Iterator[str]:
    """A private instance for this test alone: a few hundred jobs slow an instance down."""
    with running_instance(2) as uri:
        yield uri


def not_succeeded(tmp_path: Path) -> list[tuple[str, str, str | None]]:
    """(id, state, reason) of every final result in the journal that is not a success."""
    return [
        (e.result.id, e.result.state.value, e.result.reason)
        for e in read_journal(tmp_path / "run" / JOURNAL_NAME)
        if isinstance(e, TaskFinished)
        and e.retry_in is None
        and not e.interrupted
        and not e.result.ok
    ]


def sessions(tmp_path: Path) -> int:
    """How many driver lives have put their start on record in the run's journal."""
    path = tmp_path / "run" / JOURNAL_NAME
    return path.read_bytes().count(b'{"type":"run_started"') if path.exists() else 0


def until_on_record(proc: subprocess.Popen[bytes], tmp_path: Path, before: int) -> None:
    """Wait (test side) until the driver ``proc`` has written its start to the journal, or
    has ended."""
    deadline = time.monotonic() + 120
    while sessions(tmp_path) == before and proc.poll() is None:
        assert time.monotonic() < deadline, "the driver never started its run"
        time.sleep(0.02)


def driver(args: list[str], cwd: Path, uri: str, k: int, depend: bool) -> subprocess.Popen[bytes]:
    env = {**os.environ, "FLUX_URI": uri, "PYTHONPATH": os.pathsep.join(sys.path)}
    command = [sys.executable, "-m", "matensemble", *args, "--backend", "flux", "--no-progress"]
    command += ["--flux-partitions", str(k), *(["--queue-ahead-depend"] if depend else [])]
    return subprocess.Popen(
        command, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )


@pytest.mark.parametrize(
    ("k", "depend"),
    [(1, False), (2, False), (1, True)],
    ids=["one-instance", "two-partitions", "queued-ahead-by-dependency"],
)
def test_random_sigkills_under_flux_lose_nothing_and_never_rerun_an_adopted_job(
    fresh_uri: str, tmp_path: Path, k: int, depend: bool
) -> None:
    """300 real Flux jobs; the driver is SIGKILLed up to 20 times at random moments, resumed
    each time (at least 10 kills must strike before the run ends).

    A task that a crash struck while it ran with its job id journaled is adopted and must not
    run again; only one struck before its id reached the journal may run a second time (its
    leftover job is cancelled and the task runs anew). With partitions, a resume takes over
    the child instances the killed driver left and adopts the jobs in them. Queued ahead by
    dependency, every fifth task is four times as long, so that jobs are taken back (and held,
    which a kill may strike) all along.
    """
    n, kills, rng = 300, 20, random.Random(20261128)
    windows = {1: (0.6, 1.8), 2: (1.2, 2.8)}  # a driver with partitions takes longer to start
    # Sleeps long enough that the jobs take at least 40 s however many cores the instance
    # has. Jobs go on running while a driver is dead, so on a loaded machine (slow starts,
    # long restarts) the run may end before the 20th kill; 10 lives are plenty to test.
    sleep = max(0.1, 40 * sum(broker_cores(fresh_uri)) / n)
    script = f"sleep {sleep:.2f}"
    if depend:  # the same total: 4 parts in 5 of a short, 1 in 5 of a long one
        short, long = sleep * 5 / 8, sleep * 5 / 2
        script = f"case $(( {{i}} % 5 )) in 0) sleep {long:.2f};; *) sleep {short:.2f};; esac"
    spec = tmp_path / "e.toml"
    spec.write_text(ENSEMBLE.format(side=tmp_path / "side", n=n, sleep=script))
    side = tmp_path / "side"
    unjournaled: Counter[str] = Counter()  # crashes that struck a task with no job id journaled
    adopted_ids: dict[str, set[str]] = {}  # job ids a resume found running, per task
    args = ["run", str(spec), "--run-dir", "run"]
    crashes = 0
    for _ in range(kills):
        lives = sessions(tmp_path)
        proc = driver(args, tmp_path, fresh_uri, k, depend)
        # Each life's window counts from its start record, not from its exec: starting Python,
        # connecting and (with partitions) starting the child instances take seconds on a
        # loaded machine, and kills that all strike there find no job to adopt.
        until_on_record(proc, tmp_path, lives)
        try:
            code = proc.wait(timeout=rng.uniform(*windows[k]))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            crashes += 1
        else:
            assert code == 0, proc.stderr.read() if proc.stderr else code
            break
        args = ["resume", "run"]
        if not (tmp_path / "run" / "journal.jsonl").exists():
            args = ["run", str(spec), "--run-dir", "run"]  # killed before its first write
            continue
        past = replay(tmp_path / "run")
        for task_id in past.was_running:
            if task_id in past.job_ids:
                adopted_ids.setdefault(task_id, set()).add(past.job_ids[task_id])
            else:
                unjournaled[task_id] += 1
    else:
        proc = driver(args, tmp_path, fresh_uri, k, depend)
        code = proc.wait(timeout=600)
        assert code == 0, (proc.stderr.read() if proc.stderr else b"", not_succeeded(tmp_path))
    assert crashes >= kills // 2, f"the run ended after {crashes} kills; make the tasks longer"
    ends = Counter(
        (e.result.id, e.result.state)
        for e in read_journal(tmp_path / "run" / JOURNAL_NAME)
        if isinstance(e, TaskFinished) and e.retry_in is None and not e.interrupted
    )
    assert ends == {(f"t{i}", TaskState.SUCCEEDED): 1 for i in range(n)}
    runs = [line.split() for line in side.read_text().splitlines()]
    executions = Counter(task_id for task_id, _ in runs)
    assert set(executions) == {f"t{i}" for i in range(n)}
    for task_id, count in executions.items():
        assert count <= 1 + unjournaled[task_id], (task_id, count, unjournaled[task_id])
    assert len(adopted_ids) >= 3, "the crashes should strike jobs that a resume adopts"
    assert not active_jobs(fresh_uri)
    reruns = sum(executions.values()) - n
    adopted = len(adopted_ids)
    moved = sum(len(ids) - 1 for ids in submitted_ids(tmp_path).values())
    print(
        f"flux crashes, k={k}, depend={depend}: {n} tasks, {crashes} kills, {adopted} adopted,"
        f" {reruns} reruns, {moved} more job ids than attempts"
    )
    if depend:
        assert moved >= 1, "jobs should have been taken back"


def submitted_ids(tmp_path: Path) -> dict[tuple[str, int], set[str]]:
    """The job ids journaled for each attempt (a job taken back and moved adds one)."""
    ids: dict[tuple[str, int], set[str]] = {}
    for e in read_journal(tmp_path / "run" / JOURNAL_NAME):
        if isinstance(e, TaskSubmitted):
            ids.setdefault((e.id, e.attempt), set()).add(e.job_id)
    return ids
