"""The run report at scale: time and file sizes for a 10^5-task simulated run.

Runs 10^5 tasks (1 in 100 failing, retried once) on a simulated machine, then times
``write_report`` (journal -> PNG + HTML) and its parts, and prints the file sizes. For
comparison it also times the fastest raw pass over the same journal (``read_journal``, which
only decodes), so the report's own cost reads as a ratio.

    python benchmarks/report_scale.py [--tasks 100000] [--nodes 4] [--cores 56]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from matensemble import Ensemble, SimulatedBackend, Task
from matensemble.journal import JOURNAL_NAME, read_journal
from matensemble.report import read_run, write_report


def tasks(n: int) -> list[Task]:
    return [
        Task(
            id=f"t{i}",
            command=("sim",),
            retries=1,
            tags={"sim_duration": str(1.0 + (i * 7919) % 60), "sim_exit": str(int(i % 100 == 0))},
        )
        for i in range(n)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--cores", type=int, default=56)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        backend = SimulatedBackend(args.nodes, args.cores)
        asyncio.run(Ensemble(tasks(args.tasks), backend=backend, run_dir=run_dir).run())
        journal = run_dir / JOURNAL_NAME
        t0 = time.perf_counter()
        events = sum(1 for _ in read_journal(journal))
        raw = time.perf_counter() - t0
        t0 = time.perf_counter()
        record = read_run(run_dir)
        read = time.perf_counter() - t0
        t0 = time.perf_counter()
        html_only = write_report(run_dir, Path(tmp) / "html", png=False)
        html_time = time.perf_counter() - t0
        t0 = time.perf_counter()
        files = write_report(run_dir, Path(tmp) / "both")
        both = time.perf_counter() - t0
        assert files.png is not None
        print(f"{args.tasks} tasks on {args.nodes} x {args.cores} simulated cores")
        print(f"journal: {events} events, {journal.stat().st_size / 1e6:.1f} MB")
        print(f"attempts {len(record.attempts)}, failures {len(record.failures)}")
        print(f"raw decode of the journal (read_journal):  {raw:6.2f} s")
        print(f"read_run (attempts, state changes):        {read:6.2f} s ({read / raw:.1f}x raw)")
        print(f"report, HTML only:                         {html_time:6.2f} s")
        print(f"report, PNG + HTML:                        {both:6.2f} s ({both / raw:.1f}x raw)")
        print(f"bars drawn {files.bars} (every {files.sampled_every} attempt(s))")
        print(f"report.html {html_only.html.stat().st_size / 1e6:.2f} MB")
        print(f"report.png  {files.png.stat().st_size / 1e3:.0f} kB")


if __name__ == "__main__":
    main()
