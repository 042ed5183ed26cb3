"""The local backend, driven directly with real subprocesses and real files."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import anyio
import pytest

from matensemble.backends.base import Launch, Outcome
from matensemble.backends.local import LocalBackend
from matensemble.backends.local_spawner import InlineWhileQuick
from matensemble.errors import BackendError
from matensemble.model import Resources, Slot, Task, TaskState

from backend_harness import opened, read_fifo

# Each test runs with the worker threads, then with the helper processes, as spawners.
pytestmark = pytest.mark.usefixtures("local_spawners")

CORES = sorted(os.sched_getaffinity(0))
two_cores = pytest.mark.skipif(len(CORES) < 2, reason="needs at least 2 cores")
MPIEXEC = shutil.which("mpiexec") or shutil.which("mpiexec", path=str(Path(sys.executable).parent))


def sh(task_id: str, script: str, **kwargs: object) -> Task:
    return Task(id=task_id, command=["sh", "-c", script], **kwargs)  # type: ignore[arg-type]


async def assert_all_dead(pids: list[int]) -> None:
    """Wait (without polling) until each process has exited: its pidfd turns readable.

    Killing is asynchronous: SIGKILL is queued at once, the process dies when next scheduled.
    A zombie waiting for its new parent counts as dead.
    """
    for pid in pids:
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            continue
        try:
            with anyio.fail_after(2):
                await anyio.wait_readable(pidfd)
        finally:
            os.close(pidfd)


def cpu_list(text: str) -> set[int]:
    """Parse a kernel CPU list such as ``0-2,5``."""
    cores: set[int] = set()
    for part in text.split(","):
        first, _, last = part.partition("-")
        cores.update(range(int(first), int(last or first) + 1))
    return cores


def tree(task_id: str, tmp_path: Path, **kwargs: object) -> tuple[Task, Path]:
    """A shell with two background sleeps; it reports the three pids through a FIFO."""
    fifo = tmp_path / f"{task_id}.pids"
    os.mkfifo(fifo)
    script = 'sleep 100 & a=$!; sleep 100 & b=$!; echo "$a $b $$" > "$PIDS"; wait'
    return sh(task_id, script, env={"PIDS": str(fifo)}, **kwargs), fifo


async def read_pids(fifo: Path) -> list[int]:
    return [int(p) for p in (await read_fifo(fifo, within=5)).split()]


# -- inventory ----------------------------------------------------------------------------------


async def test_inventory_is_one_node_with_the_affinity_cores_and_given_gpus(tmp_path: Path) -> None:
    backend = LocalBackend(gpus=["3", "7"], node_name="laptop")
    async with opened(backend, tmp_path) as h:
        assert h.pool is not None
        (node,) = h.pool.nodes
        assert node.name == "laptop"
        assert node.cores == tuple(CORES)
        assert node.gpus == ("3", "7")


@two_cores
def test_cores_can_be_a_count_or_exact_ids() -> None:
    assert LocalBackend(cores=1)._cores == CORES[:1]
    assert LocalBackend(cores=[CORES[1]])._cores == [CORES[1]]


def test_asking_for_cores_this_process_may_not_use_is_an_error() -> None:
    with pytest.raises(ValueError, match="may use"):
        LocalBackend(cores=len(CORES) + 1)
    with pytest.raises(ValueError, match=r"\[4096\]"):
        LocalBackend(cores=[4096])


async def test_gpus_are_detected_from_cuda_visible_devices(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,5")
    async with opened(LocalBackend(), tmp_path) as h:
        assert h.pool is not None
        assert h.pool.nodes[0].gpus == ("2", "5")


async def test_rocm_gpus_are_handed_out_through_the_variable_they_came_from(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setenv("ROCR_VISIBLE_DEVICES", "0,1")
    async with opened(LocalBackend(), tmp_path) as h:
        task = sh("t", 'echo "$ROCR_VISIBLE_DEVICES"', resources=Resources(gpus_per_rank=1))
        assert (await h.run(task)).state is TaskState.SUCCEEDED
        assert h.stdout("t") == "0\n"


async def test_gpus_are_counted_with_nvidia_smi_when_no_variable_is_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = tmp_path / "bin" / "nvidia-smi"
    fake.parent.mkdir()
    fake.write_text(
        "#!/bin/sh\necho 'GPU 0: H100 (UUID: GPU-a)'\necho '  MIG 1g.10gb Device 0:'\n"
        "echo 'GPU 1: H100 (UUID: GPU-b)'\n"
    )
    fake.chmod(0o755)
    for variable in ("CUDA_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("PATH", f"{fake.parent}:{os.environ['PATH']}")
    async with opened(LocalBackend(), tmp_path) as h:
        assert h.pool is not None
        assert h.pool.nodes[0].gpus == ("0", "1")


# -- success, failure, reasons ------------------------------------------------------------------


async def test_successful_task_writes_stdout_and_stderr_to_files_in_its_directory(
    tmp_path: Path,
) -> None:
    async with opened(LocalBackend(), tmp_path) as h:
        before = time.time()
        outcome = await h.run(sh("hello", "echo out; echo err >&2; pwd"))
        assert outcome.state is TaskState.SUCCEEDED
        assert outcome.returncode == 0
        assert outcome.signal is None
        assert outcome.reason is None
        assert outcome.start_time is not None
        assert outcome.end_time is not None
        assert before <= outcome.start_time <= outcome.end_time <= time.time()
        task_dir = h.task_dir("hello")
        assert h.stdout("hello") == f"out\n{task_dir}\n"
        assert (task_dir / "stderr").read_text() == "err\n"


async def test_non_zero_exit_is_a_failure_with_its_returncode(tmp_path: Path) -> None:
    async with opened(LocalBackend(), tmp_path) as h:
        outcome = await h.run(sh("bad", "exit 3"))
        assert outcome.state is TaskState.FAILED
        assert outcome.returncode == 3
        assert outcome.signal is None
        assert outcome.reason == "exited with code 3"


async def test_death_by_signal_is_a_failure_that_names_the_signal(tmp_path: Path) -> None:
    async with opened(LocalBackend(), tmp_path) as h:
        outcome = await h.run(sh("killed", "kill -9 $$"))
        assert outcome.state is TaskState.FAILED
        assert outcome.returncode is None
        assert outcome.signal == 9
        assert outcome.reason == "killed by signal 9 (SIGKILL)"


async def test_missing_executable_fails_after_launch_returns_with_a_clear_reason(
    tmp_path: Path,
) -> None:
    async with opened(LocalBackend(), tmp_path) as h:
        launch = h.start(Task(id="ghost", command=["nosuchprog-xyz", "--flag"]))
        assert launch.key not in h.outcomes  # reported from a later callback, never re-entrantly
        outcome = await h.outcome(launch)
        assert outcome.state is TaskState.FAILED
        assert outcome.reason == "executable not found: 'nosuchprog-xyz'"
        assert outcome.returncode is None


async def test_file_without_execute_permission_fails_with_permission_denied(
    tmp_path: Path,
) -> None:
    script = tmp_path / "script.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    async with opened(LocalBackend(), tmp_path) as h:
        outcome = await h.run(Task(id="noexec", command=[str(script)]))
        assert outcome.state is TaskState.FAILED
        assert outcome.reason == f"permission denied: cannot execute {str(script)!r}"


async def test_missing_working_directory_fails_naming_the_directory(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    async with opened(LocalBackend(), tmp_path) as h:
        outcome = await h.run(Task(id="lost", command=["true"], cwd=str(missing)))
        assert outcome.state is TaskState.FAILED
        assert outcome.reason == f"working directory not found: {str(missing)!r}"


async def test_working_directory_is_the_tasks_cwd_when_given(tmp_path: Path) -> None:
    async with opened(LocalBackend(), tmp_path) as h:
        assert (
            await h.run(Task(id="where", command=["pwd"], cwd="/"))
        ).state is TaskState.SUCCEEDED
        assert h.stdout("where") == "/\n"


# -- timeouts, cancellation, process trees ------------------------------------------------------


async def test_timeout_kills_the_whole_process_tree(tmp_path: Path) -> None:
    async with opened(LocalBackend(kill_grace=2), tmp_path) as h:
        task, fifo = tree("slow", tmp_path, timeout=0.5)
        launch = h.start(task)
        pids = await read_pids(fifo)
        outcome = await h.outcome(launch)
        assert outcome.state is TaskState.TIMED_OUT
        assert outcome.reason == "timed out after 0.5s"
        assert outcome.signal == 15  # SIGTERM sufficed, so no wait for the grace period
        assert outcome.start_time is not None
        assert outcome.end_time is not None
        assert 0.5 <= outcome.end_time - outcome.start_time < 2
        await assert_all_dead(pids)


async def test_task_that_ignores_sigterm_is_killed_after_the_grace_period(tmp_path: Path) -> None:
    async with opened(LocalBackend(kill_grace=0.3), tmp_path) as h:
        outcome = await h.run(sh("stubborn", 'trap "" TERM; sleep 100', timeout=0.4))
        assert outcome.state is TaskState.TIMED_OUT
        assert outcome.signal == 9
        assert outcome.start_time is not None
        assert outcome.end_time is not None
        assert outcome.end_time - outcome.start_time >= 0.7


async def test_cancel_stops_the_task_and_its_whole_tree(tmp_path: Path) -> None:
    async with opened(LocalBackend(), tmp_path) as h:
        task, fifo = tree("victim", tmp_path)
        launch = h.start(task)
        pids = await read_pids(fifo)
        h.backend.cancel(launch.key)
        outcome = await h.outcome(launch)
        assert outcome.state is TaskState.CANCELLED
        assert outcome.reason == "cancelled"
        await assert_all_dead(pids)
        h.backend.cancel(launch.key)  # after the end: a no-op
        h.backend.cancel(("never-launched", 1))


async def test_background_children_do_not_outlive_their_task(tmp_path: Path) -> None:
    fifo = tmp_path / "leaky.pids"
    os.mkfifo(fifo)
    async with opened(LocalBackend(), tmp_path) as h:
        launch = h.start(sh("leaky", 'sleep 100 & echo $! > "$PIDS"', env={"PIDS": str(fifo)}))
        pids = await read_pids(fifo)
        assert (await h.outcome(launch)).state is TaskState.SUCCEEDED
        await assert_all_dead(pids)


@two_cores  # the two launches run at once
async def test_close_cancels_running_launches_and_waits_for_their_outcomes(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    os.mkfifo(ready)
    backend = LocalBackend(kill_grace=0.3)
    async with opened(backend, tmp_path) as h:
        a = h.start(sh("a", "sleep 100"))
        b = h.start(
            sh("b", 'trap "" TERM; echo $$ > "$READY"; sleep 100', env={"READY": str(ready)})
        )
        await read_pids(ready)  # the trap is set
        with anyio.fail_after(3):
            await backend.close()
        assert h.outcomes[a.key].state is TaskState.CANCELLED
        assert h.outcomes[b.key].state is TaskState.CANCELLED
        assert h.outcomes[b.key].signal == 9
        late = h.start(Task(id="late", command=["true"]))
        assert (await h.outcome(late)).state is TaskState.CANCELLED


async def test_close_that_is_itself_cancelled_kills_everything_at_once(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    os.mkfifo(ready)
    backend = LocalBackend(kill_grace=100)
    async with opened(backend, tmp_path) as h:
        script = 'trap "" TERM; echo $$ > "$READY"; sleep 100'
        launch = h.start(sh("stubborn", script, env={"READY": str(ready)}))
        pids = await read_pids(ready)
        with anyio.move_on_after(0.2):
            await backend.close()  # would wait 100 s for the grace period
        await assert_all_dead(pids)
        with anyio.fail_after(2):
            await backend.close()  # again: now waits for the outcomes of the killed launches
        assert h.outcomes[launch.key].state is TaskState.CANCELLED
        assert h.outcomes[launch.key].signal == 9


# -- placement: cores, GPUs, environment --------------------------------------------------------


@two_cores
async def test_task_is_pinned_to_its_allocated_cores(tmp_path: Path) -> None:
    thread_mask = os.sched_getaffinity(0)
    async with opened(LocalBackend(), tmp_path) as h:
        check = "grep Cpus_allowed_list /proc/self/status"
        first = h.start(sh("first", check))
        second = h.start(sh("second", check))
        assert first.placement[0].cores == (CORES[0],)
        assert second.placement[0].cores == (CORES[1],)
        await h.outcome(first)
        await h.outcome(second)
        assert h.stdout("first") == f"Cpus_allowed_list:\t{CORES[0]}\n"
        assert h.stdout("second") == f"Cpus_allowed_list:\t{CORES[1]}\n"
    assert os.sched_getaffinity(0) == thread_mask  # the loop thread got its mask back


@two_cores
async def test_rank_with_two_cores_gets_both_and_as_many_openmp_threads(tmp_path: Path) -> None:
    script = 'echo "$OMP_NUM_THREADS $(grep Cpus_allowed_list /proc/self/status | cut -f2)"'
    async with opened(LocalBackend(cores=CORES[:2]), tmp_path) as h:
        await h.run(sh("wide", script, resources=Resources(cores_per_rank=2)))
        threads, allowed = h.stdout("wide").split()
        assert threads == "2"
        assert cpu_list(allowed) == set(CORES[:2])


@two_cores  # the two launches run at once
async def test_gpu_ids_reach_the_task_and_tasks_without_gpus_see_none(tmp_path: Path) -> None:
    show = 'echo "[${CUDA_VISIBLE_DEVICES-unset}]"'
    async with opened(LocalBackend(gpus=["3", "7"]), tmp_path) as h:
        one = h.start(sh("one", show, resources=Resources(gpus_per_rank=1)))
        cpu = h.start(sh("cpu", show))
        await h.outcome(one)
        await h.outcome(cpu)
        two = await h.run(sh("two", show, resources=Resources(gpus_per_rank=2)))
        assert two.state is TaskState.SUCCEEDED
        assert h.stdout("one") == "[3]\n"
        assert h.stdout("cpu") == "[]\n"
        assert sorted(h.stdout("two").strip("[]\n").split(",")) == ["3", "7"]


async def test_task_environment_has_its_additions_and_matensemble_variables(
    tmp_path: Path,
) -> None:
    async with opened(LocalBackend(), tmp_path) as h:
        task = sh(
            "envy",
            'echo "$GREETING $MATENSEMBLE_TASK_ID $MATENSEMBLE_ATTEMPT $MATENSEMBLE_RUN_ID '
            '$OMP_NUM_THREADS $MATENSEMBLE_TASK_DIR"',
            env={"GREETING": "hi"},
        )
        await h.run(task, attempt=2)
        assert h.stdout("envy") == f"hi envy 2 test-run 1 {h.task_dir('envy')}\n"
        await h.run(sh("omp", 'echo "$OMP_NUM_THREADS"', env={"OMP_NUM_THREADS": "8"}))
        assert h.stdout("omp") == "8\n"


async def test_each_task_runs_the_program_its_own_path_names(tmp_path: Path) -> None:
    """The program is looked up once per (name, PATH) for the run, so tasks with different
    PATHs get different programs, and a relative PATH entry is relative to the task's working
    directory, as exec would have it."""
    for name in ("a", "b", "work/rel"):
        tool = tmp_path / name / "tool"
        tool.parent.mkdir(parents=True, exist_ok=True)
        tool.write_text(f"#!/bin/sh\necho {name}\n")
        tool.chmod(0o755)
    async with opened(LocalBackend(), tmp_path) as h:
        for task_id, path in [("ta", "a"), ("tb", "b"), ("ta2", "a")]:
            env = {"PATH": f"{tmp_path / path}:{os.environ['PATH']}"}
            outcome = await h.run(Task(id=task_id, command=["tool"], env=env))
            assert outcome.state is TaskState.SUCCEEDED, outcome.reason
        task = Task(id="rel", command=["tool"], env={"PATH": "rel"}, cwd=str(tmp_path / "work"))
        outcome = await h.run(task)
        assert outcome.state is TaskState.SUCCEEDED, outcome.reason
        assert [h.stdout(t) for t in ("ta", "tb", "ta2", "rel")] == [
            "a\n",
            "b\n",
            "a\n",
            "work/rel\n",
        ]


async def test_without_inherit_env_the_environment_is_minimal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MATENSEMBLE_TEST_SECRET", "do-not-leak")
    async with opened(LocalBackend(gpus=[]), tmp_path) as h:
        outcome = await h.run(Task(id="bare", command=["env"], inherit_env=False, env={"A": "1"}))
        assert outcome.state is TaskState.SUCCEEDED  # `env` found on the driver's PATH
        names = {line.split("=", 1)[0] for line in h.stdout("bare").splitlines()}
        assert names == {
            "A",
            "MATENSEMBLE_TASK_ID",
            "MATENSEMBLE_ATTEMPT",
            "MATENSEMBLE_RUN_ID",
            "MATENSEMBLE_TASK_DIR",
            "MATENSEMBLE_RANK",
            "MATENSEMBLE_NRANKS",
            "OMP_NUM_THREADS",
        }


async def test_environment_is_the_drivers_as_it_was_at_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MATENSEMBLE_BEFORE", "seen")
    async with opened(LocalBackend(), tmp_path) as h:
        monkeypatch.setenv("MATENSEMBLE_AFTER", "unseen")
        await h.run(sh("snap", 'echo "$MATENSEMBLE_BEFORE${MATENSEMBLE_AFTER-}"'))
        assert h.stdout("snap") == "seen\n"


# -- ranks ---------------------------------------------------------------------------------------


@two_cores
async def test_multi_rank_task_without_mpi_runs_one_pinned_copy_per_rank(tmp_path: Path) -> None:
    script = (
        'echo "$MATENSEMBLE_RANK/$MATENSEMBLE_NRANKS '
        '$(grep Cpus_allowed_list /proc/self/status | cut -f2)"'
    )
    async with opened(LocalBackend(), tmp_path) as h:
        outcome = await h.run(sh("copies", script, resources=Resources(ranks=2)))
        assert outcome.state is TaskState.SUCCEEDED
        assert sorted(h.stdout("copies").splitlines()) == [f"0/2 {CORES[0]}", f"1/2 {CORES[1]}"]


@two_cores
async def test_one_failing_copy_fails_the_launch_and_stops_the_others(tmp_path: Path) -> None:
    script = 'if [ "$MATENSEMBLE_RANK" = 1 ]; then exit 4; fi; sleep 100'
    async with opened(LocalBackend(), tmp_path) as h:
        outcome = await h.run(sh("half", script, resources=Resources(ranks=2)), within=5)
        assert outcome.state is TaskState.FAILED
        assert outcome.returncode == 4
        assert outcome.reason == "rank 1 exited with code 4"


@two_cores
async def test_each_copy_of_a_multi_rank_task_gets_its_own_gpus(tmp_path: Path) -> None:
    script = 'echo "$MATENSEMBLE_RANK $CUDA_VISIBLE_DEVICES"'
    async with opened(LocalBackend(gpus=["3", "7"]), tmp_path) as h:
        await h.run(sh("split", script, resources=Resources(ranks=2, gpus_per_rank=1)))
        assert sorted(h.stdout("split").splitlines()) == ["0 3", "1 7"]


@pytest.mark.mpi
@pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec")
@two_cores
async def test_mpi_task_runs_through_mpiexec(tmp_path: Path) -> None:
    # Rank 0 prints for all: lines from two ranks may interleave on the shared stdout.
    hello = "from mpi4py import MPI; c = MPI.COMM_WORLD; r = c.gather(c.rank); c.rank or print(r)"
    async with opened(LocalBackend(), tmp_path) as h:
        task = Task(
            id="mpi", command=[sys.executable, "-c", hello], resources=Resources(ranks=2, mpi=True)
        )
        outcome = await h.run(task)
        assert outcome.state is TaskState.SUCCEEDED, (h.task_dir("mpi") / "stderr").read_text()
        assert h.stdout("mpi") == "[0, 1]\n"


async def test_mpi_task_fails_clearly_when_there_is_no_mpiexec(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setattr(sys, "executable", str(tmp_path / "nowhere" / "python"))
    async with opened(LocalBackend(), tmp_path) as h:
        outcome = await h.run(Task(id="mpi", command=["true"], resources=Resources(mpi=True)))
        assert outcome.state is TaskState.FAILED
        assert outcome.reason is not None
        assert "no mpiexec was found" in outcome.reason


# -- protocol and throughput --------------------------------------------------------------------


async def test_any_error_starting_a_process_becomes_a_failed_outcome(tmp_path: Path) -> None:
    async with opened(LocalBackend(), tmp_path) as h:
        # One argument longer than the kernel takes (MAX_ARG_STRLEN, 128 KiB): execve says E2BIG.
        # (A NUL byte, the other classic, is refused when the Task is built.)
        outcome = await h.run(Task(id="huge", command=["echo", "x" * 300_000]))
        assert outcome.state is TaskState.FAILED
        assert outcome.reason == "cannot start 'echo': Argument list too long"


def test_a_launch_s_task_directory_is_its_task_id_under_the_run_s_tasks_directory(
    tmp_path: Path,
) -> None:
    tasks_dir = tmp_path / "tasks"
    launch = Launch(
        task=Task(id="t-7", command=["true"]),
        attempt=2,
        placement=(),
        tasks_dir=tasks_dir,
        run_id="r",
    )
    assert launch.task_dir == tasks_dir / "t-7"
    assert (launch.stdout, launch.stderr) == (tasks_dir / "t-7/stdout", tasks_dir / "t-7/stderr")


async def test_launch_before_open_is_an_error(tmp_path: Path) -> None:
    launch = Launch(
        task=Task(id="t", command=["true"]), attempt=1, placement=(), tasks_dir=tmp_path, run_id="r"
    )
    with pytest.raises(BackendError):
        LocalBackend().launch(launch)


async def test_two_hundred_short_tasks_all_succeed_as_slots_free_up(tmp_path: Path) -> None:
    total = 200
    done = asyncio.Event()
    queue = [Task(id=f"t{i}", command=["true"]) for i in range(total)]

    async with opened(LocalBackend(), tmp_path) as h:
        assert h.pool is not None
        pool = h.pool

        def refill(_: Outcome | None = None) -> None:
            while queue and pool.fits_now(queue[-1].resources):
                h.start(queue.pop())
            if len(h.outcomes) == total:
                done.set()

        h.on_outcome = refill
        refill()
        with anyio.fail_after(15):
            await done.wait()
    assert all(o.state is TaskState.SUCCEEDED for o in h.outcomes.values())


# -- starting from worker threads ---------------------------------------------------------------


def processes_marked(mark: str) -> list[int]:
    """The pids of live processes whose environment holds ``MARK=<mark>``."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            environ = (entry / "environ").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if f"MARK={mark}".encode() in environ.split(b"\0") and state != "Z":
            found.append(int(entry.name))
    return found


