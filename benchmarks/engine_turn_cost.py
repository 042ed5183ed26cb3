"""The engine's own CPU per task in the event loop's thread, on the path a local run takes.

    python benchmarks/engine_turn_cost.py [--tasks 10000] [--repeat 5] [--baseline DIR]

The backend here starts nothing: it reports each launch as succeeded on the event loop's next
turn, on a real clock, with one core, so every end frees the core for the next task, as a
local run of short tasks does: one outcome per consumer wake-up, a durable journal (on tmpfs,
``/dev/shm``, where a sync costs microseconds), the status file, the dispatch pass and the
asyncio wake-ups. What it prints is ``time.thread_time()`` of the run per task (the loop's
CPU, which a loaded machine disturbs far less than a throughput), less the microsecond or two
this backend costs itself: the part of ``benchmarks/local_throughput.py``'s "loop" figure that
is the engine's, not the local backend's. Each interpreter makes a smaller run first (imports,
the journal's sync thread), which is not counted.

``--baseline DIR`` (a directory holding another ``matensemble`` package, e.g. ``git archive
main matensemble | tar -x -C DIR``) runs each repetition in two fresh interpreters, this
checkout's and the baseline's, in alternating order, and prints the paired difference.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from anyio.abc import TaskGroup

from matensemble import Ensemble, Task
from matensemble.backends.base import Backend, Launch, LaunchKey, Outcome, Sink
from matensemble.model import TaskState
from matensemble.resources import NodeSpec

MARK = "FIGURES "


class NextTurn(Backend):
    """Reports every launch as succeeded on the event loop's next turn (nothing runs)."""

    name = "local"  # the engine treats it as a real backend: real clock, durable journal

    async def open(self, sink: Sink, task_group: TaskGroup) -> Sequence[NodeSpec]:
        self._sink = sink
        self._loop = asyncio.get_running_loop()
        return [NodeSpec("node", (0,), ())]

    def launch(self, launch: Launch) -> None:
        now = time.time()
        outcome = Outcome(
            key=launch.key, state=TaskState.SUCCEEDED, returncode=0, start_time=now, end_time=now
        )
        self._loop.call_soon(self._sink, outcome)

    def cancel(self, key: LaunchKey) -> None:
        pass

    async def close(self) -> None:
        pass


async def loop_cpu_per_task(n: int) -> float:
    """Microseconds of the event loop thread's CPU per task, over one run of ``n`` tasks."""
    tasks = [Task(id=f"t{i}", command=("true",)) for i in range(n)]
    base = "/dev/shm" if Path("/dev/shm").is_dir() else None
    with tempfile.TemporaryDirectory(dir=base) as run_dir:
        ensemble = Ensemble(tasks, backend=NextTurn(), run_dir=run_dir)
        t0 = time.thread_time()
        summary = await ensemble.run()
        cpu = time.thread_time() - t0
    assert summary.counts["succeeded"] == n, summary.counts
    return cpu / n * 1e6


def elsewhere(n: int, matensemble_dir: str | None) -> float:
    """One run in a fresh interpreter importing ``matensemble`` from ``matensemble_dir``."""
    env = dict(os.environ)
    if matensemble_dir is not None:
        env["PYTHONPATH"] = os.pathsep.join([matensemble_dir, env.get("PYTHONPATH", "")])
    command = [sys.executable, __file__, "--one", "--tasks", str(n)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    for line in done.stdout.splitlines():
        if line.startswith(MARK):
            return float(json.loads(line[len(MARK) :]))
    raise SystemExit(f"the run failed (exit {done.returncode}):\n{done.stdout}{done.stderr}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--baseline", metavar="DIR", help="another matensemble, alternating")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    n = args.tasks
    asyncio.run(loop_cpu_per_task(max(100, n // 10)))  # warm up: imports, the sync thread
    if args.one:
        print(MARK + json.dumps(asyncio.run(loop_cpu_per_task(n))), flush=True)
        return
    print(f"{n} tasks, one core, each ended on the next loop turn; load {os.getloadavg()[0]:.1f}")
    if args.baseline is None:
        here = [asyncio.run(loop_cpu_per_task(n)) for _ in range(args.repeat)]
        print(f"loop CPU/task: {' '.join(f'{f:.1f}' for f in here)} us")
        print(f"median {statistics.median(here):.1f} us, min {min(here):.1f} us")
        return
    if not (Path(args.baseline) / "matensemble" / "__init__.py").is_file():
        raise SystemExit(f"--baseline {args.baseline}: no matensemble package in it")
    versions = {"current": None, "baseline": str(Path(args.baseline).resolve())}
    figures: dict[str, list[float]] = {name: [] for name in versions}
    for rep in range(args.repeat):
        for name in list(versions)[:: 1 if rep % 2 == 0 else -1]:
            figures[name].append(elsewhere(n, versions[name]))
        line = " ".join(f"{name} {figures[name][-1]:5.1f} us" for name in versions)
        print(f"[{rep}] {line} load {os.getloadavg()[0]:.1f}")
    for name, values in figures.items():
        print(f"{name}: median {statistics.median(values):.1f} us, min {min(values):.1f} us")
    pairs = [c - b for c, b in zip(figures["current"], figures["baseline"], strict=True)]
    print(f"current - baseline, paired: median {statistics.median(pairs):+.1f} us per task")


if __name__ == "__main__":
    main()
