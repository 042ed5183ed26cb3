"""Colours and names shared by the PNG and the HTML report, so both read the same way."""

from __future__ import annotations

__all__ = ["OUTCOME_COLOURS", "STATE_COLOURS"]

OUTCOME_COLOURS = {
    "succeeded": "#2ca02c",
    "failed": "#d62728",
    "timed_out": "#ff7f0e",
    "cancelled": "#7f7f7f",
    "interrupted": "#bcbd22",
    "unfinished": "#1f77b4",
}
STATE_COLOURS = {
    "waiting": "#c7c7c7",
    "running": "#1f77b4",
    "succeeded": "#2ca02c",
    "failed": "#d62728",
    "timed_out": "#ff7f0e",
    "cancelled": "#7f7f7f",
    "skipped": "#9467bd",
}
