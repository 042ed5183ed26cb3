"""The Flux backend against a real broker: a private ``flux start --test-size=2`` instance."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import importlib.util
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from matensemble import Ensemble
from matensemble.backends.flux import FluxBackend
from matensemble.backends.flux_reactor import FluxReactorBridge
from matensemble.errors import BackendUnavailable
from matensemble.model import Resources, Slot, Task, TaskState
from matensemble.resources import NodeSpec

from backend_harness import Harness, opened, read_fifo
from flux_instance import (
    FLUX,
    active_jobs,
    broker_cores,
    flux_python,
    flux_uri,
    start_instance,
    stop_instance,
)

__all__ = ["flux_python", "flux_uri"]  # fixtures, re-exported so pytest finds them

pytestmark = pytest.mark.flux

HAS_MPI4PY = importlib.util.find_spec("mpi4py") is not None


@pytest.fixture
async def harness(flux_uri: str, tmp_path: Path) -> AsyncIterator[Harness]:
    """An opened FluxBackend on the session's instance.

    The backend starts no coroutines, so the task group it is given is never entered (a task
    group cannot span a fixture's setup and teardown, which run in different tasks).
    """
    h = Harness(FluxBackend(flux_uri), tmp_path)
    with anyio.fail_after(10):
        await h.open(anyio.create_task_group())
    try:
        yield h
    finally:
        with anyio.fail_after(30):
            await h.backend.close()


def reporting(task_id: str, tmp_path: Path, then: str = "exec sleep 60", **kwargs: object) -> Task:
    """A task that writes its pid into the FIFO ``ready_fifo(task_id)`` once it runs."""
    fifo = tmp_path / f"{task_id}.ready"
    os.mkfifo(fifo)
    return sh(task_id, f'echo $$ > "$READY"; {then}', env={"READY": str(fifo)}, **kwargs)


async def running(task_id: str, tmp_path: Path) -> int:
    """Wait (without polling) until the task reports that it runs; return its pid."""
    fifo = tmp_path / f"{task_id}.ready"
    return int(await read_fifo(fifo, within=20))


def sh(task_id: str, script: str, **kwargs: object) -> Task:
    return Task(id=task_id, command=("sh", "-c", script), **kwargs)  # type: ignore[arg-type]


# -- connection and inventory ------------------------------------------------------------------


async def test_inventory_is_one_node_per_broker_rank_with_its_cores_and_no_gpus(
    harness: Harness, flux_uri: str
) -> None:
    import flux

    # What `flux resource list` shows, rank by rank.
    R = flux.Flux(flux_uri).rpc("sched.resource-status").get()["all"]["execution"]["R_lite"]
    cores = {}
    for entry in R:
        ranks = flux.idset.decode(entry["rank"])
        for rank in ranks:
            cores[rank] = tuple(flux.idset.decode(entry["children"]["core"]))
    assert len(harness.nodes) == len(cores) == 2
    assert len({n.name for n in harness.nodes}) == 2
    for rank, node in enumerate(harness.nodes):
        # every broker of a --test-size instance runs on this host: names carry the rank
        assert node.name.endswith(f":{rank}")
        assert node.cores == cores[rank]
        assert node.gpus == ()


async def test_reserve_driver_cores_leaves_them_out_of_the_driver_rank_only(
    flux_uri: str, tmp_path: Path
) -> None:
    if min(broker_cores(flux_uri)) < 2:
        pytest.skip("needs two cores per broker: one reserved, one left")
    backend = FluxBackend(flux_uri, reserve_driver_cores=1)
    async with anyio.create_task_group() as tg:
        nodes = await backend.open(lambda outcome: None, tg)
        await backend.close()
    plain = FluxBackend(flux_uri)
    async with anyio.create_task_group() as tg:
        full = await plain.open(lambda outcome: None, tg)
        await plain.close()
    assert len(nodes[0].cores) == len(full[0].cores) - 1
    assert nodes[0].cores == full[0].cores[:-1]  # the highest-numbered core is the driver's
    assert nodes[1] == full[1]


def test_heterogeneous_resource_sets_become_nodes_with_their_own_cores_and_gpus(
    flux_python: None,
) -> None:
    from matensemble.backends.flux_inventory import read_inventory

    def r(entries: list[dict], nodelist: list[str]) -> dict:
        return {"version": 1, "execution": {"R_lite": entries, "nodelist": nodelist}}

    status = {
        "all": r(
            [
                {"rank": "0", "children": {"core": "0-3", "gpu": "0-1"}},
                {"rank": "1-2", "children": {"core": "0-7"}},
            ],
            ["gpu01,cpu[01-02]"],
        ),
        "down": r([{"rank": "2", "children": {"core": "0-7"}}], ["cpu02"]),
    }
    nodes, names = read_inventory(status, driver_rank=1, reserve=2)
    assert nodes == [
        NodeSpec("gpu01", (0, 1, 2, 3), ("0", "1")),
        NodeSpec("cpu01", (0, 1, 2, 3, 4, 5)),  # the driver's rank, less 2 reserved cores
    ]
    assert names.ranks(()) == ""
    allocated = r([{"rank": "0", "children": {"core": "2", "gpu": "1"}}], ["gpu01"])
    assert names.slots(allocated) == (Slot("gpu01", (2,), ("1",)),)


def test_the_placement_of_an_allocation_is_decoded_once_for_every_job_with_the_same_R(
    flux_python: None,
) -> None:
    """Each job's alloc event brings its R; the jobs of one slot all bring the same one."""
    from matensemble.backends.flux_inventory import InventoryMap

    def r(rank: str, cores: str) -> dict:
        entry = {"rank": rank, "children": {"core": cores}}
        return {"version": 1, "execution": {"R_lite": [entry], "nodelist": ["vm"]}}

    names = InventoryMap({0: "n0", 1: "n1"})
    first = names.slots(r("1", "0-1"))
    assert first == (Slot("n1", (0, 1)),)
    assert names.slots(r("1", "0-1")) is first  # the same R: not decoded again
    assert names.slots(r("0", "0-1")) == (Slot("n0", (0, 1)),)  # another R: its own
    assert names.slots(r("x", "0")) == ()  # malformed: nothing, and nothing remembered
    assert names.slots({"execution": {}}) == ()
    assert names.slots(None) == ()


async def test_a_uri_that_leads_nowhere_is_backend_unavailable_saying_how_to_get_an_instance(
    flux_python: None, tmp_path: Path
) -> None:
    backend = FluxBackend(f"local://{tmp_path}/no-such-broker")
    async with anyio.create_task_group() as tg:
        with pytest.raises(BackendUnavailable) as err:
            await backend.open(lambda outcome: None, tg)
        await backend.close()
    message = str(err.value)
    assert "no Flux instance" in message
    assert "flux start" in message
    assert "flux alloc" in message
    assert "uri=" in message


async def test_missing_bindings_are_backend_unavailable_naming_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "flux", None)  # makes `import flux` raise ImportError
    async with anyio.create_task_group() as tg:
        with pytest.raises(BackendUnavailable, match=r"matensemble\[flux\]"):
            await FluxBackend().open(lambda outcome: None, tg)


