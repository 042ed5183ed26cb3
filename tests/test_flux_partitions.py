"""Partitions: child Flux instances in a real ``flux start --test-size=4`` instance."""

from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from matensemble import Ensemble, Resources, Task
from matensemble.backends.flux import FluxBackend
from matensemble.backends.flux_inventory import InventoryMap
from matensemble.backends.flux_partitions import NAME, plan_partitions
from matensemble.errors import TaskRejected
from matensemble.events import TaskFinished, TaskWithdrawn
from matensemble.journal import JOURNAL_NAME, read_journal
from matensemble.resources import NodeSpec

from flux_instance import FLUX, active_jobs, broker_cores, flux_python, running_instance

__all__ = ["flux_python"]


@pytest.fixture(scope="module")
def uri4(flux_python: None) -> Iterator[str]:
    """A private four-broker instance for this module."""
    with running_instance(4) as uri:
        yield uri


def partition_jobs(uri: str) -> list[int]:
    """Child instances (partitions) still active in the instance at ``uri``."""
    return [j for i in range(4) for j in active_jobs(uri, f"{NAME}-{i}")]


def wait_for_lines(path: Path, lines: int, timeout: float = 60.0) -> None:
    """Block (in a worker thread) until the tasks have written ``lines`` lines to ``path``."""
    end = time.monotonic() + timeout
    while not (path.exists() and len(path.read_text().splitlines()) >= lines):
        assert time.monotonic() < end, f"{path} never reached {lines} lines"
        select.select([], [], [], 0.05)


def sh(task_id: str, script: str, **kwargs: object) -> Task:
    return Task(id=task_id, command=("sh", "-c", script), **kwargs)  # type: ignore[arg-type]


# -- sizing (no instance needed) -----------------------------------------------------------------


def test_partitions_take_whole_nodes_in_contiguous_groups_when_there_are_enough() -> None:
    nodes = [NodeSpec(f"n{r}", (0, 1, 2, 3), ()) for r in range(5)]
    plans = plan_partitions(nodes, InventoryMap({r: f"n{r}" for r in range(5)}), 2)
    assert [p.ranks for p in plans] == [(0, 1, 2), (3, 4)]
    assert [p.names for p in plans] == [("n0", "n1", "n2"), ("n3", "n4")]
    assert all(p.whole_nodes for p in plans)


def test_partitions_share_a_node_by_cores_when_there_are_fewer_nodes() -> None:
    nodes = [NodeSpec("n0", tuple(range(8)), ("0", "1"))]
    plans = plan_partitions(nodes, InventoryMap({0: "n0"}), 2)
    assert [(p.ranks, p.names, p.cores, p.gpus) for p in plans] == [
        ((0,), ("n0/p0",), 4, 1),
        ((0,), ("n0/p1",), 4, 1),
    ]


def test_more_partitions_than_cores_is_refused_naming_the_node() -> None:
    with pytest.raises(ValueError, match="node n0 has 2 core"):
        plan_partitions([NodeSpec("n0", (0, 1), ())], InventoryMap({0: "n0"}), 3)


def test_partitions_below_one_are_refused() -> None:
    with pytest.raises(ValueError, match="partitions must be an int >= 1"):
        FluxBackend(partitions=0)


# -- against a real instance -----------------------------------------------------------------------


