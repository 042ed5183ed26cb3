"""The report as one PNG: timeline, utilisation, state counts and the first failures.

Drawn with matplotlib's Agg canvas directly (no pyplot, no display, no global backend
switch), so it works on a login node without X and inside a process that uses matplotlib
for something else. One rectangle collection per outcome keeps 10^5 bars fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from matensemble.errors import MatEnsembleError
from matensemble.report.failures import COLUMNS, failure_rows
from matensemble.report.figures import RunFigures
from matensemble.report.record import OUTCOMES, RunRecord
from matensemble.report.series import StackedSeries, StepSeries
from matensemble.report.style import OUTCOME_COLOURS, STATE_COLOURS
from matensemble.report.timeline import Timeline

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = ["PNG_SIZE", "require_matplotlib", "write_png"]

PNG_SIZE = (1400, 1100)  # pixels: the figure is always this size
_DPI = 100
_TABLE_ROWS = 8
_LABELLED_ROWS = 40
_OUTLINED_BARS = 3000


def write_png(figures: RunFigures, path: Path) -> None:
    """Draw the report into ``path`` (PNG, ``PNG_SIZE`` pixels).

    Raises:
        MatEnsembleError: matplotlib is not installed (says how to install it).
    """
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(PNG_SIZE[0] / _DPI, PNG_SIZE[1] / _DPI), dpi=_DPI)
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(4, 1, height_ratios=[4.0, 1.6, 1.6, 1.5], hspace=0.45)
    ax_time = fig.add_subplot(grid[0])
    ax_util = fig.add_subplot(grid[1], sharex=ax_time)
    ax_count = fig.add_subplot(grid[2], sharex=ax_time)
    ax_fail = fig.add_subplot(grid[3])
    record, timeline = figures.record, figures.timeline
    backend = figures.backend
    fig.suptitle(
        f"run {record.run_id} ({backend}): {record.tasks} tasks, "
        f"{timeline.total_attempts} attempts, {len(record.sessions)} session(s)"
        + ("" if record.finished else " - not finished"),
        fontsize=12,
    )
    _draw_timeline(ax_time, timeline)
    _draw_utilisation(ax_util, figures.utilisation, record.end)
    _draw_counts(ax_count, figures.counts, record.end)
    _draw_failures(ax_fail, record)
    ax_time.set_xlim(0, record.end if record.end > 0 else 1.0)
    fig.savefig(path, dpi=_DPI)


def require_matplotlib() -> None:
    """Raise ``MatEnsembleError`` saying how to install matplotlib if it is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise MatEnsembleError(
            "the PNG report needs matplotlib, which is not installed: "
            "pip install 'matensemble[report]' (or: uv run --extra report matensemble report "
            "...); --no-png writes the HTML report alone"
        ) from None


def _draw_timeline(ax: Axes, timeline: Timeline) -> None:
    import numpy as np
    from matplotlib.collections import PolyCollection
    from matplotlib.patches import Patch

    # One (start, end, lo, hi) row per bar, grouped by outcome; rectangles built in numpy.
    outcome_of = {o: i for i, o in enumerate(OUTCOMES)}
    attempts = timeline.attempts
    table = np.array(
        [
            (attempts[b.attempt].start, attempts[b.attempt].end, b.row_lo, b.row_hi)
            for b in timeline.bars
        ],
        dtype=float,
    ).reshape(-1, 4)
    kinds = np.array([outcome_of[attempts[b.attempt].outcome] for b in timeline.bars], dtype=int)
    by_outcome = {}
    for index, outcome in enumerate(OUTCOMES):
        start, end, lo, hi = table[kinds == index].T
        lo, hi = lo - 0.4, hi + 0.4
        by_outcome[outcome] = np.stack(
            [
                np.stack([start, lo], 1),
                np.stack([start, hi], 1),
                np.stack([end, hi], 1),
                np.stack([end, lo], 1),
            ],
            axis=1,
        )
    few = len(timeline.bars) <= _OUTLINED_BARS  # outlined, so that neighbours stay apart
    for outcome, verts in by_outcome.items():
        if len(verts):
            colour = OUTCOME_COLOURS[outcome]
            ax.add_collection(
                PolyCollection(
                    verts,  # type: ignore[arg-type]  # an (n, 4, 2) array is accepted
                    facecolors=colour,
                    edgecolors="white" if few else colour,
                    linewidths=0.8 if few else 0.2,
                    rasterized=True,
                )
            )
    n = len(timeline.rows)
    ax.set_ylim(max(n, 1) - 0.5, -0.5)
    if n <= _LABELLED_ROWS:
        ax.set_yticks(range(n), timeline.rows, fontsize=7)
    else:
        ax.set_yticks([])
        ax.set_ylabel(f"{n} core/GPU slots", fontsize=9)
    title = "timeline: one row per core or GPU, one bar per attempt"
    if timeline.sampled_every > 1:
        title += f" (every {timeline.sampled_every}th attempt shown)"
    ax.set_title(title, fontsize=10, loc="left")
    if len(timeline.bars):
        ax.legend(
            handles=[
                Patch(color=OUTCOME_COLOURS[o], label=o) for o in OUTCOMES if len(by_outcome[o])
            ],
            loc="upper right",
            fontsize=7,
            ncols=len(OUTCOMES),
        )


def _draw_utilisation(ax: Axes, series: dict[str, StepSeries], end: float) -> None:
    styles = {
        "busy cores": ("#1f77b4", "-"),
        "available cores": ("#1f77b4", "--"),
        "busy GPUs": ("#9467bd", "-"),
        "available GPUs": ("#9467bd", "--"),
    }
    for name, s in series.items():
        if not any(s.values):
            continue
        colour, line = styles[name]
        ax.step(
            [*s.times, end],
            [*s.values, s.values[-1]],
            where="post",
            color=colour,
            linestyle=line,
            label=name,
            linewidth=1,
        )
    averaged = any(s.averaged for s in series.values())
    ax.set_title("utilisation" + (" (bin averages)" if averaged else ""), fontsize=10, loc="left")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper right", fontsize=7)
    ax.set_ylim(bottom=0)


def _draw_counts(ax: Axes, stacked: StackedSeries, end: float) -> None:
    xs = [*stacked.times, end]
    base = [0.0] * len(xs)
    for state, values in stacked.values.items():
        if not any(values):
            continue
        top = [b + y for b, y in zip(base, [*values, values[-1]], strict=True)]
        ax.fill_between(
            xs, base, top, step="post", color=STATE_COLOURS[state], label=state, linewidth=0
        )
        base = top
    title = "tasks in each state (stacked" + (", bin averages)" if stacked.averaged else ")")
    ax.set_title(title, fontsize=10, loc="left")
    ax.set_xlabel("seconds since the run started")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper left", fontsize=7, ncols=4)
    ax.set_ylim(bottom=0)


def _draw_failures(ax: Axes, record: RunRecord) -> None:
    ax.axis("off")
    rows, more = failure_rows(record, limit=_TABLE_ROWS)
    if not rows:
        ax.set_title("failures: none", fontsize=10, loc="left")
        return
    title = f"failures: {len(record.failures)}"
    if more:
        title += f" (first {len(rows)} shown; the HTML report lists more)"
    ax.set_title(title, fontsize=10, loc="left")
    cells = [[c if len(c) <= 70 else c[:67] + "..." for c in r.cells()] for r in rows]
    table = ax.table(cellText=cells, colLabels=COLUMNS, loc="upper left", cellLoc="left")
    table.auto_set_font_size(False)
    table.set_fontsize(7)
    table.auto_set_column_width(list(range(len(COLUMNS))))
