"""Warm workers: reused across calls, pinned to each call's cores, replaced when they die,
time out, or grow; the run goes on."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from call_targets import exit_hard, hoard, process_and_cores, sleep

from matensemble import Ensemble, TaskFailed, TaskState, WarmLocalBackend
from matensemble.backends.local_inventory import CAN_PIN


async def test_calls_reuse_one_warm_worker_and_write_to_their_own_files(run_dir: Path) -> None:
    backend = WarmLocalBackend(cores=1)
    async with Ensemble(backend=backend, run_dir=run_dir) as ens:
        refs = [ens.call(process_and_cores) for _ in range(5)]
        seen = [await ref for ref in refs]
    assert len({pid for pid, _ in seen}) == 1  # one interpreter served all five
    assert backend.started_workers == 1
    assert all(pid != os.getpid() for pid, _ in seen)
    for ref in refs:
        assert (run_dir / "tasks" / ref.id / "stdout").read_text() == "hello from the call\n"


@pytest.mark.skipif(not CAN_PIN, reason="needs sched_setaffinity")
async def test_a_warm_call_runs_on_the_cores_the_engine_gave_it(run_dir: Path) -> None:
    cores = sorted(os.sched_getaffinity(0))[:2]
    async with Ensemble(backend=WarmLocalBackend(cores=cores), run_dir=run_dir) as ens:
        refs = [ens.call(process_and_cores) for _ in range(4)]
        for ref in refs:
            _, seen = await ref
            placement = ens.result(ref.id).placement  # type: ignore[union-attr]
            assert seen == list(placement[0].cores)


async def test_a_worker_that_dies_fails_its_call_and_is_replaced(run_dir: Path) -> None:
    backend = WarmLocalBackend(cores=1)
    async with Ensemble(backend=backend, run_dir=run_dir) as ens:
        before, _ = await ens.call(process_and_cores)
        with pytest.raises(TaskFailed, match=r"warm worker died: exited with code 7"):
            await ens.call(exit_hard, 7)
        after, _ = await ens.call(process_and_cores)
    assert before != after
    assert backend.started_workers == 2


async def test_a_timeout_kills_and_replaces_the_worker_not_the_run(run_dir: Path) -> None:
    backend = WarmLocalBackend(cores=1)
    async with Ensemble(backend=backend, run_dir=run_dir) as ens:
        before, _ = await ens.call(process_and_cores)
        with pytest.raises(TaskFailed) as info:
            await ens.call(sleep, 60, timeout=0.5)
        assert info.value.result.state is TaskState.TIMED_OUT
        after, _ = await ens.call(process_and_cores)
        assert before != after
        with pytest.raises(OSError):
            os.kill(before, 0)  # the timed-out worker is gone


async def test_a_worker_that_grows_past_its_memory_limit_is_retired(run_dir: Path) -> None:
    backend = WarmLocalBackend(cores=1, max_rss_mb=150)
    async with Ensemble(backend=backend, run_dir=run_dir) as ens:
        pids = [await ens.call(hoard, 100) for _ in range(3)]
    assert len(set(pids)) >= 2  # the second 100 MB took it past 150 MB: a new worker


async def test_cold_calls_and_commands_still_run_as_new_processes(run_dir: Path) -> None:
    backend = WarmLocalBackend(cores=1, warm=False)
    async with Ensemble(backend=backend, run_dir=run_dir) as ens:
        cold = [await ens.call(process_and_cores) for _ in range(2)]
        warm = [await ens.call(process_and_cores, warm=True) for _ in range(2)]
    assert cold[0][0] != cold[1][0]
    assert warm[0][0] == warm[1][0]
    assert backend.started_workers == 1


async def test_cancelling_a_warm_call_raises_for_its_awaiter(run_dir: Path) -> None:
    async with Ensemble(backend=WarmLocalBackend(cores=1), run_dir=run_dir) as ens:
        ref = ens.call(sleep, 60)
        for _ in range(1000):  # the producer starts it within a few turns of the loop
            if ref.state is TaskState.RUNNING:
                break
            await asyncio.sleep(0.01)
        assert ref.state is TaskState.RUNNING
        ens.cancel(ref.id)
        with pytest.raises(TaskFailed) as info:
            await ref
        assert info.value.result.state is TaskState.CANCELLED


async def test_a_warm_call_sees_exactly_its_own_gpus(
    run_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from call_targets import visible_gpus

    from matensemble import Resources

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")  # the driver's, not the calls'
    async with Ensemble(backend=WarmLocalBackend(cores=1, gpus=["0", "1"]), run_dir=run_dir) as ens:
        one = await ens.call(visible_gpus, resources=Resources(gpus_per_rank=1))
        none = await ens.call(visible_gpus)
    assert one in ("0", "1")
    assert none == ""
