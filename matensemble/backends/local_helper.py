"""A spawner helper process of the local backend: starts, waits for and reaps the processes
of the launches booked on its cores (one core, or a group of them), outside the driver's
interpreter.

``python -m matensemble.backends.local_helper BOOKINGS REPORTS CORES`` reads ``Book``,
``Signal``, ``Drop`` and ``KillAll`` messages (``local_helper_messages``) from the descriptor
``BOOKINGS`` and writes ``Started`` and ``Exited`` to ``REPORTS``. It pins itself to ``CORES``
(comma-separated ids; ``-1``: it stays where it was started); each launch is started with the
helper's mask set to the launch's cores first (a child inherits it), as the backend's worker
threads do. The mask is left as it is after the start: a helper of one core never changes it,
one of a group follows its launches within the group.

Everything waits in one ``poll``: the bookings and a pidfd per running process. When a process
exits, what it left in its group is killed, it is reaped, a launch booked ``after`` it starts at
once, and only then is the exit reported: the next process is running before the driver has
even been woken. Only this process reaps its children, so only it signals their groups (a group
id cannot be reused while its leader is unreaped).

Bookings chain: one booked ``after`` a booking that waits itself waits behind it, and starts
when that one has run, or at once if that one starts nothing (it could not start: its cores
are free). A booking dropped while it waits passes its place to the one behind it. After
``KillAll`` nothing that waits starts: each is reported as never started.

At EOF on ``BOOKINGS`` (the driver closed it, or died: the kernel closes its descriptors) every
group still running gets SIGKILL, is reaped, and the helper exits: it leaves no task behind.
"""

from __future__ import annotations

import os
import select
import sys
import time

from matensemble.backends.local_failures import LaunchError, describe_spawn_error, open_outputs
from matensemble.backends.local_helper_messages import (
    Book,
    Drop,
    Exited,
    Frames,
    FromHelper,
    KillAll,
    Signal,
    Started,
    ToHelper,
    decode,
    encode,
)
from matensemble.backends.local_spawn import spawn
from matensemble.backends.task_files import TaskOutputs

__all__ = ["Helper"]


