"""LocalBackend(spawners="processes"): what the helper processes guarantee on their own, one
per core or one per group of cores (``cores_per_helper``).

The backend's other guarantees (pinning, process groups, files, outcomes, stopping, queueing
ahead) are checked with helpers by the local backend's own tests, which run under the worker
threads, a helper per core and a helper per pair of cores (``conftest.local_spawners``).
"""

from __future__ import annotations

import enum
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import anyio
import pytest

from matensemble import Ensemble
from matensemble.backends import local_helpers
from matensemble.backends.local import LocalBackend
from matensemble.backends.local_helper_messages import (
    Book,
    Drop,
    Exited,
    Frames,
    KillAll,
    Signal,
    Started,
    decode,
    encode,
)
from matensemble.backends.local_helpers import HELPERS_AT_MOST, cores_per_helper_for
from matensemble.errors import BackendUnavailable
from matensemble.events import TaskStarted
from matensemble.journal import read_journal
from matensemble.model import Task, TaskState

from backend_harness import opened
from conftest import HOLD, alive

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")
two_cores = pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores")
DIED = "the spawner helper process died"
DRIVER = """
import asyncio, sys
from matensemble import Ensemble, LocalBackend, Task

task = Task(id="hold", command=("sh", "-c", "echo $$ > pid; exec sleep 60"))
asyncio.run(Ensemble([task], backend=LocalBackend(cores=1, spawners="processes"),
                     run_dir=sys.argv[1]).run())
"""


def wait_for_pid(path: Path) -> int:
    deadline = time.monotonic() + 30
    while not (path.exists() and path.read_text().strip()):
        assert time.monotonic() < deadline, f"no pid in {path}"
        time.sleep(0.01)
    return int(path.read_text())


def started_ids(run_dir: Path) -> set[str]:
    path = run_dir / "journal.jsonl"
    events = read_journal(path) if path.exists() else []
    return {e.id for e in events if isinstance(e, TaskStarted)}


def helpers_of(pid: int) -> list[int]:
    """The driver's helper processes (its children that run ``local_helper``)."""
    found = []
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
        if b"matensemble.backends.local_helper" in cmdline:
            found.append(int(child))
    return found


def sh(task_id: str, script: str) -> Task:
    return Task(id=task_id, command=("sh", "-c", script))


def test_spawners_are_threads_or_processes() -> None:
    with pytest.raises(ValueError, match="spawners must be 'threads' or 'processes'"):
        LocalBackend(spawners="forks")


@pytest.mark.parametrize("given", [0, -2, 1.5, "2", True])
def test_cores_per_helper_must_be_a_positive_int(given: object) -> None:
    with pytest.raises(ValueError, match=r"cores_per_helper must be a positive int, got "):
        LocalBackend(spawners="processes", cores_per_helper=given)  # type: ignore[arg-type]