async def test_a_launch_cancelled_before_its_process_started_is_stopped_once_it_starts(
    tmp_path: Path,
) -> None:
    mark = f"early-{os.getpid()}-{time.monotonic_ns()}"
    async with opened(LocalBackend(kill_grace=100), tmp_path) as h:
        task = sh("early", "sleep 100 & sleep 100 & wait", env={"MARK": mark})
        launch = h.start(task)
        h.backend.cancel(launch.key)  # same turn of the loop: the worker may not have started it
        outcome = await h.outcome(launch, within=5)  # not after the 100 s grace period
        assert outcome.state is TaskState.CANCELLED
        await assert_all_dead(processes_marked(mark))  # SIGKILL is sent; death follows


async def test_a_forced_exit_kills_processes_that_were_still_being_started(tmp_path: Path) -> None:
    mark = f"starting-{os.getpid()}-{time.monotonic_ns()}"
    async with opened(LocalBackend(kill_grace=100), tmp_path) as h:
        launch = h.start(sh("starting", "sleep 100 & sleep 100 & wait", env={"MARK": mark}))
        h.backend.kill()  # before the worker handed the process back
        outcome = await h.outcome(launch, within=5)
        assert outcome.state is TaskState.FAILED
        assert outcome.signal == 9
        await assert_all_dead(processes_marked(mark))  # SIGKILL is sent; death follows


