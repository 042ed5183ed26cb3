"""Waiting for the local backend's processes: one ``epoll`` set of ``pidfd``s, no thread.

A ``pidfd`` turns readable when its process exits. Every unreaped process's pidfd sits in one
``epoll`` set, which the event loop watches (``loop.add_reader``), so a batch of exits costs one
callback and no polling. A worker thread adds the pidfd of each process it starts (``add``:
``epoll_ctl`` is thread-safe); the loop learns whose it is (``watch``) when it takes in what
the workers started, which it does (``take_in``) after each poll and before it looks up the
pidfds that poll reported.

A pidfd is added with ``EPOLLONESHOT``: once it has reported the exit it is disabled, so the
loop closes it without taking it out of the set first (one system call less per process). A
child being started may hold a copy of the descriptor until its ``exec``, which keeps the
closed one in the set until then, disabled: it can report nothing more, and a new pidfd that
gets the same number is another entry.

When a process exits, what it left running in its process group is killed before it is reaped
(a group id cannot be reused while its leader is an unreaped zombie), then ``on_exit`` hears
its exit code.
"""

from __future__ import annotations

import asyncio
import os
import select
import signal
from collections.abc import Callable

from matensemble.backends.local_inventory import kill_group

__all__ = ["ExitWatch", "reap"]

# on_exit(token, pid, rank, exit code: negative for a signal, None if the status was lost)
OnExit = Callable[[object, int, int, "int | None"], None]


class ExitWatch:
    """The pidfds of a backend's unreaped processes, each with the launch it belongs to."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, on_exit: OnExit, take_in: Callable[[], None]
    ) -> None:
        self._loop = loop
        self._on_exit = on_exit
        self._take_in = take_in
        self._epoll = select.epoll()
        self._watched: dict[int, tuple[object, int, int]] = {}  # pidfd -> token, pid, rank
        loop.add_reader(self._epoll.fileno(), self._exited)

    def add(self, pidfd: int) -> None:
        """Watch ``pidfd`` (any thread; ``watch`` must follow before the loop's next poll ends)."""
        self._epoll.register(pidfd, select.EPOLLIN | select.EPOLLONESHOT)

    def watch(self, pidfd: int, token: object, pid: int, rank: int) -> None:
        """Whose ``pidfd`` is (event loop thread)."""
        self._watched[pidfd] = (token, pid, rank)

    def close(self) -> None:
        """Stop watching (every process has been reaped)."""
        self._loop.remove_reader(self._epoll.fileno())
        self._epoll.close()

    def _exited(self) -> None:
        """Some pidfds turned readable: their processes have exited."""
        exited = self._epoll.poll(0)
        # Then take in what the workers started: every pidfd in `exited` was added, and its
        # launch left for the loop, before the poll.
        self._take_in()
        for pidfd, _ in exited:
            token, pid, rank = self._watched.pop(pidfd)
            os.close(pidfd)  # disabled by EPOLLONESHOT: no need to take it out first
            kill_group(pid, signal.SIGKILL)
            self._on_exit(token, pid, rank, reap(pid))


def reap(pid: int) -> int | None:
    """Reap the exited ``pid``: its exit code (negative: a signal), or ``None`` if lost (someone
    else reaped it: a lost status is never taken for a success)."""
    try:
        _, status = os.waitpid(pid, 0)
    except ChildProcessError:
        return None
    return os.waitstatus_to_exitcode(status)
