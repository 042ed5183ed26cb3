from __future__ import annotations

import os
import re
import select
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from matensemble.events import Event, TaskFinished, TaskStarted, TaskWithdrawn
from matensemble.model import TaskState
from matensemble.observer import Observer


class InvariantChecker(Observer):
    """Follows the event stream and fails the test the moment an invariant breaks.

    Checks: no core or GPU id is granted twice at once, nothing exceeds the node sizes
    (invariant 1); a task starts only after every prerequisite succeeded (invariant 3); every
    task ends exactly once, with a reason unless it succeeded (invariant 2). With
    ``queue_ahead`` (a backend that queues up to that many launches ahead on an id, whose
    booked tasks are journaled as started on the ids of the task running there:
    ``matensemble.queue_ahead``) an id may be granted to that many more tasks while the first
    holds it, and instead no two tasks' processes ever ran on one id at once (their results'
    start and end times).
    """

    def __init__(self, cores_per_node: int, gpus_per_node: int, queue_ahead: int = 0) -> None:
        self.cores_per_node = cores_per_node
        self.gpus_per_node = gpus_per_node
        self.holders = 1 + queue_ahead  # the running task, and those booked behind it
        self.after: dict[str, tuple[str, ...]] = {}
        self.in_use: dict[tuple[str, str, object], list[str]] = {}
        self.placements: dict[str, tuple] = {}
        self.ran: dict[tuple[str, str, object], list[tuple[float, float, str]]] = {}
        self.final: dict[str, TaskState] = {}
        self.started: list[str] = []

    def on_event(self, event: Event) -> None:
        if type(event).__name__ == "TaskAdded":
            self.after[event.task.id] = event.task.after  # type: ignore[union-attr]
        elif isinstance(event, TaskStarted):
            for dep in self.after[event.id]:
                assert self.final.get(dep) is TaskState.SUCCEEDED, (event.id, dep)
            assert event.id not in self.final
            for slot in event.placement:
                assert all(0 <= core < self.cores_per_node for core in slot.cores)
                for key in self._ids(slot):
                    holders = self.in_use.setdefault(key, [])
                    assert len(holders) < self.holders, f"{key[1]} {key} given twice: {holders}"
                    holders.append(event.id)
            self.placements[event.id] = event.placement
            self.started.append(event.id)
        elif isinstance(event, TaskWithdrawn):
            self._give_back(event.id)
        elif isinstance(event, TaskFinished):
            result = event.result
            placement = self.placements.get(result.id, ())
            self._give_back(result.id)
            if result.start_time is not None and result.end_time is not None:
                span = (result.start_time, result.end_time, result.id)
                for slot in placement:
                    for key in self._ids(slot):
                        for start, end, other in self.ran.get(key, ()):
                            assert end <= span[0] or span[1] <= start, f"{key}: {other}, {span}"
                        self.ran.setdefault(key, []).append(span)
            if event.retry_in is None:
                assert result.id not in self.final, f"{result.id} ended twice"
                assert result.state.terminal
                if result.state is not TaskState.SUCCEEDED:
                    assert result.reason, f"{result.id} {result.state} without a reason"
                self.final[result.id] = result.state

    @staticmethod
    def _ids(slot: Any) -> list[tuple[str, str, object]]:
        return [(slot.node, "core", c) for c in slot.cores] + [
            (slot.node, "gpu", g) for g in slot.gpus
        ]

    def _give_back(self, task_id: str) -> None:
        for slot in self.placements.pop(task_id, ()):
            for key in self._ids(slot):
                holders = self.in_use[key]
                holders.remove(task_id)
                if not holders:
                    del self.in_use[key]


def started_at_most(journal: Path) -> tuple[int, int]:
    """From a run's journal: the most tasks started and not finished at once before the first
    finished, and over the whole run (with queueing ahead, booked tasks count as started)."""
    from matensemble.journal import read_journal

    in_flight = most = 0
    before_first_end: int | None = None
    for event in read_journal(journal):
        if isinstance(event, TaskStarted):
            in_flight += 1
            most = max(most, in_flight)
        elif isinstance(event, TaskFinished):
            before_first_end = most if before_first_end is None else before_first_end
            in_flight -= 1
    return (most if before_first_end is None else before_first_end), most


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return tmp_path / "run"