async def test_an_error_in_a_starting_thread_fails_that_launch_only(tmp_path: Path) -> None:
    async with opened(LocalBackend(), tmp_path) as h:
        task = Task(id="nowhere", command=["true"])
        launch = Launch(
            task=task,
            attempt=1,
            placement=(Slot(h.nodes[0].name, (100_000,), ()),),  # a core no machine has
            tasks_dir=h.task_dir(task.id).parent,
            run_id="r",
        )
        h.placements[launch.key] = ()  # nothing of the harness's pool to give back
        h.backend.launch(launch)
        outcome = await h.outcome(launch)
        assert outcome.state is TaskState.FAILED
        assert outcome.reason is not None and "cannot start 'true'" in outcome.reason
        # The thread goes on: the next launch (on the same thread) runs.
        assert (await h.run(Task(id="next", command=["true"]))).state is TaskState.SUCCEEDED


async def test_many_launches_at_once_are_pinned_grouped_and_reaped(tmp_path: Path) -> None:
    async with opened(LocalBackend(), tmp_path) as h:
        check = "grep Cpus_allowed_list /proc/self/status; ps -o pgid= -p $$; echo $$"
        launches = [h.start(sh(f"t{i}", check)) for i in range(len(CORES))]
        for launch in launches:
            assert (await h.outcome(launch)).state is TaskState.SUCCEEDED
            allowed, pgid, pid = h.stdout(launch.task.id).splitlines()
            assert cpu_list(allowed.split("\t")[1]) == set(launch.placement[0].cores)
            assert int(pgid) == int(pid)  # the leader of its own group
            assert not Path(f"/proc/{pid}").exists()  # reaped: no zombie left