# -- outcomes ----------------------------------------------------------------------------------


async def test_success_records_times_and_the_placement_flux_assigned(harness: Harness) -> None:
    before = time.time()
    out = await harness.run(sh("hello", "echo hello; echo oops >&2"))
    assert out.state is TaskState.SUCCEEDED
    assert out.returncode == 0
    assert out.reason is None
    assert out.start_time is not None and out.end_time is not None
    assert before <= out.start_time <= out.end_time <= time.time()
    assert before <= out.times["submit"] <= out.times["alloc"] <= out.start_time
    assert out.job_id is not None
    assert int(out.job_id) > 0
    (slot,) = out.placement
    node = next(n for n in harness.nodes if n.name == slot.node)
    assert len(slot.cores) == 1 and set(slot.cores) <= set(node.cores)
    assert (harness.task_dir("hello") / "stdout").read_text() == "hello\n"
    assert (harness.task_dir("hello") / "stderr").read_text() == "oops\n"


async def test_non_zero_exit_is_a_failure_with_its_returncode(harness: Harness) -> None:
    out = await harness.run(sh("three", "exit 3"))
    assert out.state is TaskState.FAILED
    assert out.returncode == 3
    assert out.reason == "exit code 3"


async def test_missing_executable_fails_with_flux_reason(harness: Harness) -> None:
    out = await harness.run(Task(id="ghost", command=["/no/such/program"]))
    assert out.state is TaskState.FAILED
    assert out.reason is not None and "/no/such/program" in out.reason
    assert "No such file or directory" in out.reason


async def test_missing_working_directory_fails_naming_it(harness: Harness, tmp_path: Path) -> None:
    out = await harness.run(Task(id="nowhere", command=["true"], cwd=str(tmp_path / "absent")))
    assert out.state is TaskState.FAILED
    assert out.reason is not None and "absent" in out.reason


