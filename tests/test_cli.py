"""The ``matensemble`` command, run as a user would: a real process, real files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import matensemble

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_run_executes_the_file_prints_a_summary_and_exits_zero(tmp_path: Path) -> None:
    spec = write(
        tmp_path / "e.toml",
        """
[[sweep]]
id = "sq-{n}"
command = ["sh", "-c", "echo $(({n} * {n}))"]
parameters = { n = [1, 2, 3] }

[[task]]
id = "sum"
after = ["sq-*"]
command = ["sh", "-c", "s=0; for f in ../sq-*/stdout; do s=$((s + $(cat $f))); done; echo $s"]
""",
    )
    proc = matensemble("run", spec, "--run-dir", tmp_path / "run", "--no-progress", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "succeeded" in proc.stdout
    assert "makespan" in proc.stdout
    run = tmp_path / "run"
    assert (run / "tasks" / "sq-3" / "stdout").read_text() == "9\n"
    assert (run / "tasks" / "sum" / "stdout").read_text() == "14\n"  # sh only: no bc needed
    assert f"sum's output: {run}/tasks/sum/stdout" in proc.stdout  # the final task's output
    status = json.loads((run / "status.json").read_text())
    assert status["counts"]["succeeded"] == 4
    assert status["phase"] == "finished"


def test_quickstart_example_runs_end_to_end(tmp_path: Path) -> None:
    proc = matensemble(
        "run", EXAMPLES / "quickstart" / "ensemble.toml", "--run-dir", tmp_path / "qs", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = (tmp_path / "qs" / "tasks" / "report" / "stdout").read_text()
    assert "Onsager" in report
    assert "38/38" in proc.stderr  # the progress bar reached the end


def test_failed_tasks_make_the_exit_code_non_zero_and_are_listed(tmp_path: Path) -> None:
    spec = write(
        tmp_path / "e.toml",
        """