async def test_a_tasks_outputs_are_opened_for_appending_and_blocking(tmp_path: Path) -> None:
    async with opened(LocalBackend(), tmp_path) as h:
        outcome = await h.run(sh("flags", "grep ^flags /proc/self/fdinfo/1 /proc/self/fdinfo/2"))
        assert outcome.state is TaskState.SUCCEEDED
        for line in h.stdout("flags").splitlines():
            flags = int(line.split()[-1], 8)
            assert flags & os.O_APPEND, line  # a retry's output follows the first attempt's
            assert not flags & os.O_NONBLOCK, line  # as a program expects of its stdout
            assert flags & os.O_ACCMODE == os.O_WRONLY, line


# -- where the output files are opened ----------------------------------------------------------


def test_outputs_are_opened_in_the_loop_while_quick_and_by_the_workers_once_slow() -> None:
    where = InlineWhileQuick(below=50e-6, probe_every=4)
    for _ in range(100):  # tmpfs, a disk's cache: stays in the loop
        assert where.inline()
        where.took(20e-6)
    where.took(2e-3)  # one slow mkdir (a loaded disk, a parallel file system)
    # To the workers; every 4th launch is opened (and timed) in the loop again.
    assert [where.inline() for _ in range(8)] == [False, False, False, True] * 2
    probes = 0
    while where.average >= 50e-6:  # quick probes bring it back, a few of them
        assert [where.inline() for _ in range(4)] == [False, False, False, True]
        where.took(20e-6)
        probes += 1
    assert 1 < probes < 20
    assert all(where.inline() for _ in range(8))


