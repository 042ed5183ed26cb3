"""Step series over the run's time: busy and available cores and GPUs, tasks in each state.

A series is a step function: ``values[i]`` holds from ``times[i]`` to ``times[i + 1]`` (the
last to the run's end). Exact when it changes at most ``max_points`` times; otherwise it is the
time average over ``max_points`` equal bins, so 10^5 tasks still make a small, honest picture
(an average keeps the area: busy core-seconds stay what they were).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from matensemble.model import TaskState
from matensemble.report.record import WAITING, RunRecord

__all__ = [
    "MAX_POINTS",
    "STATES",
    "StackedSeries",
    "StepSeries",
    "state_counts",
    "utilisation",
]

MAX_POINTS = 2000
STATES = (WAITING, "running", *(s.value for s in TaskState if s.terminal))


@dataclass(frozen=True)
class StepSeries:
    times: list[float]
    values: list[float]
    averaged: bool = False  # True: values are averages over equal bins


@dataclass(frozen=True)
class StackedSeries:
    """Several step functions on one time grid (for a stacked plot)."""

    times: list[float]
    values: dict[str, list[float]]
    averaged: bool = False


def utilisation(record: RunRecord, *, max_points: int = MAX_POINTS) -> dict[str, StepSeries]:
    """Busy and available cores and GPUs over time."""
    busy_cores: list[tuple[float, float]] = []
    busy_gpus: list[tuple[float, float]] = []
    for a in record.attempts:
        cores, gpus = a.cores, a.gpus
        busy_cores += [(a.start, cores), (a.end, -cores)]
        if gpus:
            busy_gpus += [(a.start, gpus), (a.end, -gpus)]
    cores_total: list[tuple[float, float]] = []
    gpus_total: list[tuple[float, float]] = []
    for s in record.sessions:
        cores_total += [(s.start, s.cores), (s.end, -s.cores)]
        gpus_total += [(s.start, s.gpus), (s.end, -s.gpus)]
    end = record.end
    return {
        "busy cores": _steps(busy_cores, end, max_points),
        "available cores": _steps(cores_total, end, max_points),
        "busy GPUs": _steps(busy_gpus, end, max_points),
        "available GPUs": _steps(gpus_total, end, max_points),
    }


def state_counts(record: RunRecord, *, max_points: int = MAX_POINTS) -> StackedSeries:
    """How many tasks are in each state over time (waiting, running and the final states)."""
    changes: dict[str, list[tuple[float, float]]] = {state: [] for state in STATES}
    current: dict[str, str] = {}
    for t, task, state in record.transitions:
        old = current.get(task)
        if old == state:
            continue
        if old is not None:
            changes[old].append((t, -1))
        changes[state].append((t, 1))
        current[task] = state
    exact = {state: _steps(c, record.end, len(c) + 2) for state, c in changes.items()}
    grid = sorted({t for s in exact.values() for t in s.times})
    if len(grid) <= max_points or record.end <= 0:
        return StackedSeries(grid, {state: _at(s, grid) for state, s in exact.items()})
    binned = {
        state: _binned(s.times, s.values, record.end, max_points) for state, s in exact.items()
    }
    times = binned[STATES[0]].times
    return StackedSeries(times, {state: s.values for state, s in binned.items()}, averaged=True)


def _at(series: StepSeries, grid: list[float]) -> list[float]:
    """The step function's value at each time of ``grid`` (sorted)."""
    values: list[float] = []
    i = 0
    for t in grid:
        while i + 1 < len(series.times) and series.times[i + 1] <= t:
            i += 1
        values.append(series.values[i])
    return values


def _steps(changes: Iterable[tuple[float, float]], end: float, max_points: int) -> StepSeries:
    """The step function that starts at 0 and adds each ``(time, delta)``."""
    times: list[float] = [0.0]
    values: list[float] = [0.0]
    level = 0.0
    for t, delta in sorted(changes):
        level += delta
        if t == times[-1]:
            values[-1] = level
        else:
            times.append(t)
            values.append(level)
    if len(times) <= max_points or end <= 0:
        return StepSeries(times, values)
    return _binned(times, values, end, max_points)


def _binned(times: list[float], values: list[float], end: float, bins: int) -> StepSeries:
    """Time averages of a step function over ``bins`` equal bins of ``[0, end]``."""
    width = end / bins
    sums = [0.0] * bins
    for i, (t, v) in enumerate(zip(times, values, strict=True)):
        t1 = min(times[i + 1] if i + 1 < len(times) else end, end)
        if v == 0 or t1 <= t:
            continue
        b = min(int(t / width), bins - 1)
        while t < t1:
            edge = min((b + 1) * width, t1)
            sums[min(b, bins - 1)] += v * (edge - t)
            t, b = edge, b + 1
    return StepSeries([b * width for b in range(bins)], [s / width for s in sums], averaged=True)
