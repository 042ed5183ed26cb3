"""Real runs for the report tests: a small local run with a failing task, simulated tasks."""

from __future__ import annotations

import sys
from pathlib import Path

from matensemble import Resources, Task

from conftest import matensemble

ENSEMBLE = """
[ensemble]
name = "small"

[[sweep]]
id = "ok-{{i}}"
command = ["{python}", "-c", "pass"]
parameters = {{ i = {{ start = 1, stop = 4 }} }}

[[task]]
id = "bad"
command = ["{python}", "-c", "import sys; sys.exit(3)"]
retries = 1
"""


def rgb(colour: str) -> tuple[int, int, int]:
    return (int(colour[1:3], 16), int(colour[3:5], 16), int(colour[5:7], 16))


def pixels_of(png: Path, colour: str) -> int:
    from PIL import Image

    with Image.open(png) as image:
        counts = image.convert("RGB").getcolors(maxcolors=1 << 24)
    return sum(n for n, c in counts if c == rgb(colour))


def finished_local_run(tmp_path: Path) -> Path:
    """A real run on 2 cores: 3 tasks succeed, one fails twice (retried once): 5 attempts."""
    spec = tmp_path / "small.toml"
    spec.write_text(ENSEMBLE.format(python=sys.executable))
    run_dir = tmp_path / "run"
    proc = matensemble("run", spec, "--run-dir", run_dir, "--cores", "2", cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    return run_dir


def sim(task_id: str, duration: float, cores: int = 1, exit: int = 0) -> Task:
    return Task(
        id=task_id,
        command=("sim",),
        resources=Resources(cores_per_rank=cores),
        tags={"sim_duration": str(duration), "sim_exit": str(exit)},
    )
