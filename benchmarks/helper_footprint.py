"""What one spawner helper process of ``LocalBackend(spawners="processes")`` costs the node:
its memory and its start-up.

    python benchmarks/helper_footprint.py [--helpers 2]

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
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import msgspec

from matensemble.backends.local_helper_messages import Book, Frames, FromHelper, Started, frame
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--helpers", type=int, default=2)
    n = parser.parse_args().helpers
    cores = sorted(os.sched_getaffinity(0))
    caches = "no bytecode caches written" if sys.dont_write_bytecode else "bytecode caches on"
    print(f"{n} helpers ({caches}); load {os.getloadavg()[0]:.2f}")
    env = [f"{k}={v}".encode() for k, v in os.environ.items()]
    decode = msgspec.msgpack.Decoder(FromHelper).decode
    tasks = Path(tempfile.mkdtemp(dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
    helpers, popen, began = [], [], []
    for i in range(n):
        began.append(time.perf_counter())
        helpers.append(_Helper([cores[i % len(cores)]]))
        popen.append(time.perf_counter() - began[-1])
    for i, helper in enumerate(helpers):
        book = Book(0, [(["true"], None, env, [])], str(tasks), str(tasks / f"t{i}"))
        os.write(helper.book_w, frame(msgspec.msgpack.encode(book)))
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
