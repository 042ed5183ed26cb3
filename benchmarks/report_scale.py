"""The run report at scale: time and file sizes for a 10^5-task simulated run.

Runs 10^5 tasks (1 in 100 failing, retried once) on a simulated machine, then times
``write_report`` (journal -> PNG + HTML) and its parts, and prints the file sizes. For
comparison it also times the fastest raw pass over the same journal (``read_journal``, which
only decodes), so the report's own cost reads as a ratio.

    python benchmarks/report_scale.py [--tasks 100000] [--nodes 4] [--cores 56] [--browser]

``--browser`` also opens the HTML report in headless Chromium (the tests' DevTools client)
and times loading and drawing it, and redrawing it on a mouse-wheel zoom.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from matensemble import Ensemble, SimulatedBackend, Task
from matensemble.journal import JOURNAL_NAME, read_journal
from matensemble.report import read_run, write_report

T = TypeVar("T")


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


def timed(fn: Callable[[], T]) -> tuple[T, tuple[float, float]]:
    """``fn()``, with its wall-clock and CPU seconds (the CPU figure is steadier on a busy VM)."""
    wall, cpu = time.perf_counter(), time.process_time()
    value = fn()
    return value, (time.perf_counter() - wall, time.process_time() - cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--cores", type=int, default=56)
    parser.add_argument("--browser", action="store_true", help="time the page in Chromium")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        backend = SimulatedBackend(args.nodes, args.cores)
        asyncio.run(Ensemble(tasks(args.tasks), backend=backend, run_dir=run_dir).run())
        journal = run_dir / JOURNAL_NAME
        import matplotlib.figure  # noqa: F401  # imported once, outside the timings

        events, raw = timed(lambda: sum(1 for _ in read_journal(journal)))
        record, read = timed(lambda: read_run(run_dir))
        html_only, html_time = timed(lambda: write_report(run_dir, Path(tmp) / "html", png=False))
        files, both = timed(lambda: write_report(run_dir, Path(tmp) / "both"))
        assert files.png is not None
        print(f"{args.tasks} tasks on {args.nodes} x {args.cores} simulated cores")
        print(f"journal: {events} events, {journal.stat().st_size / 1e6:.1f} MB")
        print(f"attempts {len(record.attempts)}, failures {len(record.failures)}")
        print("                                            wall s   CPU s   CPU vs raw")
        for name, (wall, cpu) in (
            ("raw decode of the journal (read_journal)", raw),
            ("read_run (attempts, state changes)", read),
            ("report, HTML only", html_time),
            ("report, PNG + HTML", both),
        ):
            print(f"{name:42s} {wall:7.2f} {cpu:7.2f} {cpu / raw[1]:8.1f}x")
        print(f"bars drawn {files.bars} (every {files.sampled_every} attempt(s))")
        print(f"report.html {html_only.html.stat().st_size / 1e6:.2f} MB")
        print(f"report.png  {files.png.stat().st_size / 1e3:.0f} kB")
        if args.browser:
            in_browser(html_only.html, Path(tmp) / "profile")


def in_browser(html: Path, profile: Path) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from headless_browser import Browser

    browser = Browser(profile)
    try:
        t0 = time.perf_counter()
        browser.open(html)
        drawn = browser.evaluate("document.body.dataset.barsDrawn")
        load = time.perf_counter() - t0
        box = browser.evaluate("matensembleReport.barBox(0)")
        t0 = time.perf_counter()
        for _ in range(3):
            browser.mouse("mouseWheel", box["x"], box["y"], deltaX=0, deltaY=-120)
        browser.evaluate("document.body.dataset.barsDrawn")
        zoom = (time.perf_counter() - t0) / 3
        print(f"Chromium: load and draw {drawn} bars {load:.2f} s, one zoom redraw {zoom:.2f} s")
        print(f"console messages: {len(browser.console)}")
    finally:
        browser.close()


if __name__ == "__main__":
    main()