[[task]]
id = "good"
command = ["true"]
[[task]]
id = "broken"
command = ["sh", "-c", "exit 3"]
[[task]]
id = "after-broken"
command = ["true"]
after = ["broken"]
""",
    )
    proc = matensemble("run", spec, "--run-dir", tmp_path / "run", "--no-progress", cwd=tmp_path)
    assert proc.returncode == 1
    assert "broken" in proc.stdout
    assert "exited with code 3" in proc.stdout
    assert "prerequisite 'broken' failed" in proc.stdout


def test_an_invalid_file_is_reported_clearly_and_nothing_starts(tmp_path: Path) -> None:
    spec = write(tmp_path / "bad.toml", '[[task]]\nid = "a"\ncommand = ["true"]\ntimout = 5\n')
    proc = matensemble("run", spec, "--run-dir", tmp_path / "run", cwd=tmp_path)
    assert proc.returncode == 2
    assert "bad.toml" in proc.stderr
    assert "timout" in proc.stderr
    assert "did you mean 'timeout'" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "run").exists()


def test_a_task_larger_than_the_machine_is_rejected_before_anything_runs(tmp_path: Path) -> None:
    spec = write(
        tmp_path / "big.toml",
        '[[task]]\nid = "ok"\ncommand = ["true"]\n'
        '[[task]]\nid = "huge"\ncommand = ["true"]\nresources = { ranks = 4096 }\n',
    )
    proc = matensemble("run", spec, "--run-dir", tmp_path / "run", cwd=tmp_path)
    assert proc.returncode == 2
    assert "'huge' rejected" in proc.stderr
    assert not (tmp_path / "run" / "tasks").exists()


def test_status_shows_a_run_and_its_failures(tmp_path: Path) -> None:
    spec = write(tmp_path / "e.toml", '[[task]]\nid = "x"\ncommand = ["sh", "-c", "exit 2"]\n')
    matensemble("run", spec, "--run-dir", tmp_path / "run", "--no-progress", cwd=tmp_path)
    proc = matensemble("status", tmp_path / "run", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "finished" in proc.stdout
    assert "x: failed (exited with code 2)" in proc.stdout
    raw = matensemble("status", tmp_path / "run", "--json", cwd=tmp_path)
    assert json.loads(raw.stdout)["counts"]["failed"] == 1


def test_status_of_a_directory_that_is_no_run_says_so(tmp_path: Path) -> None:
    proc = matensemble("status", tmp_path, cwd=tmp_path)
    assert proc.returncode == 2
    assert "no status.json" in proc.stderr


def test_status_works_from_another_shell_while_the_run_is_going(tmp_path: Path) -> None:
    spec = write(
        tmp_path / "e.toml",
        '[[task]]\nid = "first"\ncommand = ["true"]\n'
        '[[task]]\nid = "wait"\n'
        'command = ["sh", "-c", "until [ -e ../../../go ]; do sleep 0.05; done"]\n'
        'after = ["first"]\n',
    )
    run = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "matensemble",
            "run",
            str(spec),
            "--run-dir",
            "run",
            "--no-progress",
        ],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        status_file = tmp_path / "run" / "status.json"

        def running() -> int:
            if not status_file.exists():
                return 0
            return int(json.loads(status_file.read_text())["counts"]["running"])

        # status.json is rewritten at most once a second; wait (test side) until it shows the
        # running task, then ask the CLI from "another shell".
        for _ in range(100):
            if running() == 1:
                break
            subprocess.run(["sleep", "0.1"], check=True)
        proc = matensemble("status", tmp_path / "run", cwd=tmp_path)
        assert proc.returncode == 0
        assert "on local: running" in proc.stdout
        assert running() == 1
        assert json.loads(status_file.read_text())["phase"] == "running"
    finally:
        (tmp_path / "go").touch()
        assert run.wait(timeout=60) == 0


@pytest.mark.parametrize("option", [["--strategy", "longest-first"], ["--completion", "waves"]])
def test_strategy_options_are_accepted(tmp_path: Path, option: list[str]) -> None:
    spec = write(tmp_path / "e.toml", '[[task]]\nid = "a"\ncommand = ["true"]\nestimate = 1\n')
    proc = matensemble(
        "run", spec, "--no-progress", "--run-dir", tmp_path / "r", *option, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr


def test_status_tells_the_tasks_queued_ahead_from_those_that_started(tmp_path: Path) -> None:
    """With --queue-ahead, two cores run two tasks and hold the next two booked behind them:
    status.json counts all four as running and says two of them have not started."""
    wait = (
        'until [ -e ../../../go ]; do sleep 0.05; done; echo "$MATENSEMBLE_TASK_ID" >> ../../../ran'
    )
    spec = write(
        tmp_path / "e.toml",
        '[[sweep]]\nid = "t{i}"\nparameters = { i = { start = 0, stop = 4 } }\n'
        f'command = ["sh", "-c", \'{wait}\']\n',
    )
    args = ["run", str(spec), "--run-dir", "run", "--no-progress", "--cores", "2"]
    run = subprocess.Popen(
        [sys.executable, "-m", "matensemble", *args, "--queue-ahead"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        status_file = tmp_path / "run" / "status.json"

        def status() -> dict[str, object]:
            return dict(json.loads(status_file.read_text())) if status_file.exists() else {}

        for _ in range(100):  # rewritten at most once a second
            if status().get("queued_ahead") == 2:
                break
            subprocess.run(["sleep", "0.1"], check=True)
        seen = status()
        assert seen["counts"]["running"] == 4 and seen["queued_ahead"] == 2, seen  # type: ignore[index]
        proc = matensemble("status", tmp_path / "run", cwd=tmp_path)
        assert "4 (2 queued ahead, not started)" in proc.stdout, proc.stdout
        assert not (tmp_path / "ran").exists()  # none has got past its wait
    finally:
        (tmp_path / "go").touch()
        assert run.wait(timeout=60) == 0, run.stderr.read() if run.stderr else ""
    assert sorted((tmp_path / "ran").read_text().split()) == ["t0", "t1", "t2", "t3"]
