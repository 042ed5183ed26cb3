"""Makespans under Flux with and without queueing ahead: does a core stand idle while a queued
job waits for a long one?

    PATH=/opt/flux/bin:$PATH python benchmarks/flux_takeback_makespan.py [--repeat 3] \\
        [--baseline DIR]

Each run starts its own ``flux start --test-size=1`` and uses two of its cores (the others are
reserved, ``reserve_driver_cores``), the cases in turn:

- ``tail``: ``sleep 3`` and ``sleep 0.5``, then (once their job ids are known, so that the next
  ones get dependencies under ``"depend"``) four tasks of 0.4 s;
- ``waves``: 15 waves of one task of 0.1 or 0.3 s and three of 0 to 0.03 s (seeded), each wave
  after the short tasks of the wave before (as ``queue_ahead_makespan.py``).

Cases: ``plain`` (no queueing ahead), ``ahead`` (``queue_ahead=True``), ``depend``
(``queue_ahead="depend"``); with ``--baseline DIR`` (a directory holding another
``matensemble`` package, e.g. ``git archive <commit> matensemble | tar -x -C DIR``) also that
package's ``depend``. Prints each makespan (from the first submit to the last end, read from
the results) and how many jobs were taken back.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile

from queue_ahead_makespan import arguments, workload  # the same waves as on the local backend

from matensemble import Ensemble, Task
from matensemble.backends.flux import FluxBackend


async def one(name: str, ahead: bool | str, run_dir: str) -> tuple[float, int]:
    """The makespan of one run of ``name`` here, and the jobs taken back."""
    import flux

    cores = len(os.sched_getaffinity(0))
    backend = FluxBackend(queue_ahead=ahead, reserve_driver_cores=cores - 2)
    first = [Task(id="long", command=("sleep", "3")), Task(id="short", command=("sleep", "0.5"))]
    async with Ensemble(
        first if name == "tail" else workload("waves"), backend=backend, run_dir=run_dir
    ) as e:
        if name == "tail":
            await asyncio.sleep(0.3)
            e.submit(Task(id=f"b{i}", command=("sleep", "0.4")) for i in range(4))
        await e.wait()
        results = list(e.summary().results.values())
    assert all(r.state.value == "succeeded" for r in results)
    began = min(r.times["submit"] for r in results if r.times)
    ended = max(r.end_time or 0.0 for r in results)
    handle = flux.Flux()
    notes = [job.exception.note for job in flux.job.JobList(handle, max_entries=0).jobs()]
    return ended - began, sum("taken back" in str(n) for n in notes)


def fresh(name: str, ahead: str, package: str | None) -> tuple[float, int]:
    """One run in a fresh Flux instance and interpreter (``package``: another matensemble)."""
    env = dict(os.environ)
    paths = [p for p in sys.path if p]
    if package is not None:
        paths.insert(0, package)
    env["PYTHONPATH"] = os.pathsep.join(paths)
    with tempfile.TemporaryDirectory() as d:
        inner = [sys.executable, __file__, "--inner", name, ahead, d + "/run"]
        argv = [shutil.which("flux") or "flux", "start", "--test-size=1", *inner]
        out = subprocess.run(argv, env=env, check=True, capture_output=True, text=True).stdout
    took, moved = out.split()[-2:]
    return float(took), int(moved)


def main() -> None:
    args = arguments(__doc__)
    if args.inner:
        name, ahead, run_dir = args.inner
        setting: bool | str = {"plain": False, "ahead": True}.get(ahead, ahead)
        took, moved = asyncio.run(one(name, setting, run_dir))
        print(f"{took:.3f} {moved}")
        return
    if len(os.sched_getaffinity(0)) < 2 or shutil.which("flux") is None:
        sys.exit("needs two cores and flux on PATH")
    print(f"load {os.getloadavg()[0]:.1f}")
    cases = [("plain", None, "plain"), ("ahead", None, "ahead"), ("depend", None, "depend")]
    if args.baseline:
        cases.append(("depend", args.baseline, "depend@baseline"))
    for name in ("tail", "waves"):
        seen: dict[str, list[tuple[float, int]]] = {label: [] for _, _, label in cases}
        for _ in range(args.repeat):
            for ahead, package, label in cases:
                seen[label].append(fresh(name, ahead, package))
        line = "  ".join(
            f"{label} {min(t for t, _ in v):.2f}-{max(t for t, _ in v):.2f} s"
            f" ({min(m for _, m in v)}-{max(m for _, m in v)} taken back)"
            for label, v in seen.items()
        )
        print(f"{name:5s} {line}")
    print(f"load at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
