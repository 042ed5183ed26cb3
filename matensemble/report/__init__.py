"""Run reports: pictures of what a run did, from its journal alone.

``write_report(run_dir, out_dir)`` (CLI: ``matensemble report RUN_DIR [-o DIR]``) writes
``report.png`` (matplotlib) and ``report.html`` (one self-contained, offline, interactive
file): a timeline with one row per core or GPU slot and one bar per attempt coloured by its
outcome, busy vs available cores and GPUs over time, the number of tasks in each state over
time, and the failures with their reasons. It reads the journal the way ``resume`` does, so it
works on a finished run, a run still going, a crashed run and a resumed one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from matensemble.report.figures import run_figures
from matensemble.report.html import write_html
from matensemble.report.png import PNG_SIZE, require_matplotlib, write_png
from matensemble.report.record import Attempt, RunRecord, read_run
from matensemble.report.timeline import MAX_BARS

__all__ = [
    "MAX_BARS",
    "PNG_SIZE",
    "Attempt",
    "ReportFiles",
    "RunRecord",
    "read_run",
    "write_report",
]


@dataclass(frozen=True)
class ReportFiles:
    """What ``write_report`` wrote, and what it drew."""

    png: Path | None
    html: Path
    record: RunRecord
    bars: int  # bars on the timeline
    sampled_every: int  # 1: every attempt drawn


def write_report(
    run_dir: Path | str,
    out_dir: Path | str | None = None,
    *,
    png: bool = True,
    max_bars: int = MAX_BARS,
) -> ReportFiles:
    """Write ``report.html`` (and ``report.png``) for the run in ``run_dir``.

    Args:
        out_dir: where the files go (created); default ``<run_dir>/report``.
        png: also draw the PNG (needs matplotlib: ``pip install 'matensemble[report]'``).
        max_bars: above this many timeline bars, draw every k-th attempt (see the docs).

    Raises:
        JournalError: no journal in ``run_dir``, or a corrupt one (names file and line).
        MatEnsembleError: ``png`` without matplotlib (says how to install it).
    """
    if png:
        require_matplotlib()  # before the journal is read
    run_dir = Path(run_dir)
    record = read_run(run_dir)
    out = Path(out_dir) if out_dir is not None else run_dir / "report"
    figures = run_figures(record, max_bars=max_bars)
    out.mkdir(parents=True, exist_ok=True)
    png_path = None
    if png:
        png_path = out / "report.png"
        write_png(figures, png_path)
    html_path = out / "report.html"
    write_html(figures, html_path)
    timeline = figures.timeline
    return ReportFiles(png_path, html_path, record, len(timeline.bars), timeline.sampled_every)