@pytest.mark.flux
@pytest.mark.parametrize("k", [2, 4])
async def test_tasks_spread_over_the_partitions_all_succeed_and_teardown_leaves_nothing(
    uri4: str, tmp_path: Path, k: int
) -> None:
    # Every broker has this machine's cores (2 here, but as many as the runner has).
    whole_node = Resources(cores_per_rank=min(broker_cores(uri4)))
    tasks = [sh(f"t{i}", 'echo "$FLUX_URI"; sleep 0.3', resources=whole_node) for i in range(8)]
    with anyio.fail_after(120):
        summary = await Ensemble(
            tasks, backend=FluxBackend(uri4, partitions=k), run_dir=tmp_path / "run"
        ).run()
    assert summary.counts["succeeded"] == len(tasks)
    partitions = {r.job_id.split("/")[0] for r in summary.results.values() if r.job_id}
    assert len(partitions) == k  # every partition ran some of them
    nodes = {s.node for r in summary.results.values() for s in r.placement}
    assert len(nodes) == 4  # on the enclosing instance's node names
    brokers = {(tmp_path / "run" / "tasks" / t.id / "stdout").read_text() for t in tasks}
    assert len(brokers) == 4  # each task saw its own partition's broker
    assert not active_jobs(uri4)  # no job, and no child instance, is left


@pytest.mark.flux
async def test_queueing_ahead_by_dependency_runs_every_task_in_the_partitions(
    uri4: str, tmp_path: Path
) -> None:
    slots = sum(broker_cores(uri4))  # 8 here
    tasks = [sh(f"t{i:02d}", 'echo "$FLUX_URI"; sleep 0.2') for i in range(3 * slots)]
    backend = FluxBackend(uri4, partitions=2, queue_ahead="depend")
    with anyio.fail_after(120):
        summary = await Ensemble(tasks, backend=backend, run_dir=tmp_path / "run").run()
    assert summary.counts["succeeded"] == len(tasks)
    partitions = {r.job_id.split("/")[0] for r in summary.results.values() if r.job_id}
    assert len(partitions) == 2
    spans = [(r.times["submit"], r.end_time) for r in summary.results.values() if r.end_time]
    moments = sorted([(a, 1) for a, _ in spans] + [(b, -1) for _, b in spans])
    in_flux = [sum(step for _, step in moments[: i + 1]) for i in range(len(moments))]
    assert max(in_flux) > slots  # some were queued behind running ones
    assert not active_jobs(uri4)


def broker_attr(uri: str, jobid: int, name: str) -> str:
    """A broker attribute of the rank-0 broker of the child instance that is job ``jobid``."""
    assert FLUX is not None
    env = {**os.environ, "FLUX_URI": uri}
    child = subprocess.run(
        [FLUX, "uri", "--local", str(jobid)], env=env, capture_output=True, text=True, check=True
    ).stdout.strip()
    getattr_ = [FLUX, "getattr", name]
    out = subprocess.run(getattr_, env={**env, "FLUX_URI": child}, capture_output=True, text=True)
    return out.stdout.strip()


@pytest.mark.flux
@pytest.mark.parametrize("how", ["its job is cancelled", "its rank-0 broker is killed"])
async def test_a_partition_that_dies_fails_only_its_running_tasks_which_retry_in_the_other(
    uri4: str, tmp_path: Path, how: str
) -> None:
    gate, side = tmp_path / "gate", tmp_path / "side"
    script = f'echo "$MATENSEMBLE_TASK_ID" >> {side}; while [ ! -e {gate} ]; do sleep 0.05; done'
    # One task per broker (of however many cores): two in each partition.
    whole_node = Resources(cores_per_rank=min(broker_cores(uri4)))
    tasks = [sh(f"t{i}", script, retries=1, resources=whole_node) for i in range(4)]
    tasks.append(sh("later", "true", after=tuple(t.id for t in tasks)))
    ensemble = Ensemble(tasks, backend=FluxBackend(uri4, partitions=2), run_dir=tmp_path / "run")
    killed_statedirs: list[str] = []

    async def end_a_partition_once_all_run() -> None:
        await anyio.to_thread.run_sync(wait_for_lines, side, 4)
        import flux
        import flux.job

        victim = active_jobs(uri4, f"{NAME}-0")[0]
        if how == "its job is cancelled":
            flux.job.cancel(flux.Flux(uri4), victim, "a partition dies")
        else:
            # A killed broker cannot remove its state directory (/var/tmp/flux-XXXXXX).
            statedir = broker_attr(uri4, victim, "statedir")
            os.kill(int(broker_attr(uri4, victim, "broker.pid")), signal.SIGKILL)
            killed_statedirs.append(statedir)
        # Its job ends in the enclosing instance (a killed broker's: the driver cancels it).
        await anyio.to_thread.run_sync(
            lambda: flux.job.event_wait(flux.Flux(uri4), victim, "clean", raiseJobException=False)
        )
        gate.touch()

    try:
        with anyio.fail_after(120):
            async with anyio.create_task_group() as tg:
                tg.start_soon(end_a_partition_once_all_run)
                summary = await ensemble.run()
    finally:
        for statedir in killed_statedirs:
            shutil.rmtree(statedir, ignore_errors=True)
    results = summary.results
    assert summary.counts["succeeded"] == 5  # the run went on, "later" too
    retried = {i for i, r in results.items() if r.attempts == 2}
    assert len(retried) == 2  # only the dead partition's tasks ran again, in the live one
    assert len({r.job_id.split("/")[0] for r in results.values() if r.job_id}) == 1
    failures = [
        e.result
        for e in read_journal(tmp_path / "run" / JOURNAL_NAME)
        if isinstance(e, TaskFinished) and e.retry_in is not None
    ]
    assert {r.id for r in failures} == retried
    assert all(r.reason and "partition 0" in r.reason for r in failures), failures
    assert not active_jobs(uri4)


