"""Waiting for the local backend's processes (``local_exits.ExitWatch``): real processes, pidfds."""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path

from matensemble.backends.local_exits import ExitWatch

Exit = tuple[object, int, int, "int | None"]


class Watcher:
    """An ``ExitWatch`` on the running loop, and the exits it reported, in order."""

    def __init__(self) -> None:
        self.exits: list[Exit] = []
        self.taken_in = 0
        self.changed = asyncio.Event()
        self.watch = ExitWatch(asyncio.get_running_loop(), self._on_exit, self._take_in)

    def _on_exit(self, token: object, pid: int, rank: int, code: int | None) -> None:
        self.exits.append((token, pid, rank, code))
        self.changed.set()

    def _take_in(self) -> None:
        self.taken_in += 1

    def start(self, token: object, command: str, rank: int = 0) -> int:
        process = subprocess.Popen(["sh", "-c", command], start_new_session=True)
        process.returncode = 0  # reaped by the watch, not by Popen
        pidfd = os.pidfd_open(process.pid)
        self.watch.add(pidfd)
        self.watch.watch(pidfd, token, process.pid, rank)
        return process.pid

    async def until(self, count: int) -> None:
        while len(self.exits) < count:
            self.changed.clear()
            await asyncio.wait_for(self.changed.wait(), 30)


async def test_an_exit_is_reported_once_with_its_token_rank_and_code() -> None:
    watcher = Watcher()
    pid = watcher.start("launch-a", "exit 3", rank=2)
    await watcher.until(1)
    assert watcher.exits == [("launch-a", pid, 2, 3)]
    assert watcher.taken_in >= 1  # what the workers started is taken in before exits are read
    await asyncio.sleep(0.05)  # a pidfd that keeps reporting would add a second exit here
    assert len(watcher.exits) == 1
    watcher.watch.close()


async def test_a_process_killed_by_a_signal_reports_minus_the_signal() -> None:
    watcher = Watcher()
    watcher.start("killed", "kill -9 $$")
    await watcher.until(1)
    assert watcher.exits[0][3] == -9
    watcher.watch.close()


async def test_what_an_exited_leader_left_in_its_group_is_killed(tmp_path: Path) -> None:
    watcher = Watcher()
    left = tmp_path / "left.pid"
    watcher.start("leader", f"sleep 300 & echo $! > {left}.tmp; mv {left}.tmp {left}")
    await watcher.until(1)
    orphan = int(left.read_text())
    # Killed before the leader was reaped; gone (or a zombie for init to reap) soon after.
    for _ in range(200):
        if not _alive(orphan):
            break
        await asyncio.sleep(0.01)
    assert not _alive(orphan)
    watcher.watch.close()


async def test_descriptor_numbers_used_again_report_each_process_exactly_once() -> None:
    """A pidfd that reported is closed without leaving the epoll set (``EPOLLONESHOT``); the
    next pidfd often gets the same number, and must be reported as itself, once."""
    watcher = Watcher()
    pids = []
    for i in range(40):
        pids.append(watcher.start(i, f"exit {i % 7}"))
        await watcher.until(i + 1)
    assert [(token, pid, code) for token, pid, _, code in watcher.exits] == [
        (i, pid, i % 7) for i, pid in enumerate(pids)
    ]
    await asyncio.sleep(0.05)
    assert len(watcher.exits) == 40
    watcher.watch.close()


async def test_many_processes_at_once_are_each_reported_once() -> None:
    watcher = Watcher()
    pids = {watcher.start(i, f"exit {i % 5}") for i in range(30)}
    await watcher.until(30)
    assert {pid for _, pid, _, _ in watcher.exits} == pids
    assert sorted(token for token, *_ in watcher.exits) == list(range(30))  # type: ignore[type-var]
    watcher.watch.close()


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not count: it has exited)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
