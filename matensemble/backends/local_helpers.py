"""The local backend's spawner helper processes, as the driver sees them.

With ``LocalBackend(spawners="processes")`` each core, or each group of ``cores_per_helper``
cores, has a helper process of its own (``local_helper``), pinned to them, that starts the
launches whose first core is there, waits for their processes and reaps them, outside the
driver's interpreter: no worker thread, no GIL shared with the event loop, and no ``vfork`` or
file made in the driver. ``Helpers`` offers what ``local_spawner.Spawners`` offers the backend
(``submit``, ``wake``, ``kill``, ``close``) and reports starts (``deliver``) and exits
(``on_exit``) as they arrive on the helpers' pipes, which the event loop watches.

A launch booked ``after`` another (queueing ahead) waits in the helper, which starts it the
moment the process before it exits, before it reports that exit; ``after`` may itself wait
there, behind another (a chain, ``Backend.queue_ahead_depth``). ``after`` must be the launch
booked last with the same first core: the same helper runs it, and nothing else waits for it
there (a helper keeps one booking per launch it waits for).

Signals go through the helper (``signal``): only it reaps, so only it knows that a group id is
still its task's. A helper that dies takes the launches of all its cores with it: their
processes are reported as exited with a lost status, and those not started yet as failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

from matensemble.backends.local_failures import Process
from matensemble.backends.local_helper_messages import (
    Book,
    Drop,
    Exited,
    Frames,
    KillAll,
    Signal,
    Started,
    ToHelper,
    decode,
    encode,
)
from matensemble.backends.local_inventory import kill_group
from matensemble.backends.local_spawner import Started as Delivered
from matensemble.errors import BackendUnavailable

__all__ = ["HELPERS_AT_MOST", "QUEUE_AHEAD_DEPTH", "Helpers", "cores_per_helper_for"]

_DIED = "the spawner helper process died"
_PYTHON = sys.executable  # the helpers' interpreter: this one, as it was at import
# The helpers import this very package, wherever the driver found it: not another one in the
# working directory, which ``-m`` would put first on the path. ``-P`` keeps it off from Python
# 3.11 on; on 3.10 a ``-c`` start-up puts this package's directory in its place first.
_HERE = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_MODULE = "matensemble.backends.local_helper"
_START = (
    ("-P", "-m", _MODULE)
    if sys.version_info >= (3, 11)
    else (
        "-c",
        f"import sys; sys.path[0] = {_HERE!r}; import runpy; "
        f"runpy.run_module({_MODULE!r}, run_name='__main__', alter_sys=True)",
    )
)
# on_exit(token, pid, rank, exit code: negative for a signal, None if the status was lost)
OnExit = Callable[[object, int, int, "int | None"], None]
# By default one helper per core up to this many cores, then groups of cores so that at most
# this many helpers run (each owns 4-5 MiB and takes 10-20 ms of CPU to start: 0.6 GiB and
# about 2 s of CPU, spread over the cores, for 128).
HELPERS_AT_MOST = 128

# How many launches the helpers take queued ahead on a core (``Backend.queue_ahead_depth``):
# the driver's round trip between an exit and the next booking then has that many tasks' run
# to fit in. On 2 cores, 4,000 `true` (docs/local-backend.md): 2 ran 1.05x the tasks/s of 1
# (median of 16 pairs), 3 ran 1.03x of 2 (8 of 8 pairs faster), 4 1.00x of 3.
QUEUE_AHEAD_DEPTH = 3


def cores_per_helper_for(cores: int, given: int | None = None) -> int:
    """``given`` (``LocalBackend(cores_per_helper=...)``), checked; else the default for
    ``cores`` cores: 1 up to ``HELPERS_AT_MOST`` cores, then as few as keep the helpers at most
    that many (e.g. 2 on a node of 256 hardware threads).

    Raises:
        ValueError: ``given`` is not a positive int.
    """
    if given is None:
        return max(1, -(-cores // HELPERS_AT_MOST))
    if isinstance(given, bool) or not isinstance(given, int) or given < 1:
        raise ValueError(f"cores_per_helper must be a positive int, got {given!r}")
    return given


class _Helper:
    """One helper process, pinned to ``cores``, and the driver's ends of its pipes."""

    def __init__(self, cores: Sequence[int]) -> None:
        book_r, self.book_w = os.pipe2(os.O_CLOEXEC)
        self.report_r, report_w = os.pipe2(os.O_CLOEXEC)
        cores_arg = ",".join(map(str, cores))
        path = [_HERE, os.environ.get("PYTHONPATH")]
        try:
            self.process = subprocess.Popen(
                [_PYTHON, *_START, str(book_r), str(report_w), cores_arg],
                pass_fds=(book_r, report_w),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, path))},
                start_new_session=True,  # Ctrl-C at the terminal is the driver's to act on
            )
        except BaseException:
            os.close(self.book_w)
            os.close(self.report_r)
            raise
        finally:
            os.close(book_r)
            os.close(report_w)
        self.frames = Frames()