def test_on_a_slow_file_system_the_loop_thread_makes_no_task_directory_and_opens_no_output(
    tmp_path: Path, local_spawners: str
) -> None:
    if local_spawners == "processes":
        pytest.skip("with helper processes the driver makes no task directory at all")
    # Audit hooks cannot be removed, so they watch a run in a process of its own: every
    # directory made and file opened, and the thread that did it. A threshold of zero
    # stands for a file system on which every open is slow.
    script = """
import asyncio, json, sys, threading
from matensemble import Ensemble, LocalBackend, Task
from matensemble.backends import local

local.OPEN_INLINE_BELOW = 0.0
seen = []

def watch(event, args):
    if event == "os.mkdir" or (event == "open" and isinstance(args[0], str)):
        seen.append((event, str(args[0]), threading.get_ident()))

tasks = [Task(id=f"t{i}", command=["sh", "-c", "echo $MATENSEMBLE_TASK_ID"]) for i in range(8)]
ensemble = Ensemble(tasks, backend=LocalBackend(spawners="threads"), run_dir=sys.argv[1])
sys.addaudithook(watch)
summary = asyncio.run(ensemble.run())
print(json.dumps({"loop": threading.get_ident(), "seen": seen, "counts": summary.counts}))
"""
    run_dir = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-c", script, str(run_dir)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.splitlines()[-1])
    assert report["counts"]["succeeded"] == 8
    for i in range(8):
        assert (run_dir / "tasks" / f"t{i}" / "stdout").read_text() == f"t{i}\n"
    # Made and opened relative to the tasks directory: the paths are bare names.
    ids = {f"t{i}" for i in range(8)}
    made = [s for s in report["seen"] if s[0] == "os.mkdir" and Path(s[1]).name in ids]
    outputs = [s for s in report["seen"] if s[0] == "open" and s[1] in ("stdout", "stderr")]
    assert len(made) == 8 and len(outputs) == 16  # what it watches did happen
    assert [s for s in made + outputs if s[2] == report["loop"]] == []
