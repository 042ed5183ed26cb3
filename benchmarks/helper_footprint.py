"""What one spawner helper process of ``LocalBackend(spawners="processes")`` costs the node:
its memory and its start-up.

    python benchmarks/helper_footprint.py [--helpers 2] [--forked]

Starts ``--helpers`` helpers as the backend does (``local_helpers``: ``python -m
matensemble.backends.local_helper``, pinned to a core each), books one ``true`` on each at once,
and prints per helper: how long ``Popen`` took in the driver, when the helper's report of that
first start arrived (the interpreter's start-up and imports, then the spawn), the helper's CPU by
then, and its memory from ``/proc/<pid>/smaps_rollup``: RSS; PSS (each shared page divided
among the processes that map it); USS (its private pages: what another helper adds); the
shared pages (the interpreter, libraries and mapped files every Python process shares).

Python writes no bytecode cache where ``PYTHONDONTWRITEBYTECODE`` is set (or the package
directory is read-only): every helper then compiles what it imports, which costs CPU and heap.
The first line says which; run it once with ``PYTHONPYCACHEPREFIX=/tmp/pyc`` and without
``PYTHONDONTWRITEBYTECODE`` to see an installed package's figures.

``--forked`` measures a way the backend does not take (yet): helpers forked from one that has
imported what a helper imports (after ``gc.freeze()``, or not), each decoding 2,000 bookings and
collecting its garbage before its memory is read: what each then owns, and what a fork took.
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from matensemble.backends.local_helper_messages import Book, Frames, Started, decode, encode
from matensemble.backends.local_helpers import _Helper


def rollup(pid: int) -> dict[str, int]:
    """``/proc/<pid>/smaps_rollup``, in KiB."""
    lines = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]
    return {key: int(value.split()[0]) for key, value in (line.split(":", 1) for line in lines)}


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def read(helper: _Helper) -> bytes:
    return os.read(helper.report_r, 1 << 16)


def forked(n: int, freeze: bool) -> None:
    """``n`` copies of this process (which imported what a helper imports), forked."""
    import matensemble.backends.local_helper  # noqa: F401

    if freeze:
        gc.freeze()  # the objects so far stay out of every collection: their pages stay shared
    env = [f"{k}={v}".encode() for k, v in os.environ.items()]
    booking = encode(Book(0, [(["true"], None, env, [])], "/tmp", "/tmp/t"))[4:]  # no length
    copies, began = [], time.perf_counter()
    for _ in range(n):
        pid = os.fork()
        if pid == 0:
            for _ in range(2000):
                decode(booking)
            gc.collect()
            time.sleep(5)
            os._exit(0)
        copies.append(pid)
    fork = (time.perf_counter() - began) / n
    time.sleep(1.5)
    for i, pid in enumerate(copies):
        mem = {key: value / 1024 for key, value in rollup(pid).items()}
        print(
            f"forked {i}{' (gc.freeze)' if freeze else ''}: fork {fork * 1e3:.2f} ms;"
            f" RSS {mem['Rss']:.1f} MiB, PSS {mem['Pss']:.1f},"
            f" USS {mem['Private_Clean'] + mem['Private_Dirty']:.1f}"
        )
    for pid in copies:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--helpers", type=int, default=2)
    parser.add_argument(
        "--forked", action="store_true", help="helpers forked from one (a way not taken)"
    )
    args = parser.parse_args()
    n = args.helpers
    if args.forked:
        print(f"{n} forked helpers; load {os.getloadavg()[0]:.2f}")
        forked(n, freeze=False)
        forked(n, freeze=True)
        return
    cores = sorted(os.sched_getaffinity(0))
    caches = "no bytecode caches written" if sys.dont_write_bytecode else "bytecode caches on"
    print(f"{n} helpers ({caches}); load {os.getloadavg()[0]:.2f}")
    env = [f"{k}={v}".encode() for k, v in os.environ.items()]
    tasks = Path(tempfile.mkdtemp(dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
    helpers, popen, began = [], [], []
    for i in range(n):
        began.append(time.perf_counter())
        helpers.append(_Helper([cores[i % len(cores)]]))
        popen.append(time.perf_counter() - began[-1])
    for i, helper in enumerate(helpers):
        book = Book(0, [(["true"], None, env, [])], str(tasks), str(tasks / f"t{i}"))
        os.write(helper.book_w, encode(book))
    ready = []
    for i, helper in enumerate(helpers):
        frames = Frames()
        while not any(isinstance(decode(f), Started) for f in frames.feed(read(helper))):
            pass
        ready.append(time.perf_counter() - began[i])
    time.sleep(0.2)  # its first task reaped: the helper waits for bookings, as when idle
    for i, helper in enumerate(helpers):
        pid = helper.process.pid
        mem = {key: value / 1024 for key, value in rollup(pid).items()}
        uss = mem["Private_Clean"] + mem["Private_Dirty"]
        shared = mem["Shared_Clean"] + mem["Shared_Dirty"]
        print(
            f"helper {i}: Popen {popen[i] * 1e3:.1f} ms, first start reported after"
            f" {ready[i] * 1e3:.0f} ms, CPU {cpu_seconds(pid) * 1e3:.0f} ms;"
            f" RSS {mem['Rss']:.1f} MiB, PSS {mem['Pss']:.1f} (anonymous {mem['Pss_Anon']:.1f},"
            f" files {mem['Pss_File']:.1f}), USS {uss:.1f}, shared {shared:.1f}"
        )
    for helper in helpers:
        os.close(helper.book_w)  # EOF: the helper exits
    for helper in helpers:
        helper.process.wait()
        os.close(helper.report_r)
    shutil.rmtree(tasks)


if __name__ == "__main__":
    main()