async def test_job_flux_refuses_is_a_failed_outcome_not_an_exception(
    flux_uri: str, tmp_path: Path
) -> None:
    summary = await Ensemble(
        [Task(id="q", command=["true"])],
        backend=FluxBackend(flux_uri, queue="no-such-queue"),
        run_dir=tmp_path / "run",
    ).run()
    result = summary.results["q"]
    assert result.state is TaskState.FAILED
    assert result.reason is not None and "queue" in result.reason


async def test_timeout_is_timed_out_and_the_process_is_gone(
    harness: Harness, tmp_path: Path
) -> None:
    started = time.monotonic()
    launch = harness.start(reporting("slow", tmp_path, timeout=1))
    pid = await running("slow", tmp_path)
    out = await harness.outcome(launch.key)
    assert out.state is TaskState.TIMED_OUT
    assert out.reason is not None and "timed out after 1s" in out.reason
    assert time.monotonic() - started < 15
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


async def test_cancel_stops_a_running_job(harness: Harness, tmp_path: Path) -> None:
    launch = harness.start(reporting("sleeper", tmp_path))
    pid = await running("sleeper", tmp_path)
    harness.backend.cancel(launch.key)
    out = await harness.outcome(launch.key)
    assert out.state is TaskState.CANCELLED
    assert out.start_time is not None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


async def test_cancel_before_flux_answers_the_submit_still_cancels(harness: Harness) -> None:
    launch = harness.start(Task(id="early", command=["sleep", "60"]))
    harness.backend.cancel(launch.key)  # the job id is not known yet
    out = await harness.outcome(launch.key)
    assert out.state is TaskState.CANCELLED


async def test_multi_rank_task_spreads_over_both_brokers(harness: Harness) -> None:
    task = sh(
        "spread",
        'echo "$MATENSEMBLE_RANK/$MATENSEMBLE_NRANKS $FLUX_TASK_RANK"',
        resources=Resources(ranks=2, nodes=2),
    )
    out = await harness.run(task)
    assert out.state is TaskState.SUCCEEDED
    assert sorted(slot.node for slot in out.placement) == sorted(n.name for n in harness.nodes)
    lines = sorted((harness.task_dir("spread") / "stdout").read_text().split("\n")[:-1])
    assert lines == ["0/2 0", "1/2 1"]


async def test_single_rank_task_is_rank_0_of_1(harness: Harness) -> None:
    out = await harness.run(sh("single", 'echo "$MATENSEMBLE_RANK/$MATENSEMBLE_NRANKS"'))
    assert out.state is TaskState.SUCCEEDED
    assert (harness.task_dir("single") / "stdout").read_text() == "0/1\n"


@pytest.mark.skipif(not HAS_MPI4PY, reason="mpi4py is not installed")
async def test_mpi_task_runs_across_brokers_with_flux_pmi(harness: Harness) -> None:
    script = (
        "from mpi4py import MPI; c = MPI.COMM_WORLD; "
        "print(c.Get_rank(), c.Get_size(), c.allreduce(1), flush=True)"
    )
    task = Task(
        id="mpi",
        command=[sys.executable, "-c", script],
        resources=Resources(ranks=2, nodes=2, mpi=True),
        timeout=60,
    )
    out = await harness.run(task)
    stderr = (harness.task_dir("mpi") / "stderr").read_text()
    assert out.state is TaskState.SUCCEEDED, stderr
    lines = sorted((harness.task_dir("mpi") / "stdout").read_text().split("\n")[:-1])
    assert lines == ["0 2 2", "1 2 2"]


