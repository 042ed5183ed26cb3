"""The raw upper bound of a spawner process per core, for ``local_throughput.py``.

The driver (the calling process) starts one small Python helper per core, pinned to that core,
and talks to each through two pipes. A helper waits, with ``poll``, for two things: the pidfd of
the process it runs and its booking pipe. When its process exits it reaps it, starts the next
launch booked on its core at once (``vfork``/``exec`` through ``local_spawn.spawn``: a new
session, like the backend's), and only then reports the exit to the driver. The driver keeps one
launch booked ahead in each helper: it books two per helper at first, then one more for every
exit reported. No thread, no GIL shared between the driver and the spawns: the exit wakes the
helper on the CPU its child just left, which is where the next child starts.

Messages are msgspec msgpack arrays behind a 4-byte length, so that the driver encodes an argv
and the helper decodes it as the backend would have to.

    python benchmarks/raw_spawners.py [--tasks 2000] [--cores N]   # one run, on its own
"""

from __future__ import annotations

import argparse
import os
import resource
import select
import selectors
import struct
import subprocess
import sys
import time
from collections import deque

import msgspec

from matensemble.backends.local_spawn import spawn
from matensemble.backends.task_files import TaskOutputs

_LENGTH = struct.Struct("<I")


class Booking(msgspec.Struct, array_like=True):
    """One launch for a helper: which task, what to run, and (``task_dir`` not empty) where to
    make its directory and its ``stdout`` and ``stderr`` files, what its environment adds, as
    the backend does for each task."""

    key: int
    argv: list[str]
    task_dir: str = ""
    env: list[bytes] = []


class Report(msgspec.Struct, array_like=True):
    """A helper's news: a task ended (``status`` as ``waitpid`` gives it), or the helper's own
    CPU seconds when it leaves (``key`` -1); the end of the driver's first booking (``key`` -2)
    gives the CPU seconds the helper had used up to then."""

    key: int
    status: int
    cpu: float = 0.0


def _frame(payload: bytes) -> bytes:
    return _LENGTH.pack(len(payload)) + payload


def _frames(buffer: bytearray) -> list[bytes]:
    """Take the complete frames out of ``buffer``."""
    out = []
    while len(buffer) >= 4:
        (size,) = _LENGTH.unpack_from(buffer)
        if len(buffer) < 4 + size:
            break
        out.append(bytes(buffer[4 : 4 + size]))
        del buffer[: 4 + size]
    return out


def helper(core: int, bookings: int, reports: int) -> None:
    """Run what the driver books, one process at a time, pinned to ``core``; leave on EOF.

    The booking pipe is watched only while nothing is booked: with two launches booked ahead,
    a booking that arrives while a process runs wakes nobody, and is read at the next exit.
    """
    os.sched_setaffinity(0, {core})
    decode = msgspec.msgpack.Decoder(Booking).decode
    encode = msgspec.msgpack.Encoder().encode
    env = [os.fsencode(f"{k}={v}") for k, v in os.environ.items()]
    null = os.open(os.devnull, os.O_RDWR)
    outputs = TaskOutputs()
    booked: deque[Booking] = deque()
    buffer = bytearray()
    os.set_blocking(bookings, False)
    poller = select.poll()
    running: tuple[int, int, int] | None = None  # key, pid, pidfd
    closed = listening = False

    def start(booking: Booking) -> tuple[int, int, int]:
        if booking.task_dir:
            out, err = outputs.open(booking.task_dir)
            try:
                pid = spawn(
                    booking.argv, None, env + booking.env, booking.task_dir, (null, out, err)
                )
            finally:
                os.close(out)
                os.close(err)
        else:
            pid = spawn(booking.argv, None, env, "/", (null, null, null))
        pidfd = os.pidfd_open(pid)
        poller.register(pidfd, select.POLLIN)
        return booking.key, pid, pidfd

    def take() -> bool:
        """Read the bookings that have arrived; False at EOF."""
        try:
            chunk = os.read(bookings, 65536)
        except BlockingIOError:
            return True
        buffer.extend(chunk)
        booked.extend(decode(frame) for frame in _frames(buffer))
        return bool(chunk)

    while not (closed and running is None and not booked):
        if running is None and booked:
            running = start(booked.popleft())
        if listening != (not booked and not closed):
            listening = not listening
            (poller.register if listening else poller.unregister)(bookings)
        for fd, _ in poller.poll():
            if fd == bookings:
                closed = closed or not take()
            elif running is not None and fd == running[2]:
                key, pid, pidfd = running
                poller.unregister(pidfd)
                os.close(pidfd)
                _, status = os.waitpid(pid, 0)
                running = start(booked.popleft()) if booked else None
                if not closed:
                    closed = not take()
                cpu = 0.0
                if key < 0:  # the driver's first booking: the CPU its start-up cost
                    usage = resource.getrusage(resource.RUSAGE_SELF)
                    cpu = usage.ru_utime + usage.ru_stime
                os.write(reports, _frame(encode(Report(key, status, cpu))))
    usage = resource.getrusage(resource.RUSAGE_SELF)
    os.write(reports, _frame(encode(Report(-1, 0, usage.ru_utime + usage.ru_stime))))


