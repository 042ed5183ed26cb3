"""What a first-time user meets: checking a run's result, --version, readable output."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

import matensemble
from matensemble import Ensemble, RunFailed, SimulatedBackend, Task

from conftest import matensemble as cli

REPO = Path(__file__).resolve().parent.parent


def sim_task(task_id: str, exit: int = 0, **kw: object) -> Task:
    tags = {"sim_duration": "1", "sim_exit": str(exit)}
    return Task(id=task_id, command=("sim",), tags=tags, **kw)  # type: ignore[arg-type]


async def test_run_with_check_raises_run_failed_naming_each_task_that_did_not_succeed(
    run_dir: Path,
) -> None:
    tasks = [sim_task("good"), sim_task("bad", exit=3), sim_task("after-bad", after=("bad",))]
    with pytest.raises(RunFailed) as failed:
        await Ensemble(tasks, backend=SimulatedBackend(), run_dir=run_dir).run(check=True)
    message = str(failed.value)
    assert "2 tasks of 3 did not succeed" in message
    assert "bad (failed: exit code 3)" in message
    assert "after-bad (skipped: prerequisite 'bad' failed)" in message
    assert f"{run_dir}/tasks/<task-id>/" in message
    assert failed.value.summary.results["good"].ok


async def test_run_without_check_returns_a_summary_whose_ok_says_whether_all_succeeded(
    run_dir: Path,
) -> None:
    summary = await Ensemble(
        [sim_task("bad", exit=1)], backend=SimulatedBackend(), run_dir=run_dir
    ).run()
    assert not summary.ok
    with pytest.raises(RunFailed, match="1 task of 1 did not succeed: bad"):
        summary.check()
    good = await Ensemble([sim_task("a")], backend=SimulatedBackend(), run_dir=run_dir / "2").run()
    assert good.ok and good.check() is good


def test_version_prints_the_installed_version(tmp_path: Path) -> None:
    proc = cli("--version", cwd=tmp_path)
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"matensemble {matensemble.__version__}"


def test_a_narrow_terminal_never_splits_a_run_id_or_task_id(tmp_path: Path) -> None:
    long_id = "a-task-with-a-rather-long-identifier-that-does-not-fit"
    spec = tmp_path / "e.toml"
    spec.write_text(
        '[ensemble]\nname = "an-ensemble-with-a-long-name"\n'
        f'[[task]]\nid = "{long_id}"\ncommand = ["false"]\n'
    )
    proc = cli(
        "run", spec, "--run-dir", tmp_path / "run", "--no-progress", cwd=tmp_path, columns=30
    )
    assert proc.returncode == 1, proc.stderr
    run_id = next(w for w in proc.stdout.split() if w.startswith("an-ensemble-with-a-long-name-"))
    assert len(run_id) == len("an-ensemble-with-a-long-name-20261128-040000-0a1b2c")
    assert long_id in proc.stdout


def test_one_task_is_counted_in_the_singular(tmp_path: Path) -> None:
    spec = tmp_path / "e.toml"
    spec.write_text('[[task]]\nid = "only"\ncommand = ["true"]\n')
    proc = cli("run", spec, "--run-dir", tmp_path / "run", "--no-progress", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "1 task from" in proc.stderr
    assert "1 tasks" not in proc.stderr + proc.stdout


@pytest.mark.skipif(
    shutil.which("git") is None or not (REPO / ".git").exists(), reason="needs a git checkout"
)
def test_the_docs_sites_build_output_is_ignored_by_git() -> None:
    proc = subprocess.run(["git", "check-ignore", "-q", "site/index.html"], cwd=REPO, check=False)
    assert proc.returncode == 0, "site/ (mkdocs build output) must be in .gitignore"
