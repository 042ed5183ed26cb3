"""The timeline's layout: one row per core or GPU slot, one bar per attempt on its rows.

An attempt on several neighbouring cores of a node is one bar over those rows, so a 56-core
MPI task is one bar, not 56. Above ``max_bars`` bars the timeline keeps every k-th attempt (in
start order, deterministic) and says so; the utilisation and state counts stay exact.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import NamedTuple

from matensemble.report.record import Attempt, RunRecord

__all__ = ["MAX_BARS", "Bar", "Timeline", "layout_timeline"]

MAX_BARS = 250_000


class Bar(NamedTuple):
    """Rows ``row_lo..row_hi`` (inclusive) of ``Timeline.rows`` busy with attempt ``attempt``."""

    row_lo: int
    row_hi: int
    attempt: int  # index into Timeline.attempts


@dataclass(frozen=True)
class Timeline:
    rows: list[str]  # labels, e.g. "node0 core 3", "node0 gpu 1"
    attempts: list[Attempt]  # the attempts drawn (all, or every k-th)
    bars: list[Bar]
    sampled_every: int  # 1: every attempt is drawn
    total_attempts: int


def layout_timeline(record: RunRecord, *, max_bars: int = MAX_BARS) -> Timeline:
    """Rows and bars for ``record``'s attempts, sampled down to at most about ``max_bars``."""
    keys: set[tuple[str, int, str]] = set()
    for a in record.attempts:
        for slot in a.placement:
            keys.update((slot.node, 0, str(c)) for c in slot.cores)
            keys.update((slot.node, 1, g) for g in slot.gpus)
    ordered = sorted(keys, key=lambda k: (_natural(k[0]), k[1], _natural(k[2])))
    row_of = {k: i for i, k in enumerate(ordered)}
    rows = [f"{node} {'gpu' if kind else 'core'} {ident}" for node, kind, ident in ordered]

    spans = [_spans(a, row_of) for a in record.attempts]
    total = sum(len(s) for s in spans)
    every = max(1, math.ceil(total / max_bars)) if max_bars > 0 else 1
    attempts: list[Attempt] = []
    bars: list[Bar] = []
    for i, (attempt, attempt_spans) in enumerate(zip(record.attempts, spans, strict=True)):
        if i % every:
            continue
        index = len(attempts)
        attempts.append(attempt)
        bars.extend(Bar(lo, hi, index) for lo, hi in attempt_spans)
    return Timeline(rows, attempts, bars, every, len(record.attempts))


def _spans(attempt: Attempt, row_of: dict[tuple[str, int, str], int]) -> list[tuple[int, int]]:
    """The attempt's rows, merged into runs of neighbouring rows."""
    rows = sorted(
        {row_of[(s.node, 0, str(c))] for s in attempt.placement for c in s.cores}
        | {row_of[(s.node, 1, g)] for s in attempt.placement for g in s.gpus}
    )
    spans: list[tuple[int, int]] = []
    for row in rows:
        if spans and spans[-1][1] == row - 1:
            spans[-1] = (spans[-1][0], row)
        else:
            spans.append((row, row))
    return spans


def _natural(text: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key that puts node2 before node10."""
    return tuple(
        (0, int(part)) if part.isdigit() else (1, part) for part in re.split(r"(\d+)", text) if part
    )