class Helpers:
    """The spawner helpers of one backend, one per ``cores_per_helper`` cores (consecutive in
    ``cores``; the last group may have fewer)."""

    def __init__(
        self,
        cores: Sequence[int],
        loop: asyncio.AbstractEventLoop,
        deliver: Callable[[Delivered], None],
        on_exit: OnExit,
        urgent: Callable[[object], bool],
        exit_seen: Callable[[object, float], None] | None = None,
        cores_per_helper: int = 1,
    ) -> None:
        self._loop = loop
        self._deliver = deliver
        self._on_exit = on_exit
        self._urgent = urgent
        self._exit_seen = exit_seen or (lambda token, when: None)
        step = cores_per_helper
        groups = [cores[i : i + step] for i in range(0, len(cores), step)]
        self._helpers: list[_Helper] = []
        try:
            for group in groups:
                self._helpers.append(_Helper(group))
        except OSError as exc:  # no such interpreter, no process or descriptor left
            for helper in self._helpers:  # EOF: each exits at once
                os.close(helper.book_w)
                os.close(helper.report_r)
                helper.process.wait()
            raise BackendUnavailable(
                f"cannot start the local backend's spawner helper processes ({_PYTHON!r}: "
                f"{exc}); LocalBackend(spawners='threads') (--local-spawners threads) starts "
                "the tasks from threads of the driver instead"
            ) from exc
        self._helper_of = {core: i for i, group in enumerate(groups) for core in group}
        self._next_seq = 0
        # A launch's "first": its first core (-1: none), whose helper starts it.
        self._booked: dict[int, tuple[object, int]] = {}  # seq -> token, first; not started
        self._seq: dict[object, tuple[int, int]] = {}  # token -> seq, unreaped processes
        self._procs: dict[int, tuple[object, int, int]] = {}  # pid -> token, rank, first
        self._last: dict[int, object] = {}  # first -> the unfinished launch booked last there
        self._dead: set[int] = set()  # helpers that died
        for index, helper in enumerate(self._helpers):
            loop.add_reader(helper.report_r, self._read, index)

    def submit(
        self,
        token: object,
        plan: list[Process],
        cwd: str,
        task_dir: str,
        outputs: tuple[int, int] | None,
        after: object = None,
    ) -> bool:
        """As ``Spawners.submit``: the helper of the launch's first core opens its outputs in
        ``task_dir`` (``outputs`` given are closed) and starts it, or with ``after``, if
        ``after`` was the launch booked last with the same first core, once ``after``'s one
        process has exited (or ``after`` ended without starting one).

        Nothing is booked behind an ``after`` that may have been dropped while it waits (it is
        being stopped and has not started, as far as the driver knows): its helper would no
        longer know what it waited for, and would start the new launch at once."""
        cores = plan[0][3]
        first = cores[0] if cores else -1
        if after is not None and (
            self._last.get(first) is not after or (not self._seq[after][1] and self._urgent(after))
        ):
            return False
        index = self._helper_of.get(first, 0)
        for fd in outputs or ():
            os.close(fd)
        self._last[first] = token
        seq = self._next_seq
        self._next_seq += 1
        self._booked[seq] = (token, first)
        self._seq[token] = (seq, 0)
        if index in self._dead:  # reported on the loop's next turn, never from inside launch()
            died = Started(seq, [], None, _DIED)
            self._loop.call_soon(self._started, died)
            return True
        after_seq = self._seq[after][0] if after is not None and after in self._seq else -1
        self._send(index, Book(seq, plan, cwd, task_dir, after_seq))
        return True

    def signal(self, pid: int, signum: int) -> None:
        """Signal ``pid``'s process group, unless its helper has reaped it already."""
        found = self._procs.get(pid)
        if found is not None:
            self._send(self._helper_of.get(found[2], 0), Signal(pid, signum))

    def wake(self, core: int) -> None:
        """A launch booked on ``core`` is being stopped: if it waits there, it never starts."""
        helper_of = self._helper_of
        index = helper_of.get(core, 0)
        for seq, (token, first) in list(self._booked.items()):
            if helper_of.get(first, 0) == index and self._urgent(token):
                self._send(index, Drop(seq))

    def hand_over(self) -> None:
        """Nothing to do: starts are delivered as they are read."""

    def kill(self) -> None:
        """SIGKILL every process the helpers run, and every one they start from now on."""
        for index in range(len(self._helpers)):
            self._send(index, KillAll())

    def close(self) -> None:
        """Let the helpers go (each kills what it still runs, then exits), and reap them."""
        for helper in self._helpers:
            self._loop.remove_reader(helper.report_r)
            os.close(helper.book_w)  # EOF
        for helper in self._helpers:
            try:
                helper.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                helper.process.kill()
                helper.process.wait()
            os.close(helper.report_r)

    def _send(self, index: int, message: ToHelper) -> None:
        with contextlib.suppress(BrokenPipeError):  # it died: its reports say so
            os.write(self._helpers[index].book_w, encode(message))

    def _read(self, index: int) -> None:
        helper = self._helpers[index]
        chunk = os.read(helper.report_r, 1 << 16)
        if not chunk:
            self._lost(index)
            return
        for payload in helper.frames.feed(chunk):
            message = decode(payload)
            if isinstance(message, Started):
                self._started(message)
            elif isinstance(message, Exited):
                self._exited(message)

    def _started(self, message: Started) -> None:
        token, first = self._booked.pop(message.seq)
        processes = [(rank, pid, -1) for rank, pid in message.processes]
        for rank, pid in message.processes:
            self._procs[pid] = (token, rank, first)
        if processes:
            self._seq[token] = (message.seq, len(processes))
        else:
            self._forget(token, first)
        self._deliver(Delivered(token, processes, message.start_time, message.failure))

    def _exited(self, message: Exited) -> None:
        token, rank, first = self._procs.pop(message.pid)
        seq, left = self._seq[token]
        if left > 1:
            self._seq[token] = (seq, left - 1)
        else:
            self._forget(token, first)
        self._exit_seen(token, message.when)
        self._on_exit(token, message.pid, rank, message.code)

    def _forget(self, token: object, first: int) -> None:
        """The launch ``token``, first on core ``first``, is over: nothing waits behind it."""
        del self._seq[token]
        if self._last.get(first) is token:  # a launch is only ever its own first core's last
            del self._last[first]

    def _lost(self, index: int) -> None:
        """Helper ``index`` died: the launches of all its cores end, their processes' statuses
        lost."""
        self._loop.remove_reader(self._helpers[index].report_r)
        self._dead.add(index)
        helper_of = self._helper_of
        for seq, (_, first) in list(self._booked.items()):
            if helper_of.get(first, 0) == index:
                self._started(Started(seq, [], None, _DIED))
        for pid, (_, _, first) in list(self._procs.items()):
            if helper_of.get(first, 0) == index:
                # Nobody reaps it now (it is init's child): its group id is, for the moment
                # this takes, still its own.
                kill_group(pid, signal.SIGKILL)
                self._exited(Exited(pid, None, time.time()))