class Helper:
    """The state of one helper: its running processes and the bookings waiting for one."""

    def __init__(self, bookings: int, reports: int, cores: tuple[int, ...]) -> None:
        self._bookings = bookings
        self._reports = reports
        self._mask: tuple[int, ...] = tuple(sorted(os.sched_getaffinity(0)))
        self._all_cores = self._mask
        if cores:
            self._pin(cores)
        self._stdin = os.open(os.devnull, os.O_RDONLY)
        self._outputs = TaskOutputs()
        self._poller = select.poll()
        self._poller.register(bookings, select.POLLIN)
        self._running: dict[int, tuple[int, int]] = {}  # pidfd -> pid, seq
        self._pids: dict[int, int] = {}  # pid -> pidfd, of each unreaped process
        self._left: dict[int, int] = {}  # seq -> its unreaped processes
        self._waiting: dict[int, Book] = {}  # after -> the booking that waits for it
        self._after: dict[int, int] = {}  # seq of a booking that waits -> its after
        self._killed = False
        self._reports_gone = False  # nobody reads the reports any more
        self._out: list[bytes] = []  # reports to write at the end of this turn

    def serve(self) -> None:
        frames = Frames()
        open_ = True
        while open_ or self._running:
            for fd, _ in self._poller.poll():
                if fd == self._bookings:
                    chunk = os.read(fd, 1 << 16)
                    if not chunk:  # the driver is gone: so are its tasks
                        open_ = False
                        self._poller.unregister(fd)
                        self._kill_all()
                    for message in frames.feed(chunk):
                        self._take(decode(message))
                elif fd in self._running:
                    self._exited(fd)
            if self._out:
                try:
                    os.write(self._reports, b"".join(self._out))
                except BrokenPipeError:  # the driver is gone, its bookings not read yet
                    if open_:
                        open_ = False
                        self._poller.unregister(self._bookings)
                        self._kill_all()
                    self._reports_gone = True
                self._out.clear()

    def _take(self, message: ToHelper | FromHelper) -> None:
        if isinstance(message, Book):
            after = message.after
            if after >= 0 and (after in self._left or after in self._after):
                self._waiting[after] = message  # behind one that runs, or waits itself
                self._after[message.seq] = after
            else:
                self._start(message)
        elif isinstance(message, Signal):
            if message.pid in self._pids:
                _kill_group(message.pid, message.signum)
        elif isinstance(message, Drop):
            waited_for = self._after.pop(message.seq, None)
            if waited_for is not None:
                book = self._waiting.pop(waited_for)
                self._report(Started(book.seq, [], None, None))
                behind = self._waiting.pop(book.seq, None)
                if behind is not None:  # it waits for what the dropped one waited for
                    self._waiting[waited_for] = behind
                    self._after[behind.seq] = waited_for
        elif isinstance(message, KillAll):
            self._kill_all()

    def _kill_all(self) -> None:
        self._killed = True
        for pid in self._pids:
            _kill_group(pid, _SIGKILL)

    def _start(self, book: Book) -> bool:
        """Start ``book``'s processes and report it; whether any of them is still running."""
        processes: list[tuple[int, int]] = []
        start_time: float | None = None
        failure: str | None = None
        try:
            out, err = open_outputs(self._outputs, book.task_dir)
        except LaunchError as exc:
            self._report(Started(book.seq, processes, None, str(exc)))
            return False
        except Exception as exc:  # a bug: fail the launch, keep the helper
            self._report(Started(book.seq, processes, None, f"cannot open the outputs: {exc!r}"))
            return False
        try:
            for rank, (argv, executable, env, cores) in enumerate(book.plan):
                self._pin(tuple(cores) or None)
                try:
                    pid = spawn(argv, executable, env, book.cwd, (self._stdin, out, err))
                except Exception as exc:  # OSError, ValueError (a NUL), SubprocessError
                    failure = describe_spawn_error(exc, (argv, executable, env, cores), book.cwd)
                    break
                start_time = start_time or time.time()
                self._watch(pid, book.seq)
                processes.append((rank, pid))
                if self._killed:
                    _kill_group(pid, _SIGKILL)
        except BaseException as exc:  # a bug, or cores it may not pin to: fail the launch only
            failure = f"cannot start {book.plan[0][0][0]!r}: {exc!r}"
        finally:
            os.close(out)
            os.close(err)
        self._report(Started(book.seq, processes, start_time, failure))
        return book.seq in self._left

    def _pin(self, cores: tuple[int, ...] | None) -> None:
        cores = cores or self._all_cores
        if cores != self._mask:
            os.sched_setaffinity(0, cores)
            self._mask = cores

    def _watch(self, pid: int, seq: int) -> None:
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:  # out of descriptors: wait for it here rather than lose it
            _kill_group(pid, _SIGKILL)
            self._report(Exited(pid, _reap(pid), time.time()))
            return
        self._poller.register(pidfd, select.POLLIN)
        self._running[pidfd] = (pid, seq)
        self._pids[pid] = pidfd
        self._left[seq] = self._left.get(seq, 0) + 1

    def _exited(self, pidfd: int) -> None:
        pid, seq = self._running.pop(pidfd)
        self._poller.unregister(pidfd)
        os.close(pidfd)
        del self._pids[pid]
        _kill_group(pid, _SIGKILL)  # what it left in its group, before the group id goes
        code = _reap(pid)
        when = time.time()
        self._left[seq] -= 1
        if not self._left[seq]:
            del self._left[seq]
            self._start_behind(seq)  # its successor first, then the news
        self._report(Exited(pid, code, when))

    def _start_behind(self, seq: int) -> None:
        """Launch ``seq`` is over: start the booking that waits for it; if that one starts no
        process that still runs, the one behind it, and so on. Killed: none of them starts."""
        while (book := self._waiting.pop(seq, None)) is not None:
            del self._after[book.seq]
            if self._killed:
                self._report(Started(book.seq, [], None, None))
            elif self._start(book):
                return
            seq = book.seq

    def _report(self, message: Started | Exited) -> None:
        if not self._reports_gone:
            self._out.append(encode(message))


# signal.SIGKILL, POSIX's 9: the signal module (its enums) and contextlib would make every helper
# start 5-8 ms of CPU slower.
_SIGKILL = 9


def _kill_group(pid: int, signum: int) -> None:
    try:
        os.killpg(pid, signum)
    except (ProcessLookupError, PermissionError):
        return  # nothing left in the group, or (a set-user-ID program) not ours to signal


def _reap(pid: int) -> int | None:
    try:
        _, status = os.waitpid(pid, 0)
    except ChildProcessError:
        return None
    return os.waitstatus_to_exitcode(status)


def main(argv: list[str]) -> None:
    bookings, reports = int(argv[1]), int(argv[2])
    cores = tuple(core for core in map(int, argv[3].split(",")) if core >= 0)
    Helper(bookings, reports, cores).serve()


if __name__ == "__main__":
    main(sys.argv)
