"""What durability costs, and how fast a large run resumes.

    python benchmarks/journal_and_resume.py [--tasks 2000] [--resume-tasks 100000]

1. Journal overhead: the same N ``true`` tasks through the local backend with the run directory
   on the disk under the current directory, with the durable journal (fdatasync, group commit)
   and without it (lines handed to the OS only), alternating, in one run.
2. The same for the engine alone: 10^5 tasks on the simulated backend, durable vs not.
3. Resume: a 10^5-task run stopped halfway; time to replay its journal, and to resume it
   (replay + rebuild + run the remaining half on the simulated backend).
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from matensemble import Ensemble, LocalBackend, SimulatedBackend, Task
from matensemble.journal import replay


async def local_run(n: int, durable: bool) -> tuple[float, int]:
    tasks = [Task(id=f"t{i}", command=("true",)) for i in range(n)]
    with tempfile.TemporaryDirectory(dir=Path.cwd()) as run_dir:
        ens = Ensemble(tasks, backend=LocalBackend(), run_dir=run_dir, durable=durable)
        t0 = time.perf_counter()
        summary = await ens.run()
        elapsed = time.perf_counter() - t0
        syncs = ens._journal.syncs if ens._journal else 0
    assert summary.counts["succeeded"] == n
    return elapsed, syncs


async def sim_run(n: int, durable: bool) -> float:
    tasks = [Task(id=f"t{i}", command=("true",)) for i in range(n)]
    with tempfile.TemporaryDirectory(dir=Path.cwd()) as run_dir:
        t0 = time.perf_counter()
        await Ensemble(
            tasks, backend=SimulatedBackend(1, 64), run_dir=run_dir, durable=durable
        ).run()
        return time.perf_counter() - t0


async def resume_figures(n: int) -> tuple[float, float, int]:
    tasks = [Task(id=f"t{i}", command=("true",), tags={"sim_duration": "1"}) for i in range(n)]
    with tempfile.TemporaryDirectory(dir=Path.cwd()) as run_dir:
        async with Ensemble(tasks, backend=SimulatedBackend(1, 64), run_dir=run_dir) as ens:
            async for _ in ens.completed():
                if ens.counts["succeeded"] >= n // 2:
                    ens.stop("benchmark")
                    break
        size = (Path(run_dir) / "journal.jsonl").stat().st_size
        t0 = time.perf_counter()
        past = replay(Path(run_dir))
        replay_s = time.perf_counter() - t0
        assert len(past.tasks) == n
        t0 = time.perf_counter()
        summary = await Ensemble(resume=run_dir, backend=SimulatedBackend(1, 64)).run()
        resume_s = time.perf_counter() - t0
        assert summary.ok
    return replay_s, resume_s, size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--sim-tasks", type=int, default=100_000)
    parser.add_argument("--resume-tasks", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    n = args.tasks
    for rep in range(args.repeat):
        for durable in (True, False):
            elapsed, syncs = asyncio.run(local_run(n, durable))
            print(
                f"[{rep}] local {n} true tasks, journal {'durable' if durable else 'OS-only'}: "
                f"{n / elapsed:6.0f} tasks/s ({syncs} fdatasync calls)"
            )
    for durable in (True, False):
        elapsed = asyncio.run(sim_run(args.sim_tasks, durable))
        print(
            f"engine alone, {args.sim_tasks} tasks, journal {'durable' if durable else 'OS-only'}:"
            f" {args.sim_tasks / elapsed:7.0f} tasks/s"
        )
    replay_s, resume_s, size = asyncio.run(resume_figures(args.resume_tasks))
    print(
        f"resume of a {args.resume_tasks}-task journal ({size / 1e6:.1f} MB, half done): "
        f"replay {replay_s:.2f} s, replay + rebuild + run the rest {resume_s:.2f} s"
    )


if __name__ == "__main__":
    main()