async def test_environment_is_the_drivers_less_its_own_job_and_mpi_variables(
    flux_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MY_SETTING", "kept")
    monkeypatch.setenv("PMIX_NAMESPACE", "drivers-own")
    monkeypatch.setenv("OMPI_COMM_WORLD_RANK", "5")
    h = Harness(FluxBackend(flux_uri), tmp_path)
    async with anyio.create_task_group() as tg:
        await h.open(tg)
        monkeypatch.setenv("LATE", "too late")  # the environment was taken at open()
        try:
            await h.run(Task(id="inherit", command=["env"], env={"EXTRA": "1"}))
            await h.run(Task(id="bare", command=["env"], env={"EXTRA": "1"}, inherit_env=False))
        finally:
            await h.backend.close()

    def env_of(task_id: str) -> dict[str, str]:
        text = (h.task_dir(task_id) / "stdout").read_text()
        return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)

    inherited = env_of("inherit")
    assert inherited["MY_SETTING"] == "kept"
    assert inherited["EXTRA"] == "1"
    assert inherited["MATENSEMBLE_TASK_ID"] == "inherit"
    assert inherited["MATENSEMBLE_ATTEMPT"] == "1"
    assert inherited["MATENSEMBLE_RUN_ID"] == "test-run"
    assert inherited["MATENSEMBLE_TASK_DIR"] == str(h.task_dir("inherit"))
    assert inherited["OMP_NUM_THREADS"] == "1"
    assert "PMIX_NAMESPACE" not in inherited
    assert "OMPI_COMM_WORLD_RANK" not in inherited
    assert "LATE" not in inherited
    assert inherited["FLUX_JOB_ID"]  # set by the job shell for this job
    bare = env_of("bare")
    assert "MY_SETTING" not in bare
    assert bare["EXTRA"] == "1"
    assert bare["MATENSEMBLE_TASK_ID"] == "bare"


# -- control: close, Ctrl-C, lost broker ---------------------------------------------------------


async def test_close_cancels_running_jobs_and_leaves_none_active(
    harness: Harness, flux_uri: str, tmp_path: Path
) -> None:
    held = min(3, sum(broker_cores(flux_uri)))  # each on a core of its own
    keys = [harness.start(reporting(f"held-{i}", tmp_path)).key for i in range(held)]
    for i in range(held):
        await running(f"held-{i}", tmp_path)
    await harness.backend.close()
    assert {harness.outcomes[k].state for k in keys} == {TaskState.CANCELLED}
    assert not [j for i in range(held) for j in active_jobs(flux_uri, f"held-{i}")]


