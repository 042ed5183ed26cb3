"""The report as one self-contained HTML file: no network, no CDN, works from a USB stick.

The page holds its data as JSON and a small hand-written script that draws on canvases:
a timeline (hover a bar: task id, attempt, times, exit code, reason), utilisation and state
counts, all zoomable together (mouse wheel, drag to pan, double-click to reset); the failures
table is plain HTML. Canvas drawing keeps 10^5 bars responsive where an SVG element per bar
would not.
"""

from __future__ import annotations

import html
import json
import math
from importlib import resources
from pathlib import Path

from matensemble.report.failures import COLUMNS, failure_rows
from matensemble.report.figures import RunFigures
from matensemble.report.record import OUTCOMES, RunRecord
from matensemble.report.series import STATES, StackedSeries, StepSeries
from matensemble.report.style import OUTCOME_COLOURS, STATE_COLOURS
from matensemble.report.timeline import Timeline

__all__ = ["FAILURES_SHOWN", "write_html"]

FAILURES_SHOWN = 1000
_LINE_COLOURS = {
    "busy cores": "#1f77b4",
    "available cores": "#1f77b4",
    "busy GPUs": "#9467bd",
    "available GPUs": "#9467bd",
}


def write_html(figures: RunFigures, path: Path) -> None:
    """Write the interactive report to ``path``."""
    record, timeline, utilisation, counts = (
        figures.record,
        figures.timeline,
        figures.utilisation,
        figures.counts,
    )
    data = _data(record, timeline, utilisation, counts)
    # "</" cannot end the script element early once escaped; JSON reads "<\/" as "</".
    payload = json.dumps(data, separators=(",", ":"), allow_nan=False).replace("</", "<\\/")
    page = resources.files("matensemble.report")
    css = page.joinpath("page.css").read_text(encoding="utf-8")
    script = page.joinpath("page.js").read_text(encoding="utf-8")
    backend = figures.backend
    title = f"MatEnsemble run {record.run_id}"
    meta = (
        f"{backend} backend, {record.tasks} tasks, {timeline.total_attempts} attempts, "
        f"{len(record.sessions)} session(s), {record.end:.3f} s"
        + ("" if record.finished else ", not finished")
    )
    notes = list(record.notes)
    if timeline.sampled_every > 1:
        notes.append(
            f"{timeline.total_attempts} attempts: the timeline shows every "
            f"{timeline.sampled_every}th (in start order); utilisation and counts include all"
        )
    if any(s.averaged for s in utilisation.values()) or counts.averaged:
        notes.append("utilisation and state counts are averages over equal time bins")
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        f"<style>{css}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="meta">{html.escape(meta)}</p>',
        *(f'<p class="note">{html.escape(n)}</p>' for n in notes),
        '<p class="hint">Hover a bar for its task; mouse wheel zooms time, drag pans, '
        'double-click resets. <button id="reset" type="button">reset zoom</button> '
        '<span id="range"></span></p>',
        "<h2>Timeline: one row per core or GPU, one bar per attempt</h2>",
        _legend(OUTCOME_COLOURS),
        '<canvas id="timeline"></canvas>',
        "<h2>Utilisation: busy (solid) and available (dashed) cores and GPUs</h2>",
        '<canvas id="utilisation"></canvas>',
        "<h2>Tasks in each state (stacked)</h2>",
        _legend(STATE_COLOURS),
        '<canvas id="counts"></canvas>',
        _failures(record),
        '<div id="tip"></div>',
        f'<script id="report-data" type="application/json">{payload}</script>',
        f"<script>{script}</script>",
        "</body></html>",
    ]
    path.write_text("\n".join(parts), encoding="utf-8")


def _data(
    record: RunRecord,
    timeline: Timeline,
    utilisation: dict[str, StepSeries],
    counts: StackedSeries,
) -> dict[str, object]:
    task_index: dict[str, int] = {}
    att: dict[str, list[object]] = {k: [] for k in ("task", "n", "s", "e", "o", "x", "r")}
    outcome_index = {o: i for i, o in enumerate(OUTCOMES)}
    for a in timeline.attempts:
        att["task"].append(task_index.setdefault(a.task, len(task_index)))
        att["n"].append(a.attempt)
        att["s"].append(_t(a.start))
        att["e"].append(_t(a.end))
        att["o"].append(outcome_index[a.outcome])
        if a.signal is not None:
            att["x"].append(f"signal {a.signal}")
        else:
            att["x"].append(None if a.returncode is None else str(a.returncode))
        att["r"].append(a.reason)
    return {
        "end": _t(record.end),
        "rows": timeline.rows,
        "tasks": list(task_index),
        "outcomes": list(OUTCOMES),
        "colours": [OUTCOME_COLOURS[o] for o in OUTCOMES],
        "attempts": att,
        "bars": {
            "lo": [b.row_lo for b in timeline.bars],
            "hi": [b.row_hi for b in timeline.bars],
            "a": [b.attempt for b in timeline.bars],
        },
        "util": {
            name: {"t": [_t(t) for t in s.times], "v": [_t(v) for v in s.values]}
            for name, s in utilisation.items()
        },
        "lineColours": _LINE_COLOURS,
        "counts": {
            "t": [_t(t) for t in counts.times],
            "v": {k: [_t(v) for v in vs] for k, vs in counts.values.items()},
        },
        "states": list(STATES),
        "stateColours": STATE_COLOURS,
    }


def _t(value: float) -> float:
    """Rounded for a small file (0.1 ms); JSON has no NaN or infinity."""
    return round(value, 4) if math.isfinite(value) else 0.0


def _legend(colours: dict[str, str]) -> str:
    items = "".join(
        f'<span><i style="background:{c}"></i>{html.escape(name)}</span>'
        for name, c in colours.items()
    )
    return f'<p class="legend">{items}</p>'


def _failures(record: RunRecord) -> str:
    rows, more = failure_rows(record, limit=FAILURES_SHOWN)
    if not rows:
        return "<h2>Failures: none</h2>"
    head = "".join(f"<th>{html.escape(c)}</th>" for c in COLUMNS)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r.cells()) + "</tr>" for r in rows
    )
    tail = f"<p>and {more} more (the journal has them all)</p>" if more else ""
    return (
        f"<h2>Failures: {len(record.failures)}</h2>"
        f'<table id="failures"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{tail}'
    )