@pytest.mark.flux
async def test_tasks_waiting_in_the_driver_for_a_dead_partition_run_in_the_other_on_attempt_1(
    uri4: str, tmp_path: Path
) -> None:
    """With ``queue_ahead="depend"``, one-core tasks booked behind whole-node ones have no job
    of their size to depend on: they wait in the driver (``flux_chains``). Those booked on the
    partition that dies were never submitted: they come back ``withdrawn`` and run in the live
    partition, on their first attempt, though they allow no retry."""
    cores = min(broker_cores(uri4))
    if cores < 2:
        pytest.skip("needs two cores per broker")
    gate, side = tmp_path / "gate", tmp_path / "side"
    script = f'echo "$MATENSEMBLE_TASK_ID" >> {side}; while [ ! -e {gate} ]; do sleep 0.05; done'
    whole_node = Resources(cores_per_rank=cores)
    tasks = [sh(f"t{i}", script, retries=1, resources=whole_node) for i in range(4)]
    queued = [sh(f"q{i}", "true") for i in range(sum(broker_cores(uri4)))]
    backend = FluxBackend(uri4, partitions=2, queue_ahead="depend")
    ensemble = Ensemble(tasks + queued, backend=backend, run_dir=tmp_path / "run")

    async def end_a_partition_once_all_run() -> None:
        await anyio.to_thread.run_sync(wait_for_lines, side, 4)
        import flux
        import flux.job

        victim = active_jobs(uri4, f"{NAME}-0")[0]
        flux.job.cancel(flux.Flux(uri4), victim, "a partition dies")
        await anyio.to_thread.run_sync(
            lambda: flux.job.event_wait(flux.Flux(uri4), victim, "clean", raiseJobException=False)
        )
        gate.touch()

    with anyio.fail_after(120):
        async with anyio.create_task_group() as tg:
            tg.start_soon(end_a_partition_once_all_run)
            summary = await ensemble.run()
    results = summary.results
    assert summary.counts["succeeded"] == len(tasks) + len(queued)
    assert {results[q.id].attempts for q in queued} == {1}
    withdrawn = {
        e.id for e in read_journal(tmp_path / "run" / JOURNAL_NAME) if isinstance(e, TaskWithdrawn)
    }
    assert withdrawn and withdrawn <= {q.id for q in queued}
    assert len({results[q].job_id.split("/")[0] for q in withdrawn}) == 1  # type: ignore[union-attr]
    assert not active_jobs(uri4)


