"""The Flux backend on a fake large allocation, and the ``attributes`` option that gets there.

flux-core's ``[fake-resources]`` configuration gives a one-broker instance many fake nodes
(forced up, not checked against the host), and the job-exec module's test mode
(``system.exec.test.run_duration``) runs a job without any process: what
``benchmarks/flux_scale.py`` measures. These tests check that the engine's whole Flux path
works there: the inventory of the fake R, placement on its nodes, every outcome.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from matensemble import Ensemble, Resources, Task
from matensemble.backends.base import Launch
from matensemble.backends.flux import FluxBackend
from matensemble.backends.flux_inventory import InventoryMap
from matensemble.backends.flux_jobspec import JobspecBuilder
from matensemble.model import Slot, TaskState

from backend_harness import opened
from flux_instance import flux_python, running_instance

__all__ = ["flux_python"]

pytestmark = pytest.mark.flux

NODES, CORES = 64, 8
TEST_RUN = {"exec.test.run_duration": "0.05s"}  # the job-exec test mode: no process runs


@pytest.fixture(scope="module")
def fake_uri(flux_python: None) -> Iterator[str]:
    """A one-broker instance with NODES fake nodes of CORES cores."""
    conf = [f"fake-resources.nnodes={NODES}", f"fake-resources.cores-per-node={CORES}"]
    with running_instance(1, conf=conf) as uri:
        yield uri


# -- the option ----------------------------------------------------------------------------------


def test_extra_attributes_are_in_every_jobspec_under_system_unless_under_user(
    flux_python: None, tmp_path: Path
) -> None:
    from flux.job import JobspecV1

    builder = JobspecBuilder(
        JobspecV1,
        InventoryMap({0: "n0"}),
        token="tok",
        environ={},
        attributes={**TEST_RUN, "system.bank": "chem", "user.project": {"id": 7}},
    )
    for attempt in (1, 2):  # the second comes from the shape's template
        task = Task(id="t", command=("true",))
        placement = (Slot("n0", (0,)),)
        launch = Launch(
            task=task, attempt=attempt, placement=placement, tasks_dir=tmp_path, run_id="r"
        )
        attributes = json.loads(builder.build(launch))["attributes"]
        assert attributes["system"]["exec"] == {"test": {"run_duration": "0.05s"}}
        assert attributes["system"]["bank"] == "chem"
        assert attributes["system"]["constraints"] == {"ranks": ["0"]}
        assert attributes["user"] == {
            "project": {"id": 7},
            "matensemble": {"task_id": "t", "attempt": attempt, "run_id": "r", "driver": "tok"},
        }


@pytest.mark.parametrize(
    "key",
    [
        "environment",
        "system.cwd",
        "attributes.system.duration",
        "shell.options.cpu-affinity",
        "constraints",
        "dependencies",
        "job.name",
        "queue",
        "user.matensemble.task_id",
        "",
    ],
)
def test_attributes_the_backend_sets_for_each_job_are_refused(key: str) -> None:
    with pytest.raises(ValueError, match=r"set by the Flux backend|non-empty"):
        FluxBackend(attributes={key: 1})


# -- on fake resources ---------------------------------------------------------------------------


async def test_the_inventory_of_a_fake_allocation_is_its_nodes_by_host_name(
    fake_uri: str, tmp_path: Path
) -> None:
    async with opened(FluxBackend(fake_uri), tmp_path) as harness:
        assert [n.name for n in harness.nodes] == [f"fake{i}" for i in range(NODES)]
        assert {n.cores for n in harness.nodes} == {tuple(range(CORES))}


async def test_tasks_of_every_shape_run_in_test_mode_on_the_fake_nodes_the_engine_chose(
    fake_uri: str, tmp_path: Path
) -> None:
    marker = tmp_path / "ran"
    shapes = [
        Resources(),
        Resources(cores_per_rank=4),
        Resources(ranks=1, cores_per_rank=CORES, nodes=1, exclusive=True),
        Resources(ranks=4, cores_per_rank=CORES, nodes=4),
    ]
    tasks = [
        Task(
            id=f"t{i:03d}",
            command=("sh", "-c", f"touch {marker}"),
            resources=shapes[i % len(shapes)],
        )
        for i in range(400)  # more cores than the 512 of the instance
    ]
    backend = FluxBackend(fake_uri, attributes=TEST_RUN)
    with anyio.fail_after(120):
        summary = await Ensemble(tasks, backend=backend, run_dir=tmp_path / "run").run()
    assert summary.counts["succeeded"] == len(tasks)
    assert not marker.exists()  # nothing ran: the job-exec module only pretended
    names = {f"fake{i}" for i in range(NODES)}
    used = set()
    for task in tasks:
        result = summary.results[task.id]
        assert result.state is TaskState.SUCCEEDED
        res = task.resources
        assert len(result.placement) == (res.nodes or 1)
        assert {slot.node for slot in result.placement} <= names
        assert sum(len(slot.cores) for slot in result.placement) == res.ranks * res.cores_per_rank
        used |= {slot.node for slot in result.placement}
    assert len(used) > NODES // 2  # spread over the allocation, not piled on its first node
