"""The Apptainer recipes: they parse, copy only files that exist, and their runscript starts Flux.

The real image build (bootstrap, %post with flux-core and Fluxion from source, %test) takes
half an hour and root: it is `nox -s containers`, outside this suite.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("spython", reason="the recipe checks parse with spython (the test extra)")

ROOT = Path(__file__).resolve().parent.parent
CHECKER = ROOT / "apptainer" / "test_build.py"
RUNSCRIPT = ROOT / "apptainer" / "run-in-flux.sh"


def check(*recipes: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(CHECKER), "check", *map(str, recipes)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_every_recipe_parses_and_copies_only_files_that_exist() -> None:
    proc = check()
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok: baseline.def, frontier.def, perlmutter.def"


def recipe(tmp_path: Path, *, files: str, post: str) -> Path:
    text = (ROOT / "apptainer" / "baseline.def").read_text()
    head, rest = text.split("%files\n", 1)
    rest = rest.split("%post\n", 1)[1].split("%environment\n", 1)[1]
    path = tmp_path / "broken.def"
    path.write_text(f"{head}%files\n{files}\n%post\n{post}\n%environment\n{rest}")
    return path


def test_a_recipe_that_copies_a_missing_file_is_refused_naming_recipe_and_file(
    tmp_path: Path,
) -> None:
    proc = check(recipe(tmp_path, files="    no-such-dir /opt/x", post="    true"))
    assert proc.returncode == 1
    assert "broken.def: %files copies 'no-such-dir', which is not in" in proc.stderr


def test_a_recipe_whose_post_is_not_valid_sh_is_refused(tmp_path: Path) -> None:
    proc = check(recipe(tmp_path, files="    LICENSE /opt/x", post="    if true; then echo"))
    assert proc.returncode == 1
    assert "broken.def: %post is not valid sh" in proc.stderr


def test_a_recipe_whose_post_runs_a_script_that_is_not_there_is_refused(tmp_path: Path) -> None:
    proc = check(recipe(tmp_path, files="    LICENSE /opt/x", post="    sh ./build-everything.sh"))
    assert proc.returncode == 1
    assert "%post runs build-everything.sh, which is not in" in proc.stderr


@pytest.fixture
def recording_path(tmp_path: Path) -> Path:
    """A PATH whose `flux` and `matensemble` print the command line they were given."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("flux", "matensemble"):
        tool = bin_dir / name
        tool.write_text(f'#!/bin/sh\necho {name} "$@"\n')
        tool.chmod(0o755)
    return bin_dir


def runscript(bin_dir: Path, *args: str, flux_uri: str | None = None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "FLUX_URI"}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    if flux_uri:
        env["FLUX_URI"] = flux_uri
    proc = subprocess.run(
        ["sh", str(RUNSCRIPT), *args], env=env, capture_output=True, text=True, check=True
    )
    return proc.stdout.strip()


def test_runscript_starts_a_flux_instance_and_runs_the_ensemble_on_the_flux_backend(
    recording_path: Path,
) -> None:
    out = runscript(recording_path, "matensemble", "run", "ensemble.toml")
    assert out == "flux start matensemble run --backend flux ensemble.toml"


def test_runscript_inside_an_instance_runs_the_command_there(recording_path: Path) -> None:
    out = runscript(
        recording_path, "matensemble", "resume", "runs/x", flux_uri="local:///tmp/flux-1/local-0"
    )
    assert out == "matensemble resume --backend flux runs/x"


def test_runscript_keeps_a_backend_the_user_chose(recording_path: Path) -> None:
    out = runscript(recording_path, "matensemble", "run", "--backend=local", "e.toml")
    assert out == "flux start matensemble run --backend=local e.toml"
    out = runscript(recording_path, "matensemble", "status", "runs/x", flux_uri="local:///x")
    assert out == "matensemble status runs/x"
