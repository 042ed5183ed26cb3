"""Every Python snippet of docs/functions.md runs as a script, as a user would copy it."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parent.parent / "docs" / "functions.md"
SNIPPETS = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.DOTALL)
TOML = re.findall(r"```toml\n(.*?)```", DOC.read_text(), re.DOTALL)


@pytest.mark.parametrize("snippet", SNIPPETS, ids=[f"snippet-{i}" for i in range(len(SNIPPETS))])
def test_a_python_snippet_of_the_functions_guide_runs(snippet: str, tmp_path: Path) -> None:
    script = tmp_path / "snippet.py"
    script.write_text(snippet)
    runs = 2 if "resume=" in snippet else 1  # the resumable script runs again on its own run
    for _ in range(runs):
        proc = subprocess.run(
            [sys.executable, str(script)],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            timeout=180,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip()


def test_the_first_snippet_prints_values_and_the_remote_error(tmp_path: Path) -> None:
    (tmp_path / "s.py").write_text(SNIPPETS[0])
    proc = subprocess.run(
        [sys.executable, "s.py"], capture_output=True, text=True, cwd=tmp_path, timeout=180
    )
    lines = proc.stdout.splitlines()
    assert lines[0] == "mean energy: 2.3333333333333335"
    assert sorted(lines[1:4]) == ["energy-1 0.5", "energy-2 2.0", "energy-3 4.5"]
    assert lines[4] == "ZeroDivisionError division by zero"


def test_the_ensemble_file_snippet_runs(tmp_path: Path) -> None:
    (tmp_path / "physics.py").write_text("def energy(T, scale=1.0):\n    return scale * T * T\n")
    (tmp_path / "ensemble.toml").write_text(TOML[0])
    proc = subprocess.run(
        [sys.executable, "-m", "matensemble", "run", "ensemble.toml", "--run-dir", "run"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=180,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "run/tasks/energy-3.0/result.json").read_text() == "18.0"


def test_the_readme_function_snippet_prints_the_sum_of_squares(tmp_path: Path) -> None:
    readme = (DOC.parent.parent / "README.md").read_text()
    section = readme.split("### Python functions as tasks", 1)[1]
    snippet = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert snippet is not None
    (tmp_path / "s.py").write_text(snippet.group(1))
    proc = subprocess.run(
        [sys.executable, "s.py"], capture_output=True, text=True, cwd=tmp_path, timeout=180
    )
    assert proc.stdout.strip() == "14", proc.stderr


def test_the_warm_worker_snippet_reports_one_worker(tmp_path: Path) -> None:
    snippet = next(s for s in SNIPPETS if "WarmLocalBackend" in s)
    (tmp_path / "s.py").write_text(snippet)
    proc = subprocess.run(
        [sys.executable, "s.py"], capture_output=True, text=True, cwd=tmp_path, timeout=180
    )
    assert proc.stdout.strip() == "1 warm worker served 5 calls; 1 started", proc.stderr
