"""Launches to Flux jobspecs (RFC 14/25 version 1), with the settings fixed once at ``open()``.

What a job gets:

- resources from the portable ``Resources``: ``ranks`` tasks of ``cores_per_rank`` cores and
  ``gpus_per_rank`` GPUs, on exactly ``nodes`` nodes when given (also for ``exclusive``, which
  takes whole nodes: as many as the engine's placement has);
- an RFC 31 constraint ``{"ranks": [...]}`` naming the broker ranks of the placement, so Flux
  runs the job where the engine accounted it;
- ``duration`` = the task's timeout (Flux raises a ``timeout`` exception and kills the job);
- the working directory (the task's ``cwd``, else its task directory), and stdout/stderr
  appended to files in the task directory, written by the job shell (never through the KVS);
- job-shell options: per-task CPU affinity, per-task GPU affinity for GPU tasks, the ``pmi``
  flavour for MPI tasks when one is configured, then the user's own options;
- ``attributes.user.matensemble``: task id, attempt, run id and the backend's token, by which
  the job-event journal recognises our jobs;
- the user's extra attributes (``FluxBackend(attributes=...)``, as ``flux submit --setattr``),
  except those the backend sets itself (see ``check_attributes``);
- the environment (see ``driver_environment``) with the task's additions and
  ``MATENSEMBLE_TASK_ID``, ``_ATTEMPT``, ``_RUN_ID``, ``_TASK_DIR``, ``OMP_NUM_THREADS`` (cores
  per rank unless the task sets it) and, for non-MPI tasks, ``MATENSEMBLE_RANK`` and
  ``_NRANKS``, expanded per task by the job shell (as the local backend sets them; a
  single-rank task gets ``0`` and ``1`` in its environment, sparing the shell the expansion).

Flux's ``JobspecV1.from_command`` is called once per task shape (resources, timeout, node
count); each launch fills its own command, environment, directory, name, files, constraint and
tag into a copy of that template and is encoded with msgspec: a fifth of the CPU per job.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from typing import Any

import msgspec

from matensemble.backends.base import Launch, task_environment
from matensemble.backends.flux_inventory import InventoryMap

__all__ = ["JobspecBuilder", "check_attributes", "driver_environment"]

# Variables that describe the driver's own place (its Flux job, its MPI launch, its GPUs) and
# would mislead a task if inherited; the job shell sets the right ones for each job.
_LOCAL_PREFIXES = (
    "FLUX_JOB_",
    "FLUX_TASK_",
    "FLUX_KVS_",
    "FLUX_PMI_",
    "FLUX_TERMINUS_",
    "FLUX_PROXY_",
    "PMI_",
    "PMIX_",
    "OMPI_COMM_WORLD_",
    "MPIR_",
    "HYDRA_",
    "MATENSEMBLE_",
)
_LOCAL_NAMES = frozenset(
    {"FLUX_URI", "FLUX_START_URI", "CUDA_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES"}
    | {"HIP_VISIBLE_DEVICES"}
)
_RANK_TEMPLATES = {"MATENSEMBLE_RANK": "{{task.rank}}", "MATENSEMBLE_NRANKS": "{{size}}"}
_ONE_RANK = {"MATENSEMBLE_RANK": "0", "MATENSEMBLE_NRANKS": "1"}
# Attributes each jobspec gets from the backend (or from an option of its own): the user's
# extra attributes may not name them or anything under them.
_OWNED = (
    "system.environment",
    "system.cwd",
    "system.job",
    "system.shell",
    "system.constraints",
    "system.dependencies",
    "system.duration",
    "system.queue",
    "user.matensemble",
)
_STDOUT = os.sep + "stdout"  # as Launch.stdout and .stderr name them
_STDERR = os.sep + "stderr"


def driver_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The environment jobs inherit: ``environ`` less the driver's own job, MPI and GPU
    variables (``FLUX_JOB_*``, ``FLUX_TASK_*``, ``FLUX_URI``, ``PMI_*``, ``PMIX_*``,
    ``CUDA_VISIBLE_DEVICES``, ... and ``MATENSEMBLE_*`` of an enclosing task).

    ``PATH``, ``PYTHONPATH``, ``LD_LIBRARY_PATH`` and everything else pass unchanged.
    """
    return {
        k: v
        for k, v in environ.items()
        if k not in _LOCAL_NAMES and not k.startswith(_LOCAL_PREFIXES)
    }


def check_attributes(attributes: Mapping[str, Any]) -> dict[str, Any]:
    """Extra jobspec attributes by their full dotted key, as ``flux submit --setattr`` reads
    them: a key not under ``system.`` or ``user.`` is under ``system.``.

    Raises:
        ValueError: a key is empty, or names something the backend sets for each job (the
            environment, working directory, job name, shell options, rank constraint,
            dependencies, duration, queue, or our own tag): use the task's fields or the
            backend's options for those.
    """
    checked: dict[str, Any] = {}
    for key, value in attributes.items():
        if not isinstance(key, str) or not key.strip(". "):
            raise ValueError(f"jobspec attribute key must be a non-empty string: {key!r}")
        full = key.removeprefix("attributes.")
        if not full.startswith(("system.", "user.")):
            full = "system." + full
        owned = [o for o in _OWNED if full == o or full.startswith(o + ".")]
        if owned:
            raise ValueError(
                f"jobspec attribute {key!r} is set by the Flux backend for each job "
                f"({owned[0]}); use the task's fields or the backend's own options"
            )
        checked[full] = value
    return checked