@pytest.mark.flux
async def test_a_task_bigger_than_every_partition_is_rejected_before_the_run_naming_sizes(
    uri4: str, tmp_path: Path
) -> None:
    three_nodes = Resources(ranks=3, nodes=3)  # the instance has 4 nodes, a partition 2
    tasks = [sh("small", "true"), sh("wide", "true", resources=three_nodes)]
    ensemble = Ensemble(tasks, backend=FluxBackend(uri4, partitions=2), run_dir=tmp_path / "run")
    with anyio.fail_after(120), pytest.raises(TaskRejected) as caught:
        await ensemble.run()
    message = str(caught.value)
    assert "'wide' rejected" in message
    assert "2 Flux partitions" in message and "the largest has 2 node(s)" in message
    assert not (tmp_path / "run" / "tasks" / "small").exists()  # nothing ran
    assert not active_jobs(uri4)  # and the partitions are gone


@pytest.mark.flux
async def test_a_cancelled_run_like_ctrl_c_ends_every_job_and_every_partition(
    uri4: str, tmp_path: Path
) -> None:
    side = tmp_path / "side"
    tasks = [sh(f"t{i}", f"echo x >> {side}; exec sleep 60") for i in range(4)]
    ensemble = Ensemble(tasks, backend=FluxBackend(uri4, partitions=2), run_dir=tmp_path / "r")
    with anyio.fail_after(120):
        async with anyio.create_task_group() as tg:
            tg.start_soon(ensemble.run)
            await anyio.to_thread.run_sync(wait_for_lines, side, 4)
            assert len(partition_jobs(uri4)) == 2
            tg.cancel_scope.cancel()
    assert not active_jobs(uri4)


@pytest.mark.flux
async def test_a_launch_spread_over_two_partitions_goes_whole_to_the_one_holding_most_of_it(
    uri4: str, tmp_path: Path
) -> None:
    """The engine's pool may spread a task that fits one partition over nodes of two (its
    ranks fit no single node at that moment): it runs in one, unconstrained, not failed."""
    import asyncio

    import flux

    from matensemble.backends.base import Launch
    from matensemble.backends.flux_channel import FluxChannel
    from matensemble.backends.flux_routing import FluxRouter
    from matensemble.model import Slot

    loop = asyncio.get_running_loop()
    channels = [
        FluxChannel(
            flux,
            flux.Flux(uri4),
            loop,
            token="t",
            report=lambda o: None,
            settled=lambda: None,
            job_ids=lambda k, j: None,
            on_lost=lambda r: None,
            relaunch=lambda launch: None,
            submit_due=lambda launch, after: None,
            prefix=f"{i}/",
        )
        for i in range(2)
    ]
    router = FluxRouter()
    router.add(channels[0], [NodeSpec("n0", (0, 1)), NodeSpec("n1", (0, 1))])
    router.add(channels[1], [NodeSpec("n2", (0, 1)), NodeSpec("n3", (0, 1))])

    def launch(*slots: Slot) -> Launch:
        task = sh("t", "true", resources=Resources(ranks=3))
        return Launch(task=task, attempt=1, placement=slots, tasks_dir=tmp_path, run_id="r")

    try:
        assert router.route(launch(Slot("n0", (0, 1)), Slot("n1", (0,)))) == (channels[0], True)
        spread = launch(Slot("n1", (0,)), Slot("n2", (0, 1)))
        assert router.route(spread) == (channels[1], False)
        channels[1].broken = "partition 1 ended"
        assert router.route(spread) == (channels[0], False)  # the live one, where it fits
        channels[0].broken = "partition 0 ended"
        with pytest.raises(ValueError, match="no live Flux partition can run task t"):
            router.route(spread)
        assert router.owner_of("1/42") == (channels[1], 42)
        assert "needs 5 rank(s)" in (router.why_never_fits(Resources(ranks=5)) or "")
        assert router.why_never_fits(Resources(ranks=4)) is None
    finally:
        for channel in channels:
            channel.shutdown()
