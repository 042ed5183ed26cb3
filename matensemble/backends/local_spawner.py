"""Starting the local backend's processes from worker threads, off the event loop.

A ``vfork``/``exec`` holds its caller until the child has exec'd (a few hundred microseconds,
more on a busy machine) but releases the GIL meanwhile, so the event loop keeps taking in
exits and journaling while a launch starts. There is one worker per core (up to
``MAX_WORKERS``; a launch goes to the worker of its first core), and each worker keeps the CPU
affinity of its last launch: a child inherits its thread's mask, so pinning a one-core task
costs no system call once the worker of that core has pinned itself.

A launch's task directory and output files (see ``task_files``) are made by the loop thread
while that is quick (tmpfs, a local disk's cache: about 20 µs) and by the worker otherwise (a
loaded disk, a parallel file system: milliseconds, which would hold up every other launch and
exit): each system call a worker makes lets go of the GIL and takes it back from a busy loop
thread, which costs more than a quick ``mkdir`` and two ``open`` calls save. ``InlineWhileQuick``
times the loop's opens and decides, as the journal does for its syncs.

A worker starts every copy of a launch, opens a ``pidfd`` for each, leaves the result
(``Started``) for the loop and then adds the pidfds to the set of exits the loop watches
(``local_exits``); the loop takes what the workers started in (``hand_over``) before it looks
at exits or stops a launch: a launch that starts well costs the loop no wake-up of its own.
The loop is woken (``call_soon_threadsafe``, once per batch) only for a launch that failed to
start or that it is stopping (``urgent``). Every failure, even an unexpected one, comes back as
a reason, so a launch never hangs. After ``kill()`` a worker kills what it starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import signal
import threading
import time
from collections.abc import Callable, Sequence
from queue import SimpleQueue
from typing import NamedTuple

from matensemble.backends.local_failures import (
    LaunchError,
    Process,
    describe_spawn_error,
    open_outputs,
)
from matensemble.backends.local_inventory import CAN_PIN, kill_group
from matensemble.backends.local_spawn import spawn
from matensemble.backends.task_files import TaskOutputs

__all__ = ["MAX_WORKERS", "OPEN_INLINE_BELOW", "InlineWhileQuick", "Spawners", "Started"]

MAX_WORKERS = 32
# Outputs opened this quickly hold up the event loop less than a worker's GIL hand-offs cost.
OPEN_INLINE_BELOW = 50e-6


class InlineWhileQuick:
    """Whether to make a call in the event loop's thread: while the moving average of the
    calls timed there stays under ``below`` seconds. Otherwise the call goes to a thread,
    except every ``probe_every``-th, which is made (and timed) in the loop again, so that a
    file system that turned quick again is noticed."""

    def __init__(self, below: float, probe_every: int = 64) -> None:
        self.below = below
        self.probe_every = probe_every
        self.average = 0.0  # seconds; the first calls are made in the loop and timed
        self._skipped = 0

    def inline(self) -> bool:
        if self.average < self.below:
            return True
        self._skipped += 1
        if self._skipped < self.probe_every:
            return False
        self._skipped = 0
        return True

    def took(self, seconds: float) -> None:
        """A call made in the loop took ``seconds``."""
        self.average += (seconds - self.average) / 4


class Started(NamedTuple):
    """What a worker made of one launch."""

    token: object  # the caller's handle of the launch
    processes: list[tuple[int, int, int]]  # rank, pid, pidfd of each copy started
    start_time: float | None  # when the first copy started
    failure: str | None  # why the next copy did not start (the others were started)


# token, plan, working directory, task directory, stdout and stderr (None: the worker opens
# them in the task directory; the worker closes them), and the launch it waits for, if any
_Job = tuple[object, list[Process], str, str, tuple[int, int] | None, object]


class Spawners:
    """The worker threads of one backend; ``watch(pidfd)`` (called by a worker) adds a started
    process to the set of exits the loop watches; ``deliver`` is called on the event loop
    thread, from ``hand_over``; ``urgent(token)`` (called by a worker, under the lock) says
    whether the loop must be woken to take in that launch at once."""

    def __init__(
        self,
        cores: Sequence[int],
        stdin: int,
        watch: Callable[[int], None],
        loop: asyncio.AbstractEventLoop,
        deliver: Callable[[Started], None],
        urgent: Callable[[object], bool],
        exit_seen: Callable[[object, float], None] | None = None,
    ) -> None:
        self._stdin = stdin
        self._watch = watch  # adds a pidfd to the set of exits the loop watches
        self._loop = loop
        self._deliver = deliver
        self._urgent = urgent
        self._all_cores = tuple(os.sched_getaffinity(0)) if CAN_PIN else ()
        count = max(1, min(len(cores), MAX_WORKERS))
        self._worker_of = {core: i % count for i, core in enumerate(cores)}
        self._queues: list[SimpleQueue[_Job | None]] = [SimpleQueue() for _ in range(count)]
        self._threads: list[threading.Thread | None] = [None] * count
        # Queueing ahead (``local_ahead``): the launch each worker was given last, and an
        # eventfd per worker that wakes it from waiting for a launch's exit (a cancel).
        self._last: list[object] = [None] * count
        # ``exit_seen(token, t)``: a worker saw the launch ``token`` exit at ``t`` (queueing ahead
        # is on).
        self._exit_seen = exit_seen or (lambda token, t: None)
        self._wake = [os.eventfd(0, os.EFD_NONBLOCK) for _ in range(count)] if exit_seen else []
        self._lock = threading.Lock()
        self._done: list[Started] = []  # started, not yet delivered
        self._wake_pending = False
        self._killed = False

    def submit(
        self,
        token: object,
        plan: list[Process],
        cwd: str,
        task_dir: str,
        outputs: tuple[int, int] | None,
        after: object = None,
    ) -> bool:
        """Start ``plan`` (the copies of one launch) in ``cwd`` with stdout and stderr on
        ``outputs`` (the worker closes them); ``None``: the worker makes ``task_dir`` and opens
        them there first.

        ``after`` (queueing ahead, one process): start it the moment the one process of the
        launch ``after`` exits, if this worker was given ``after`` last; else nothing is
        submitted, and ``False``."""
        cores = plan[0][3]
        index = self._worker_of.get(cores[0], 0) if cores else 0
        if after is not None and (self._last[index] is not after or not self._wake):
            return False
        if self._wake:
            self._last[index] = token
        if self._threads[index] is None:
            thread = threading.Thread(target=self._serve, args=(index,), name=f"spawner-{index}")
            thread.daemon = True  # a stuck exec must not keep the interpreter from exiting
            thread.start()
            self._threads[index] = thread
        self._queues[index].put((token, plan, cwd, task_dir, outputs, after))
        return True

    def wake(self, core: int) -> None:
        """Wake the worker of ``core`` if it waits for an exit: a launch queued there stops."""
        if self._wake:
            os.eventfd_write(self._wake[self._worker_of.get(core, 0)], 1)

    def kill(self) -> None:
        """From now on, kill what is started; kill what was started but not yet delivered."""
        with self._lock:
            self._killed = True
            for started in self._done:
                for _, pid, _ in started.processes:
                    kill_group(pid, signal.SIGKILL)

    def close(self) -> None:
        """Let the workers end once their queued launches are started."""
        for index, (queue, thread) in enumerate(zip(self._queues, self._threads, strict=True)):
            if thread is not None:
                queue.put(None)  # the worker closes its eventfd
            elif self._wake:
                os.close(self._wake[index])

    # -- in a worker --------------------------------------------------------------------------

    def _serve(self, index: int) -> None:
        jobs = self._queues[index]
        mask: Sequence[int] = self._all_cores
        outputs = TaskOutputs()  # this worker's handle of the tasks directory, if it opens
        wake = self._wake[index] if self._wake else -1
        poller = select.poll()
        if wake >= 0:
            poller.register(wake, select.POLLIN)
        last: tuple[object, int] = (None, -1)  # the launch started last, a pidfd of its process
        try:
            while (job := jobs.get()) is not None:
                token, after = job[0], job[5]
                if after is not None and after is last[0]:
                    stopped = not self._wait_for_exit(poller, last[1], wake, token)
                    if not stopped:
                        self._exit_seen(after, time.time())  # before its successor starts
                elif after is not None:  # it did not start: its cores are free
                    stopped = self._urgent(token) or self._killed
                else:
                    stopped = False
                done, last = last[1], (None, -1)  # closed after the start: no GIL hand-off first
                if stopped:  # cancelled while it waited: it never starts
                    for fd in job[4] or ():
                        os.close(fd)
                    self._post(Started(token, [], None, None))
                else:
                    mask, pidfd = self._start_launch(job, outputs, mask)
                    if pidfd >= 0:
                        last = (token, pidfd)
                if done >= 0:
                    os.close(done)
        finally:
            outputs.close()
            for fd in (last[1], wake):
                if fd >= 0:
                    os.close(fd)

    def _wait_for_exit(self, poller: select.poll, pidfd: int, wake: int, token: object) -> bool:
        """Wait until ``pidfd``'s process exits (``True``) or ``token`` is stopped (``False``)."""
        poller.register(pidfd, select.POLLIN)
        try:
            while not self._urgent(token):
                ready = [fd for fd, _ in poller.poll()]
                if wake in ready:
                    with contextlib.suppress(BlockingIOError):
                        os.eventfd_read(wake)
                if pidfd in ready:  # after ``kill()`` (the holder was killed) it stays unstarted
                    return not (self._urgent(token) or self._killed)
            return False
        finally:
            poller.unregister(pidfd)

    def _start_launch(
        self, job: _Job, outputs: TaskOutputs, mask: Sequence[int]
    ) -> tuple[Sequence[int], int]:
        """Open the launch's outputs if asked to, start its copies; the worker's CPU mask after,
        and (queueing ahead) a pidfd of its one process, else -1."""
        token, plan, cwd, task_dir, fds, _ = job
        processes: list[tuple[int, int, int]] = []
        start_time: float | None = None
        failure: str | None = None
        if fds is None:
            try:
                fds = open_outputs(outputs, task_dir)
            except LaunchError as exc:
                self._post(Started(token, processes, None, str(exc)))
                return mask, -1
            except BaseException as exc:  # a bug: fail the launch, keep the worker
                self._post(Started(token, processes, None, f"cannot open the outputs: {exc!r}"))
                return mask, -1
        out, err = fds
        try:
            for rank, process in enumerate(plan):
                cores = tuple(process[3]) or self._all_cores
                if CAN_PIN and cores != mask:
                    os.sched_setaffinity(0, cores)  # this thread only; children inherit it
                    mask = cores
                failure, pid, pidfd = _start(process, cwd, (self._stdin, out, err))
                if failure is not None:
                    break
                start_time = start_time or time.time()
                processes.append((rank, pid, pidfd))
        except BaseException as exc:  # a bug: fail the launch, keep the worker
            failure = f"cannot start {plan[0][0][0]!r}: {exc!r}"
        finally:
            os.close(out)
            os.close(err)
        # Its own copy: the loop closes the pidfd it is given once the process is reaped.
        kept = os.dup(processes[0][2]) if self._wake and len(processes) == 1 else -1
        self._post(Started(token, processes, start_time, failure))
        return mask, kept

    def _post(self, started: Started) -> None:
        with self._lock:
            if self._killed:
                for _, pid, _ in started.processes:
                    kill_group(pid, signal.SIGKILL)
            self._done.append(started)  # before its exit can be seen: the loop takes it first
            wake = not started.processes or started.failure is not None
            wake = (wake or self._urgent(started.token)) and not self._wake_pending
            self._wake_pending = self._wake_pending or wake
        # Watched once the loop can find the launch, and outside the lock: ``epoll_ctl`` lets
        # go of the GIL, and the loop must not wait for the lock meanwhile.
        for _, _, pidfd in started.processes:
            self._watch(pidfd)
        if wake:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
                self._loop.call_soon_threadsafe(self.hand_over)

    # -- on the event loop --------------------------------------------------------------------

    def hand_over(self) -> None:
        """Deliver what the workers started since the last call."""
        with self._lock:
            done, self._done = self._done, []
            self._wake_pending = False
        for started in done:
            self._deliver(started)


def _start(process: Process, cwd: str, fds: tuple[int, int, int]) -> tuple[str | None, int, int]:
    """Start one process and open its pidfd: (None, pid, pidfd), or (why not, -1, -1)."""
    argv, executable, env, _ = process
    try:
        pid = spawn(argv, executable, env, cwd, fds)
    except Exception as exc:  # OSError, ValueError (a NUL), SubprocessError (from Popen)
        return describe_spawn_error(exc, process, cwd), -1, -1
    try:
        return None, pid, os.pidfd_open(pid)
    except OSError as exc:  # out of file descriptors: leave no process unwatched
        kill_group(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
        return f"cannot watch the process: {exc}", -1, -1
