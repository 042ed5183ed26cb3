"""Makespans of the local backend with and without queueing ahead, on workloads where a task
booked behind a long one matters: does a core stand idle while a booked task waits?

    python benchmarks/queue_ahead_makespan.py [--repeat 3] [--baseline DIR]

Two workloads on 2 cores, each run in a fresh interpreter per case, the cases in turn:

- ``tail``: ``sleep 3``, ``0.1``, ``3``, ``0.1`` in that order (FIFO): the third is booked
  behind the first; without taking back it runs after it (makespan about 6 s, not 3);
- ``waves``: 15 waves of one task of 0.1 or 0.3 s and three of 0 to 0.03 s (seeded), each wave
  after the short tasks of the wave before.

Cases: ``plain`` (no queueing ahead), ``ahead`` (``queue_ahead=True``), with the worker threads
and with the helper processes; with ``--baseline DIR`` (a directory holding another
``matensemble`` package, e.g. ``git archive <commit> matensemble | tar -x -C DIR``) also that
package's ``ahead``. Prints each makespan (wall time of ``Ensemble.run``, start-up included).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import subprocess
import sys
import tempfile
import time

from matensemble import Ensemble, LocalBackend, Task


def workload(name: str) -> list[Task]:
    if name == "tail":
        lengths = {"a": 3.0, "b": 0.1, "c": 3.0, "d": 0.1}
        return [Task(id=k, command=("sleep", str(v))) for k, v in lengths.items()]
    rng = random.Random(11)
    tasks: list[Task] = []
    for wave in range(15):
        after = tuple(f"w{wave - 1}s{j}" for j in range(3)) if wave else ()
        long = rng.choice((0.1, 0.3))
        tasks.append(Task(id=f"w{wave}long", command=("sleep", str(long)), after=after))
        for j in range(3):
            short = rng.choice((0.0, 0.01, 0.03))
            tasks.append(Task(id=f"w{wave}s{j}", command=("sleep", str(short)), after=after))
    return tasks


async def one(name: str, ahead: bool, spawners: str) -> float:
    """The makespan of one run of ``name`` (in this interpreter)."""
    with tempfile.TemporaryDirectory(dir="/dev/shm" if os.path.isdir("/dev/shm") else None) as d:
        backend = LocalBackend(cores=2, queue_ahead=ahead, spawners=spawners)
        began = time.monotonic()
        summary = await Ensemble(workload(name), backend=backend, run_dir=d + "/run").run()
        took = time.monotonic() - began
    assert summary.counts["succeeded"] == len(summary.results)
    return took


def fresh(name: str, ahead: bool, spawners: str, package: str | None) -> float:
    """One run in a fresh interpreter (``package``: another matensemble on the path)."""
    env = dict(os.environ)
    if package is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, (package, env.get("PYTHONPATH"))))
    argv = [sys.executable, __file__, "--inner", name, str(int(ahead)), spawners]
    out = subprocess.run(argv, env=env, check=True, capture_output=True, text=True).stdout
    return float(out.split()[-1])


def arguments(doc: str | None) -> argparse.Namespace:
    """``--repeat``, ``--baseline DIR`` and the inner run's three arguments (also for
    ``flux_takeback_makespan.py``)."""
    parser = argparse.ArgumentParser(description=(doc or "").split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--baseline", metavar="DIR", help="another matensemble package to compare")
    parser.add_argument("--inner", nargs=3, help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> None:
    args = arguments(__doc__)
    if args.inner:
        name, ahead, spawners = args.inner
        print(asyncio.run(one(name, ahead == "1", spawners)))
        return
    if len(os.sched_getaffinity(0)) < 2:
        sys.exit("needs two cores")
    print(f"load {os.getloadavg()[0]:.1f}")
    cases = [(False, None, "plain"), (True, None, "ahead")]
    if args.baseline:
        cases.append((True, args.baseline, "ahead@baseline"))
    for name in ("tail", "waves"):
        for spawners in ("threads", "processes"):
            seen: dict[str, list[float]] = {label: [] for _, _, label in cases}
            for _ in range(args.repeat):
                for ahead, package, label in cases:
                    seen[label].append(fresh(name, ahead, spawners, package))
            line = "  ".join(f"{label} {min(v):.2f}-{max(v):.2f} s" for label, v in seen.items())
            print(f"{name:5s} {spawners:9s} {line}")
    print(f"load at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
