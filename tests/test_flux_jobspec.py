"""Jobspecs filled into a per-shape template are exactly what flux-core's own factory makes."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from matensemble import Resources, Task
from matensemble.backends.base import Launch, task_environment
from matensemble.backends.flux_inventory import InventoryMap
from matensemble.backends.flux_jobspec import JobspecBuilder, driver_environment
from matensemble.model import Slot

from flux_instance import flux_python

__all__ = ["flux_python"]

SHAPES = [
    Resources(),
    Resources(ranks=4, cores_per_rank=2, mpi=True),
    Resources(ranks=2, gpus_per_rank=1),
    Resources(ranks=4, nodes=2),
    Resources(ranks=2, exclusive=True),
]


def flux_own_jobspec(launch: Launch, environ: dict[str, str], ranks: str) -> dict[str, Any]:
    """The jobspec as flux-core's ``JobspecV1.from_command`` and its setters make it."""
    from flux.job import JobspecV1

    task, res = launch.task, launch.task.resources
    nodes = res.nodes if res.nodes is not None or not res.exclusive else len(launch.placement)
    environment = task_environment(launch, driver_environment(environ))
    expand: dict[str, str] | None = None
    if res.ranks == 1 and not res.mpi:  # one rank: set, not expanded by the shell
        environment.update(MATENSEMBLE_RANK="0", MATENSEMBLE_NRANKS="1")
    elif not res.mpi:
        expand = {"MATENSEMBLE_RANK": "{{task.rank}}", "MATENSEMBLE_NRANKS": "{{size}}"}
    spec = JobspecV1.from_command(
        list(task.command),
        num_tasks=res.ranks,
        cores_per_task=res.cores_per_rank,
        gpus_per_task=res.gpus_per_rank or None,
        num_nodes=nodes,
        exclusive=res.exclusive,
        duration=task.timeout,
        environment=environment,
        env_expand=expand,
        cwd=os.path.abspath(launch.task_dir),
        name=task.id,
        output=os.path.abspath(launch.stdout),
        error=os.path.abspath(launch.stderr),
    )
    options = {"cpu-affinity": "per-task", "output.mode": "append"}
    if res.gpus_per_rank:
        options["gpu-affinity"] = "per-task"
    for name, value in options.items():
        spec.setattr_shell_option(name, value)
    spec.setattr("system.constraints", {"ranks": [ranks]})
    tag = {"task_id": task.id, "attempt": launch.attempt, "run_id": "r1", "driver": "tok"}
    spec.setattr("user.matensemble", tag)
    return dict(json.loads(spec.dumps()))


def test_each_launch_of_each_shape_gets_the_jobspec_flux_itself_would_build(
    flux_python: None, tmp_path: Path
) -> None:
    from flux.job import JobspecV1

    environ = {"PATH": "/usr/bin:/bin", "HOME": "/home/x", "FLUX_URI": "local:///x"}
    builder = JobspecBuilder(
        JobspecV1, InventoryMap({0: "n0", 1: "n1"}), token="tok", environ=environ
    )
    for i, res in enumerate(SHAPES * 2):  # the second round comes from the templates
        task = Task(id=f"t{i}", command=("echo", f"arg {i}"), resources=res, timeout=i or None)
        placement = (Slot("n0", (0,)), Slot("n1", (1,))) if i % 2 else (Slot("n1", (0, 1)),)
        launch = Launch(task=task, attempt=i, placement=placement, tasks_dir=tmp_path, run_id="r1")
        ranks = "0-1" if i % 2 else "1"
        assert json.loads(builder.build(launch)) == flux_own_jobspec(launch, environ, ranks)
        unconstrained = json.loads(builder.build(launch, constrain=False))
        assert "constraints" not in unconstrained["attributes"]["system"]