class JobspecBuilder:
    """Builds the jobspec of each launch; everything shared is computed once, here."""

    def __init__(
        self,
        jobspec_class: Any,
        inventory: InventoryMap,
        *,
        token: str,
        environ: Mapping[str, str],
        pmi: str | None = None,
        queue: str | None = None,
        shell_options: Mapping[str, Any] | None = None,
        attributes: Mapping[str, Any] | None = None,
    ) -> None:
        self._from_command = jobspec_class.from_command
        self._inventory = inventory
        self._token = token
        self._base_env = driver_environment(environ)
        self._driver_path = environ.get("PATH", os.defpath)
        self._pmi = pmi
        self._queue = queue
        self._shell_options = dict(shell_options or {})
        self._attributes = check_attributes(attributes or {})
        self._templates: dict[tuple[Any, ...], dict[str, Any]] = {}
        self._encode = msgspec.json.Encoder().encode

    def build(
        self,
        launch: Launch,
        *,
        constrain: bool = True,
        task_dir: str | None = None,
        after: int | None = None,
    ) -> str:
        """The jobspec of ``launch`` as JSON (without the rank constraint if not ``constrain``:
        a launch whose partition is gone runs wherever another partition has room).
        ``task_dir``: the launch's directory as an absolute path, if the caller has it.
        ``after``: a job id the job depends on (``afterany``: it waits until that job is
        inactive).

        Raises:
            ValueError: the task's ``cwd`` is not a directory, or Flux's jobspec factory
                refuses the resources.
        """
        task, res = launch.task, launch.task.resources
        if task_dir is None:
            task_dir = os.path.abspath(launch.task_dir)
        env = task_environment(launch, self._base_env, task_dir)
        if res.ranks == 1 and not res.mpi:
            env.update(_ONE_RANK)  # the same as the shell would expand, without its work
        command = list(task.command)
        if "PATH" not in env and os.sep not in command[0]:
            # As in the local backend: without PATH, look the program up on the driver's.
            command[0] = shutil.which(command[0], path=self._driver_path) or command[0]
        cwd = task_dir
        if task.cwd:
            cwd = os.path.abspath(task.cwd)
            if not os.path.isdir(cwd):
                raise ValueError(f"working directory {task.cwd!r} does not exist")
        nodes = res.nodes
        if nodes is None and res.exclusive:
            nodes = len(launch.placement)
        key = (res, task.timeout, nodes)
        template = self._templates.get(key)
        if template is None:
            template = self._templates[key] = self._template(res, task.timeout, nodes)
        system = dict(template["attributes"]["system"])
        system["environment"] = env
        system["cwd"] = cwd
        system["job"] = {**system["job"], "name": task.id}
        options = dict(system["shell"]["options"])
        output = options["output"]
        options["output"] = {
            **output,
            "stdout": {**output["stdout"], "path": task_dir + _STDOUT},
            "stderr": {**output["stderr"], "path": task_dir + _STDERR},
        }
        system["shell"] = {**system["shell"], "options": options}
        if constrain:
            system["constraints"] = {"ranks": [self._inventory.ranks(launch.placement)]}
        if after is not None:
            system["dependencies"] = [{"scheme": "afterany", "value": str(after)}]
        tag = {
            "task_id": task.id,
            "attempt": launch.attempt,
            "run_id": launch.run_id,
            "driver": self._token,
        }
        attributes = template["attributes"]
        user = {**attributes.get("user", {}), "matensemble": tag}
        attributes = {**attributes, "system": system, "user": user}
        spec = {
            **template,
            "tasks": [{**template["tasks"][0], "command": command}],
            "attributes": attributes,
        }
        return self._encode(spec).decode()

    def _template(self, res: Any, timeout: float | None, nodes: int | None) -> dict[str, Any]:
        """Flux's own jobspec for this shape, with placeholders where each launch differs."""
        spec = self._from_command(
            ["true"],
            num_tasks=res.ranks,
            cores_per_task=res.cores_per_rank,
            gpus_per_task=res.gpus_per_rank or None,
            num_nodes=nodes,
            exclusive=res.exclusive,
            duration=timeout,
            environment={},
            env_expand=None if res.mpi or res.ranks == 1 else _RANK_TEMPLATES,
            cwd="/",
            name="task",
            output="/stdout",
            error="/stderr",
            queue=self._queue,
        )
        options: dict[str, Any] = {"cpu-affinity": "per-task", "output.mode": "append"}
        if res.gpus_per_rank:
            options["gpu-affinity"] = "per-task"
        if res.mpi and self._pmi:
            options["pmi"] = self._pmi
        options.update(self._shell_options)
        for name, value in options.items():
            spec.setattr_shell_option(name, value)
        for key, value in self._attributes.items():
            spec.setattr(key, value)
        return dict(spec.jobspec)