async def test_helpers_that_cannot_start_are_a_clear_error_naming_the_remedy(
    run_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Helper processes are the default: where they cannot start (here: no interpreter at
    ``sys.executable``), the run stops at its start with the way out, and leaves no pipe open."""
    monkeypatch.setattr(local_helpers, "_PYTHON", str(run_dir / "no-such-python"))
    open_before = len(os.listdir("/proc/self/fd"))
    ensemble = Ensemble([Task(id="a", command=("true",))], backend=LocalBackend(), run_dir=run_dir)
    with pytest.raises(BackendUnavailable) as err:
        await ensemble.run()
    assert "cannot start the local backend's spawner helper processes" in str(err.value)
    assert "no-such-python" in str(err.value) and "--local-spawners threads" in str(err.value)
    assert len(os.listdir("/proc/self/fd")) == open_before


def test_cores_per_helper_is_refused_with_worker_threads() -> None:
    with pytest.raises(ValueError, match="cores_per_helper applies to spawners='processes' only"):
        LocalBackend(spawners="threads", cores_per_helper=2)


@pytest.mark.parametrize(
    ("cores", "per_helper"),
    [(1, 1), (2, 1), (56, 1), (128, 1), (129, 2), (192, 2), (256, 2), (288, 3), (1024, 8)],
)
def test_by_default_a_helper_per_core_up_to_128_cores_then_groups_of_cores(
    cores: int, per_helper: int
) -> None:
    assert cores_per_helper_for(cores) == per_helper
    assert -(-cores // per_helper) <= HELPERS_AT_MOST
    assert cores_per_helper_for(cores, 3) == 3  # given: as given, however many cores


@two_cores
async def test_one_helper_for_two_cores_starts_each_task_pinned_to_its_own_core(
    tmp_path: Path,
) -> None:
    show = "import os; print(sorted(os.sched_getaffinity(0)), os.getppid())"
    backend = LocalBackend(cores=2, spawners="processes", cores_per_helper=2)
    async with opened(backend, tmp_path) as h:
        launches = [h.start(Task(id=f"t{i}", command=(sys.executable, "-c", show))) for i in (0, 1)]
        for launch in launches:
            assert (await h.outcome(launch)).state is TaskState.SUCCEEDED
        (helper,) = helpers_of(os.getpid())  # the tasks' parent, as they print below
    cores = sorted(os.sched_getaffinity(0))[:2]
    assert sorted(launch.placement[0].cores for launch in launches) == [(c,) for c in cores]
    for launch in launches:
        assert h.stdout(launch.task.id) == f"{list(launch.placement[0].cores)} {helper}\n"


@two_cores
async def test_tasks_booked_behind_running_ones_on_both_cores_of_a_helper_start_in_it(
    tmp_path: Path,
) -> None:
    """``queue_ahead`` with one helper for two cores: on each core the task booked behind the
    running one is started by the helper at that one's exit, while the driver's event loop is
    busy (it has not seen the exit): the helper waits for the launch booked last on each core,
    not only for the last one it was given."""
    go, run_dir = tmp_path / "go", tmp_path / "run"
    hold = f"while [ ! -e {go} ]; do sleep 0.01; done"
    show = "grep Cpus_allowed_list: /proc/self/status > cpus"
    tasks = [sh("x0", hold), sh("x1", hold), sh("r0", show), sh("r1", show)]
    backend = LocalBackend(cores=2, spawners="processes", cores_per_helper=2, queue_ahead=True)
    shown = [run_dir / "tasks" / r / "cpus" for r in ("r0", "r1")]
    async with anyio.create_task_group() as tg:
        tg.start_soon(Ensemble(tasks, backend=backend, run_dir=run_dir).run)
        deadline = time.monotonic() + 30
        while not {"r0", "r1"} <= started_ids(run_dir):  # r0 and r1 booked behind x0 and x1
            assert time.monotonic() < deadline, started_ids(run_dir)
            await anyio.sleep(0.01)
        go.touch()  # x0 and x1 end; the loop stays in this call until r0 and r1 have started
        while not all(path.exists() for path in shown) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert all(path.exists() for path in shown), "a booked task waited for the driver"
    events = list(read_journal(run_dir / "journal.jsonl"))
    booked_on = {e.id: e.placement[0].cores for e in events if isinstance(e, TaskStarted)}
    assert {booked_on["r0"], booked_on["r1"]} == {booked_on["x0"], booked_on["x1"]}
    for r, path in zip(("r0", "r1"), shown, strict=True):
        (core,) = booked_on[r]
        assert path.read_text().split() == ["Cpus_allowed_list:", str(core)]


@two_cores
async def test_a_helper_of_two_cores_that_dies_fails_the_launches_of_both(
    tmp_path: Path,
) -> None:
    backend = LocalBackend(cores=2, spawners="processes", cores_per_helper=2)
    async with opened(backend, tmp_path) as h:
        holds = [h.start(sh(f"hold{i}", HOLD)) for i in (0, 1)]
        pids = [
            await anyio.to_thread.run_sync(wait_for_pid, h.task_dir(launch.task.id) / "pid")
            for launch in holds
        ]
        (helper,) = helpers_of(os.getpid())
        os.kill(helper, signal.SIGKILL)
        for launch in holds:  # their exit statuses died with the helper
            assert (await h.outcome(launch)).state is TaskState.FAILED
        for pid in pids:
            assert not alive(pid, grace=10), "a task outlived its helper"
        nxt = [h.start(Task(id=f"next{i}", command=("true",))) for i in (0, 1)]
        assert sorted(launch.placement[0].cores for launch in nxt) == sorted(
            launch.placement[0].cores for launch in holds
        )
        for launch in nxt:  # booked on either core of the dead helper: failed at once
            outcome = await h.outcome(launch)
            assert (outcome.state, outcome.reason) == (TaskState.FAILED, DIED)


def test_a_driver_killed_outright_leaves_no_task_running(tmp_path: Path) -> None:
    # With worker threads a task outlives a SIGKILLed driver (``recover()`` finds it on
    # resume); a helper sees its booking pipe close and kills what it runs.
    driver = subprocess.Popen([sys.executable, "-c", DRIVER, str(tmp_path / "run")])
    try:
        task = wait_for_pid(tmp_path / "run" / "tasks" / "hold" / "pid")
        (helper,) = helpers_of(driver.pid)
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait()
        assert not alive(task, grace=10), "the task outlived its driver"
        assert not alive(helper, grace=10), "the helper outlived its driver"
    finally:
        driver.kill()
        driver.wait()


def test_a_helper_imports_only_what_it_runs() -> None:
    # Each module costs a helper's start-up (msgspec with typing_extensions: 0.06-0.09 s of CPU
    # where no bytecode is cached; signal's enums and contextlib 5-8 ms), which a short run of
    # small tasks pays in full.
    code = (
        "import sys; before = set(sys.modules); import matensemble.backends.local_helper; "
        "print(sorted({'msgspec', 'typing', 'subprocess', 'pathlib', 'shutil', 'enum', "
        "'contextlib'} & (set(sys.modules) - before)))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == "[]", done.stdout + done.stderr


def test_messages_of_enum_and_other_subclasses_travel_as_their_values() -> None:
    class Program(str, enum.Enum):
        TRUE = "true"

    book = Book(3, [([Program.TRUE, "-x"], None, [b"A=1"], [0, 1])], "/cwd", "/run/tasks/t", 2)
    (payload,) = Frames().feed(encode(book))
    assert decode(payload) == Book(
        3, [(["true", "-x"], None, [b"A=1"], [0, 1])], "/cwd", "/run/tasks/t", 2
    )
    (payload,) = Frames().feed(encode(Signal(12, signal.SIGTERM)))
    assert decode(payload) == Signal(12, 15)
    for message in (Started(1, [(0, 12)], 1.5, None), Exited(12, -9, 2.5), Drop(4), KillAll()):
        (payload,) = Frames().feed(encode(message))
        assert decode(payload) == message


async def test_a_task_whose_command_holds_a_string_enum_runs(
    tmp_path: Path, local_spawners: str
) -> None:
    class Program(str, enum.Enum):
        SH = "sh"

    backend = LocalBackend(cores=1, spawners=local_spawners)
    async with opened(backend, tmp_path) as h:
        outcome = await h.run(Task(id="e", command=(Program.SH, "-c", "exit 3")))
    assert outcome.returncode == 3, outcome


def test_a_helper_imports_the_drivers_package_not_one_in_its_working_directory(
    tmp_path: Path,
) -> None:
    # ``python -m`` puts the working directory first on the path: a helper started there
    # would import whatever ``matensemble`` it holds (another checkout, another version).
    # Python 3.11 has ``-P`` against it; on 3.10 the helper's start-up takes the entry off.
    elsewhere = tmp_path / "elsewhere" / "matensemble"
    elsewhere.mkdir(parents=True)
    (elsewhere / "__init__.py").write_text("raise ImportError('not the driver package')\n")
    script = tmp_path / "driver.py"
    script.write_text(
        "import asyncio, sys\n"
        "from matensemble import Ensemble, LocalBackend, Task\n"
        "backend = LocalBackend(cores=1, spawners='processes')\n"
        "tasks = [Task(id='t', command=('true',))]\n"
        "summary = asyncio.run(Ensemble(tasks, backend=backend, run_dir=sys.argv[1]).run())\n"
        "r = summary.results['t']; print(r.state.value, r.reason)\n"
    )
    here = str(Path(__file__).resolve().parents[1])
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")])),
    }
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "run")],
        cwd=elsewhere.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.stdout.strip() == "succeeded None", done.stdout + done.stderr


async def test_a_helper_that_dies_fails_its_launch_and_leaves_nothing_running(
    tmp_path: Path,
) -> None:
    async with opened(LocalBackend(cores=1, spawners="processes"), tmp_path) as h:
        launch = h.start(sh("hold", HOLD))
        task = await anyio.to_thread.run_sync(wait_for_pid, h.task_dir("hold") / "pid")
        (helper,) = helpers_of(os.getpid())
        os.kill(helper, signal.SIGKILL)
        outcome = await h.outcome(launch)
        assert outcome.state is TaskState.FAILED
        assert not alive(task, grace=10), "the task outlived its helper"
        # The backend goes on without that core's helper: what is booked there fails.
        nxt = await h.run(Task(id="next", command=("true",)))
        assert nxt.state is TaskState.FAILED
        assert nxt.reason == DIED


async def test_a_timeout_counts_from_the_start_while_the_helper_is_still_starting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The helpers start in open(), and a launch made at once waits in its pipe until its helper
    # has imported what it needs (80 ms here, seconds on a loaded node; one second below).
    slow = tmp_path / "slow"
    slow.mkdir()
    (slow / "sitecustomize.py").write_text("import time\ntime.sleep(1)\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(slow), os.environ.get("PYTHONPATH", "")]))
    async with opened(LocalBackend(cores=1, spawners="processes"), tmp_path) as h:
        outcome = await h.run(Task(id="quick", command=("true",), timeout=0.5))
    assert outcome.state is TaskState.SUCCEEDED, outcome


def test_a_helper_whose_reports_nobody_reads_kills_what_it_started_and_exits(
    tmp_path: Path,
) -> None:
    # The driver died between the helper's wake-up and its report: the report's write finds
    # the pipe broken before the end of the bookings is read. The task it just started must
    # not live on without a driver.
    book_r, book_w = os.pipe()
    report_r, report_w = os.pipe()
    module = "matensemble.backends.local_helper"
    helper = subprocess.Popen(
        [sys.executable, "-m", module, str(book_r), str(report_w), "-1"],
        pass_fds=(book_r, report_w),
    )
    os.close(book_r)
    os.close(report_w)
    try:
        env = [f"{k}={v}".encode() for k, v in os.environ.items()]
        hold = [(["sh", "-c", "echo $$ > pid; exec sleep 60"], None, env, [])]
        book = Book(0, hold, str(tmp_path), str(tmp_path / "hold"))
        os.write(book_w, encode(book))
        task = wait_for_pid(tmp_path / "pid")
        os.close(report_r)  # nobody reads its reports from now on
        book = Book(1, [(["true"], None, env, [])], str(tmp_path), str(tmp_path / "next"))
        os.write(book_w, encode(book))  # its report finds no reader
        assert helper.wait(timeout=10) == 0, "the helper did not end cleanly"
        assert not alive(task, grace=10), "the task outlived the helper"
    finally:
        os.close(book_w)
        helper.kill()
        helper.wait()
