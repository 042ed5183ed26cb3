"""What the PNG and the HTML report draw, computed once from a ``RunRecord``."""

from __future__ import annotations

from dataclasses import dataclass

from matensemble.report.record import RunRecord
from matensemble.report.series import StackedSeries, StepSeries, state_counts, utilisation
from matensemble.report.timeline import MAX_BARS, Timeline, layout_timeline

__all__ = ["RunFigures", "run_figures"]


@dataclass(frozen=True)
class RunFigures:
    """The laid-out timeline and the series of one run, shared by both writers."""

    record: RunRecord
    timeline: Timeline
    utilisation: dict[str, StepSeries]  # busy/available cores and GPUs
    counts: StackedSeries  # tasks in each state

    @property
    def backend(self) -> str:
        return self.record.sessions[-1].backend if self.record.sessions else "?"


def run_figures(record: RunRecord, *, max_bars: int = MAX_BARS) -> RunFigures:
    return RunFigures(
        record,
        layout_timeline(record, max_bars=max_bars),
        utilisation(record),
        state_counts(record),
    )