async def test_cancelled_run_like_ctrl_c_leaves_no_flux_job_running(
    flux_uri: str, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    slots = sum(broker_cores(flux_uri))  # one busy task on every core, however many
    tasks = [reporting(f"busy-{i}", tmp_path) for i in range(slots)]
    tasks.append(Task(id="queued", command=["sleep", "60"]))  # waits for a free core
    ensemble = Ensemble(tasks, backend=FluxBackend(flux_uri), run_dir=run_dir)
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(ensemble.run)
            for i in range(slots):
                await running(f"busy-{i}", tmp_path)
            tg.cancel_scope.cancel()
    assert {ensemble.state(t.id) for t in tasks} == {TaskState.CANCELLED}
    assert not [j for t in tasks for j in active_jobs(flux_uri, t.id)]


async def test_instance_shutting_down_under_running_jobs_reports_them(
    flux_python: None, tmp_path: Path
) -> None:
    proc, uri = start_instance(1)
    try:
        async with opened(FluxBackend(uri), tmp_path) as h:
            launch = h.start(reporting("orphan", tmp_path))
            await running("orphan", tmp_path)
            await anyio.to_thread.run_sync(stop_instance, proc)  # Flux cancels its jobs
            out = await h.outcome(launch.key)
        assert out.state is TaskState.CANCELLED
    finally:
        stop_instance(proc)


async def test_broker_killed_fails_running_launches_instead_of_hanging(
    flux_python: None, tmp_path: Path
) -> None:
    import flux

    statedir = tmp_path / "statedir"  # the killed broker cannot remove its own
    statedir.mkdir()
    proc, uri = start_instance(1, statedir)
    pid = None
    try:
        broker = int(flux.Flux(uri).attr_get("broker.pid"))
        async with opened(FluxBackend(uri), tmp_path) as h:
            launch = h.start(reporting("stranded", tmp_path))
            pid = await running("stranded", tmp_path)
            os.kill(broker, signal.SIGKILL)
            out = await h.outcome(launch.key)
            late = h.start(Task(id="late", command=["true"]))
            after = await h.outcome(late.key)
        assert out.state is TaskState.FAILED
        assert out.reason is not None and "lost the connection" in out.reason
        assert after.state is TaskState.FAILED
    finally:
        stop_instance(proc)
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


# -- no polling ----------------------------------------------------------------------------------


async def test_waiting_for_a_running_job_costs_no_cpu(harness: Harness, tmp_path: Path) -> None:
    launch = harness.start(reporting("nap", tmp_path, then="exec sleep 2"))
    await running("nap", tmp_path)
    cpu = time.process_time()
    out = await harness.outcome(launch.key)
    assert out.state is TaskState.SUCCEEDED
    assert time.process_time() - cpu < 0.1  # about 1.5 s of waiting


async def test_a_hundred_short_tasks_through_the_engine_all_succeed(
    flux_uri: str, tmp_path: Path
) -> None:
    tasks = [Task(id=f"t{i:03d}", command=["true"]) for i in range(100)]
    with anyio.fail_after(60):
        summary = await Ensemble(tasks, backend=FluxBackend(flux_uri), run_dir=tmp_path).run()
    assert summary.counts["succeeded"] == 100


async def test_a_job_id_is_written_at_once_and_made_durable_with_the_next_result(
    flux_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal_syncs = 0
    fdatasync = os.fdatasync

    def counting_fdatasync(fd: int) -> None:
        nonlocal journal_syncs
        if os.readlink(f"/proc/self/fd/{fd}").endswith("journal.jsonl"):
            journal_syncs += 1
        fdatasync(fd)

    monkeypatch.setattr(os, "fdatasync", counting_fdatasync)
    # One after the other, each running long enough that its job id and its result arrive
    # apart: a sync for each id as well would make two per task.
    tasks = [sh("t0", "sleep 0.3")]
    tasks += [sh(f"t{i}", "sleep 0.3", after=(f"t{i - 1}",)) for i in range(1, 4)]
    with anyio.fail_after(60):
        summary = await Ensemble(tasks, backend=FluxBackend(flux_uri), run_dir=tmp_path).run()
    assert summary.counts["succeeded"] == 4
    ids = {r.id: r.job_id for r in summary.results.values()}
    written = (tmp_path / "journal.jsonl").read_text()
    assert all(f'"job_id":"{job_id}"' in written for job_id in ids.values()), written
    assert journal_syncs <= len(tasks) + 2  # one per result, the start, the end


# -- the reactor bridge on its own ---------------------------------------------------------------


@contextlib.asynccontextmanager
async def bridged(uri: str) -> AsyncIterator[tuple[Any, FluxReactorBridge, list[BaseException]]]:
    import flux

    handle = flux.Flux(uri)
    errors: list[BaseException] = []
    bridge = FluxReactorBridge(handle, asyncio.get_running_loop(), errors.append)
    try:
        yield handle, bridge, errors
    finally:
        bridge.close()


async def test_bridge_completes_every_one_of_many_concurrent_rpcs(flux_uri: str) -> None:
    async with bridged(flux_uri) as (handle, bridge, errors):
        answers: list[str] = []
        done = asyncio.Event()

        def answered(future: Any) -> None:
            answers.append(bridge.payload(future.handle)["value"])
            if len(answers) == 500:
                done.set()

        for _ in range(500):
            handle.rpc("attr.get", {"name": "size", "flags": 0}).then(bridge.callback(answered))
        with anyio.fail_after(20):
            await done.wait()
        assert answers == ["2"] * 500
        assert errors == []


async def test_bridge_runs_a_callback_on_an_already_fulfilled_future_when_kicked(
    flux_uri: str,
) -> None:
    async with bridged(flux_uri) as (handle, bridge, _):
        future = handle.rpc("attr.get", {"name": "size", "flags": 0})
        future.wait_for()  # fulfilled now: no message will ever arrive for it again
        called = asyncio.Event()
        future.then(bridge.callback(lambda f: called.set()))
        bridge.kick()
        with anyio.fail_after(5):
            await called.wait()


async def test_bridge_delivers_every_response_of_a_stream_that_arrives_at_once(
    flux_uri: str,
) -> None:
    """The broker's log backlog is a burst of responses to one streaming RPC: several wait in
    the future at each reset, and every one must reach the callback without fd activity."""
    from flux.core.inner import ffi, lib

    data, size = ffi.new("void **"), ffi.new("size_t *")
    async with bridged(flux_uri) as (handle, bridge, errors):
        lines: list[bytes] = []
        ended: list[int] = []
        done = asyncio.Event()

        def on_line(future: Any, _: Any) -> None:
            # Log entries are raw RFC 5424 text, not JSON: read them as bytes.
            if lib.flux_rpc_get_raw(future, data, size) < 0:
                ended.append(ffi.errno)
                done.set()
                return
            lines.append(bytes(ffi.buffer(data[0], size[0])))
            bridge.next_response(future)

        bridge.stream("log.dmesg", {"follow": False, "nobacklog": False}, on_line)
        # The broker answers while the loop is held: the whole backlog is queued at once.
        handle.rpc("attr.get", {"name": "size", "flags": 0}).get()
        bridge.kick()
        with anyio.fail_after(10):
            await done.wait()
        assert ended == [errno.ENODATA]
        assert len(lines) >= 5 and all(b"broker" in line for line in lines[:3])
        assert errors == []


async def test_bridge_drains_one_answer_in_two_reactor_iterations(flux_uri: str) -> None:
    """One iteration dispatches the message, the next runs its callback; no third one to
    find that nothing is left (each costs the handle's watchers several system calls)."""
    async with bridged(flux_uri) as (handle, bridge, errors):
        per_answer = []
        for _ in range(21):
            answered = asyncio.Event()
            before = bridge.iterations
            handle.rpc("attr.get", {"name": "size", "flags": 0}).then(
                bridge.callback(lambda f, event=answered: event.set())
            )
            # Hold the loop while the broker answers, so that the drain finds the answer
            # waiting. One woken by the send itself would otherwise find nothing, or the answer
            # landing in its middle (one iteration more): on a loaded or a fast machine every
            # answer can fall that way.
            time.sleep(0.05)
            with anyio.fail_after(5):
                await answered.wait()
            per_answer.append(bridge.iterations - before)
        assert errors == []
        # An answer that waits takes two iterations (three where the broker was slower than the
        # sleep). A drain that always ran a further iteration to find nothing left took three
        # or four for every answer.
        assert min(per_answer) == 2, per_answer


async def test_bridge_runs_the_callback_of_its_own_future_in_the_iteration_that_answers_it(
    flux_uri: str,
) -> None:
    """A future made by the bridge (a submit, a request, the journal stream) gets its callback
    as soon as the iteration that dispatched its answer returns: one iteration per answer,
    not a second one for the callback, and the callback runs once."""
    async with bridged(flux_uri) as (_, bridge, errors):
        per_answer = []
        refused: list[int] = []
        for _ in range(21):
            answered = asyncio.Event()

            def on_answer(future: Any, event: asyncio.Event) -> None:
                try:
                    bridge.job_id(future)
                except OSError as exc:
                    refused.append(exc.errno)
                event.set()

            before = bridge.iterations - bridge.wakeups
            bridge.submit(b'{"version": 1}', 16, 0, on_answer, answered)
            time.sleep(0.05)  # the answer waits when the drain runs (as in the test above)
            with anyio.fail_after(5):
                await answered.wait()
            # Iterations beyond the first of each drain (the send itself may wake the bridge
            # once, for a drain of one iteration that finds nothing).
            per_answer.append(bridge.iterations - bridge.wakeups - before)
        assert errors == []
        assert len(refused) == 21  # each callback ran once
        assert bridge.waiting() == 0
        # None (one where the broker was slower than the sleep); a drain that left the
        # callback to the reactor took one for every answer.
        assert min(per_answer) == 0, per_answer


async def test_bridge_runs_a_failed_stream_callback_once(flux_uri: str) -> None:
    """A stream that ends with an error is not reset for a next response; its callback runs
    once, however many messages arrive afterwards for other futures."""
    async with bridged(flux_uri) as (_, bridge, errors):
        failures: list[int] = []

        def on_response(future: Any, _: Any) -> None:
            try:
                bridge.payload(future)
            except OSError as exc:
                failures.append(exc.errno)
                return
            bridge.next_response(future)

        bridge.stream("no-such-service.stream", None, on_response)
        with anyio.fail_after(5):
            while not failures:
                await bridge.request("attr.get", {"name": "size", "flags": 0})
            for _ in range(5):  # more answers, each looked for among the bridge's futures
                await bridge.request("attr.get", {"name": "size", "flags": 0})
        assert failures == [errno.ENOSYS]
        assert errors == []


async def test_bridge_hands_over_exceptions_from_callbacks(flux_uri: str) -> None:
    async with bridged(flux_uri) as (handle, bridge, errors):

        def broken(future: Any) -> None:
            raise RuntimeError("bug in a callback")

        arrived = asyncio.Event()
        handle.rpc("attr.get", {"name": "size", "flags": 0}).then(bridge.callback(broken))
        # A callback the bridge did not wrap: the bindings store its exception and stop the
        # reactor; the bridge re-raises it from there.
        handle.rpc("attr.get", {"name": "size", "flags": 0}).then(broken)
        handle.rpc("attr.get", {"name": "size", "flags": 0}).then(
            bridge.callback(lambda f: arrived.set())
        )
        with anyio.fail_after(5):
            await arrived.wait()  # answers come in order: the two errors are in by now
        assert [str(e) for e in errors] == ["bug in a callback"] * 2


async def test_bridge_requests_and_submits_answer_through_its_own_futures(
    flux_uri: str,
) -> None:
    """``request`` and ``submit`` use libflux futures run by one cffi callback: every answer
    arrives once, a refused job raises from ``job_id``, a callback's exception is handed over,
    and nothing waits in the bridge afterwards."""
    import flux.job

    good = flux.job.JobspecV1.from_command(["true"]).dumps().encode()
    async with bridged(flux_uri) as (_, bridge, errors):
        sizes = await asyncio.gather(
            *(bridge.request("attr.get", {"name": "size", "flags": 0}) for _ in range(200))
        )
        assert [s["value"] for s in sizes] == ["2"] * 200
        with pytest.raises(OSError):
            await bridge.request("no-such-service.nothing")

        answers: list[int | str] = []
        done = asyncio.Event()

        def submitted(future: Any, name: str) -> None:
            try:
                answers.append(bridge.job_id(future))
            except OSError as exc:
                answers.append(f"{name}: {exc.strerror}")
            if len(answers) == 3:
                done.set()
                raise RuntimeError("bug in a submit callback")

        bridge.submit(good, 16, 0, submitted, "good")
        bridge.submit(b'{"version": 1}', 16, 0, submitted, "bad")
        bridge.submit(good, 16, 0, submitted, "good")
        with anyio.fail_after(10):
            await done.wait()
        assert sum(isinstance(a, int) for a in answers) == 2
        refused = [a for a in answers if isinstance(a, str)]
        assert len(refused) == 1 and refused[0].startswith("bad: ")
        assert [str(e) for e in errors] == ["bug in a submit callback"]
        assert bridge.waiting() == 0  # each answered future was destroyed
        jobids = [a for a in answers if isinstance(a, int)]
    for jobid in jobids:
        flux.job.event_wait(flux.Flux(flux_uri), jobid, "clean")


async def test_closing_the_bridge_destroys_a_stream_still_open_and_calls_it_no_more(
    flux_uri: str,
) -> None:
    import flux.constants

    async with bridged(flux_uri) as (handle, bridge, errors):
        calls: list[Any] = []
        bridge.stream(
            "log.dmesg", {"follow": True, "nobacklog": True}, lambda f, _: calls.append(f)
        )
        assert bridge.waiting() == 1
        bridge.close()
        assert bridge.waiting() == 0
        handle.rpc("log.append", {"buf": "<13>1 - - - - - - after close"}).get()
        for _ in range(5):  # whatever the broker sent meanwhile is dispatched: to no one
            handle.reactor_run(flags=flux.constants.FLUX_REACTOR_NOWAIT)
        assert calls == [] and errors == []


# -- the allocation's end, and a forced exit ----------------------------------------------------


def test_deadline_is_the_end_of_the_enclosing_flux_job(flux_uri: str, tmp_path: Path) -> None:
    """A driver run as a Flux job with a 10-minute limit sees that limit as its deadline."""
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import asyncio, time\n"
        "import anyio\n"
        "from matensemble.backends.flux import FluxBackend\n"
        "async def main():\n"
        "    b = FluxBackend()\n"
        "    async with anyio.create_task_group() as tg:\n"
        "        await b.open(lambda o: None, tg)\n"
        "        print(b.deadline() - time.time())\n"
        "        await b.close()\n"
        "asyncio.run(main())\n"
    )
    env = {**os.environ, "FLUX_URI": flux_uri, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run(
        [str(FLUX), "run", "-t", "10m", sys.executable, str(probe)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    left = float(out.stdout.split()[-1])
    assert 500 < left <= 600


async def test_deadline_is_none_outside_a_job_with_a_limit(harness: Harness) -> None:
    assert harness.backend.deadline() is None


async def test_kill_cancels_every_job_at_once_for_a_forced_exit(
    harness: Harness, flux_uri: str, tmp_path: Path
) -> None:
    keys = [harness.start(reporting(f"doomed-{i}", tmp_path)).key for i in range(2)]
    for i in range(2):
        await running(f"doomed-{i}", tmp_path)
    harness.backend.kill()
    await harness.backend.close()  # here only to collect the outcomes
    assert {harness.outcomes[k].state for k in keys} == {TaskState.CANCELLED}
    assert not [j for i in range(2) for j in active_jobs(flux_uri, f"doomed-{i}")]


def _killed_driver_with_two_running_jobs(flux_uri: str, tmp_path: Path) -> tuple[dict, list]:
    """Run two tasks under Flux, SIGKILL the driver while they run; return env and job ids."""
    spec = tmp_path / "e.toml"
    spec.write_text(
        '[[sweep]]\nid = "w{i}"\nparameters = { i = [0, 1] }\n'
        f'command = ["sh", "-c", "echo $FLUX_JOB_ID >> {tmp_path}/jobs; '
        f'while [ ! -e {tmp_path}/go ]; do sleep 0.1; done"]\n'
    )
    env = {**os.environ, "FLUX_URI": flux_uri, "PYTHONPATH": os.pathsep.join(sys.path)}
    driver = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "matensemble",
            "run",
            str(spec),
            "--backend",
            "flux",
            "--run-dir",
            "run",
            "--no-progress",
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    jobs_file, journal = tmp_path / "jobs", tmp_path / "run" / "journal.jsonl"
    deadline = time.monotonic() + 60
    while not (
        len(jobs_file.read_text().split() if jobs_file.exists() else []) == 2
        and journal.exists()
        and journal.read_text().count("task_submitted") == 2
    ):
        assert time.monotonic() < deadline, "the jobs never started"
        time.sleep(0.05)
    driver.kill()
    driver.wait()
    assert [j for i in range(2) for j in active_jobs(flux_uri, f"w{i}")]  # still running
    return env, jobs_file.read_text().split()


def _resume(tmp_path: Path, env: dict) -> subprocess.CompletedProcess[str]:
    (tmp_path / "go").touch()
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "matensemble",
            "resume",
            "run",
            "--backend",
            "flux",
            "--no-progress",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_resume_adopts_the_jobs_a_killed_driver_left_running(flux_uri: str, tmp_path: Path) -> None:
    env, orphans = _killed_driver_with_two_running_jobs(flux_uri, tmp_path)
    resumed = _resume(tmp_path, env)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert (tmp_path / "jobs").read_text().split() == orphans  # nothing ran a second time
    from matensemble.journal import replay

    past = replay(tmp_path / "run")
    assert set(past.finished) == {"w0", "w1"}
    assert {r.job_id for r in past.finished.values()} == {str(flux_job_id(j)) for j in orphans}
    assert not [j for i in range(2) for j in active_jobs(flux_uri, f"w{i}")]


def test_resume_without_job_ids_cancels_the_leftover_jobs_and_runs_them_again(
    flux_uri: str, tmp_path: Path
) -> None:
    env, orphans = _killed_driver_with_two_running_jobs(flux_uri, tmp_path)
    journal = tmp_path / "run" / "journal.jsonl"
    lines = journal.read_text().splitlines(keepends=True)
    journal.write_text("".join(x for x in lines if "task_submitted" not in x))
    resumed = _resume(tmp_path, env)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert not [j for i in range(2) for j in active_jobs(flux_uri, f"w{i}")]
    reruns = (tmp_path / "jobs").read_text().split()[len(orphans) :]
    assert len(reruns) == 2
    assert not set(reruns) & set(orphans)


def flux_job_id(text: str) -> int:
    """A job id as FLUX_JOB_ID prints it (f58 or decimal) as an integer."""
    import flux.job

    return int(flux.job.JobID(text))


def test_an_adopted_job_that_ended_is_read_from_its_own_eventlog(flux_uri: str) -> None:
    """A resume may find a job inactive while job-list (and the KVS) still lag behind its last
    events; its ending then comes from its eventlog once ``clean`` is committed: the exit
    status of its ``finish`` event, or its fatal exception."""
    import types

    import flux
    import flux.job

    from matensemble.backends.flux_job import ending_from_eventlog

    handle = flux.Flux(flux_uri)
    commands = [["true"], ["false"], ["sh", "-c", "kill -9 $$"], ["sleep", "30"]]
    ids = [
        flux.job.submit(handle, flux.job.JobspecV1.from_command(c), waitable=True) for c in commands
    ]
    flux.job.event_wait(handle, ids[3], "start")
    flux.job.cancel(handle, ids[3])
    for jobid in ids:
        flux.job.wait(handle, jobid)
    channel: Any = types.SimpleNamespace(flux=flux, handle=handle)
    endings = [ending_from_eventlog(channel.flux, channel.handle, jobid) for jobid in ids]
    assert endings[:3] == [(0, None), (1 << 8, None), ((128 + 9) << 8, None)]
    assert endings[3][1] is not None and endings[3][1][0] == "cancel"