# A task command that writes its pid where ``pid_of`` reads it, then holds its cores a minute.
HOLD = "echo $$ > pid; exec sleep 60"


async def pid_of(run_dir: Path, task_id: str) -> int:
    """The pid task ``task_id`` wrote into ``pid`` in its task directory under ``run_dir``
    (waiting, with the event loop running, until it is there)."""
    pid_file = run_dir / "tasks" / task_id / "pid"
    deadline = time.monotonic() + 20
    while not (pid_file.exists() and pid_file.read_text().strip()):
        assert time.monotonic() < deadline, f"{task_id} wrote no pid"
        await anyio.sleep(0.01)
    return int(pid_file.read_text())


def alive(pid: int, grace: float = 5.0) -> bool:
    """Is ``pid`` still alive after at most ``grace`` seconds? (SIGKILL takes a moment.)

    Waits on a pidfd (readable once the process has exited), so this is no polling loop; a
    zombie that nobody reaps counts as dead.
    """
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return False
    try:
        readable, _, _ = select.select([fd], [], [], grace)
    finally:
        os.close(fd)
    return not readable


def cli_environment(columns: int = 1000) -> dict[str, str]:
    """The environment a test runs ``matensemble`` in: this one, ``columns`` wide, no colours."""
    return {**os.environ, "COLUMNS": str(columns), "NO_COLOR": "1"}


def under_flux_cli(test: Callable[..., Any]) -> Callable[..., Any]:
    """Marks a test that runs ``flux start`` itself (with ``flux_cli_environment``): a
    ``flux`` test, skipped where no ``flux`` command is on ``PATH``."""
    skip = pytest.mark.skipif(shutil.which("flux") is None, reason="no `flux` command on PATH")
    return pytest.mark.flux(skip(test))


def flux_cli_environment() -> dict[str, str] | None:
    """``cli_environment()`` plus a real `flux` and its Python bindings (this interpreter's
    directory first on ``PATH``), or None without them."""
    flux = shutil.which("flux")
    if flux is None:
        return None
    out = subprocess.run([flux, "env"], capture_output=True, text=True, check=False).stdout
    found = re.search(r'^export PYTHONPATH="([^"]*)"', out, re.MULTILINE)
    env = cli_environment()
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    if found:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (found[1], env.get("PYTHONPATH")) if p)
    return env


def matensemble(
    *args: str | Path, cwd: Path, columns: int = 1000
) -> subprocess.CompletedProcess[str]:
    """Run the ``matensemble`` command to its end, as a user would; wide (by default),
    uncoloured output."""
    return subprocess.run(
        [sys.executable, "-m", "matensemble", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=cli_environment(columns),
        timeout=300,
        check=False,
    )


def start_matensemble(*args: str | Path, cwd: Path) -> subprocess.Popen[str]:
    """A ``matensemble`` driver process, running in the background (no progress display); its
    stdout and stderr are pipes, read with ``communicate``."""
    return subprocess.Popen(
        [sys.executable, "-m", "matensemble", *map(str, args), "--no-progress"],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_environment(),
    )


def dead(pid: int, grace: float = 5.0) -> bool:
    """Whether process ``pid`` is gone, or goes within ``grace`` seconds (watched by pidfd)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        return bool(select.select([fd], [], [], grace)[0])
    finally:
        os.close(fd)


@pytest.fixture(params=["threads", "processes", "processes, 2 cores per helper"])
def local_spawners(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Runs a test once with each of ``LocalBackend``'s spawners as the default: its worker
    threads, its helper processes (``local_helpers``) one per core, and one per pair of cores
    (``cores_per_helper=2``: on two cores, one helper starts the tasks of both). Returns the
    spawners' name."""
    from matensemble.backends.local import LocalBackend

    defaults = LocalBackend.__init__.__kwdefaults__
    assert defaults is not None
    spawners, _, grouped = str(request.param).partition(", ")
    monkeypatch.setitem(defaults, "spawners", spawners)
    if grouped:
        monkeypatch.setitem(defaults, "cores_per_helper", 2)
    return spawners