def run(
    n: int, cores: int, argv: list[str], ahead: int = 1, tasks_dir: str = "", work: float = 0.0
) -> tuple[float, float, float]:
    """Wall seconds, the driver's CPU seconds and the helpers' CPU seconds of n tasks, with
    ``ahead`` launches booked in each helper beside the one it runs; with ``tasks_dir``, each
    task gets a directory there and its own output files and variables. ``work``: CPU seconds
    the driver spends on each exit before it books the next launch (what an engine would: its
    record, journal and dispatch)."""

    def booking(i: int) -> bytes:
        if not tasks_dir:
            return _frame(encode(Booking(i, argv)))
        extra = [b"MATENSEMBLE_TASK_ID=t%d" % i, b"MATENSEMBLE_ATTEMPT=1", b"OMP_NUM_THREADS=1"]
        return _frame(encode(Booking(i, argv, f"{tasks_dir}/t{i}", extra)))

    encode = msgspec.msgpack.Encoder().encode
    decode = msgspec.msgpack.Decoder(Report).decode
    core_ids = sorted(os.sched_getaffinity(0))[:cores]
    helpers = []
    for core in core_ids:
        process = subprocess.Popen(
            [sys.executable, __file__, "--helper", str(core)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            bufsize=0,
        )
        assert process.stdin is not None
        assert process.stdout is not None
        helpers.append((process, process.stdin.fileno(), process.stdout.fileno()))
    selector = selectors.DefaultSelector()
    for index, (_, _, out) in enumerate(helpers):
        selector.register(out, selectors.EVENT_READ, index)
    buffers = [bytearray() for _ in helpers]
    # Wait until every helper has started (its interpreter, msgspec) before the clock starts.
    for _, into, _ in helpers:
        os.write(into, _frame(encode(Booking(-2, ["true"]))))
    waiting, helper_cpu = len(helpers), 0.0
    while waiting:
        for key, _ in selector.select():
            buffers[key.data] += os.read(key.fd, 65536)
            for frame in _frames(buffers[key.data]):
                helper_cpu -= decode(frame).cpu
                waiting -= 1
    usage0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    booked = done = 0
    for _ in range(1 + ahead):
        for _, into, _ in helpers:
            if booked < n:
                os.write(into, booking(booked))
                booked += 1
    while done < n:
        for key, _ in selector.select():
            buffers[key.data] += os.read(key.fd, 65536)
            for frame in _frames(buffers[key.data]):
                report = decode(frame)
                assert report.status == 0, report
                done += 1
                if work:
                    until = time.thread_time() + work
                    while time.thread_time() < until:
                        pass
                if booked < n:
                    os.write(helpers[key.data][1], booking(booked))
                    booked += 1
    elapsed = time.perf_counter() - t0
    usage1 = resource.getrusage(resource.RUSAGE_SELF)
    driver = usage1.ru_utime + usage1.ru_stime - usage0.ru_utime - usage0.ru_stime
    for index, (process, _, out) in enumerate(helpers):
        assert process.stdin is not None
        process.stdin.close()  # EOF: the helper reports its CPU and leaves
        tail = buffers[index]
        while chunk := os.read(out, 65536):
            tail += chunk
        helper_cpu += sum(r.cpu for r in map(decode, _frames(tail)) if r.key == -1)
        process.wait()
        selector.unregister(out)
        assert process.stdout is not None
        process.stdout.close()
    selector.close()
    return elapsed, driver, helper_cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--cores", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--ahead", type=int, default=1, help="launches booked ahead per helper")
    parser.add_argument("--files", metavar="DIR", help="make each task's directory and files here")
    parser.add_argument("--work", type=float, default=0.0, help="driver CPU us per exit")
    parser.add_argument("--helper", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.helper is not None:
        helper(args.helper, 0, 1)
        return
    elapsed, driver, helpers = run(
        args.tasks, args.cores, ["true"], args.ahead, args.files or "", args.work * 1e-6
    )
    n = args.tasks
    print(
        f"raw spawners: {n / elapsed:6.0f}/s driver CPU/task {driver / n * 1e3:.3f} ms"
        f" helpers' CPU/task {helpers / n * 1e3:.3f} ms"
    )


if __name__ == "__main__":
    main()
