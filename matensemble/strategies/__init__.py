"""Submission orders and completion policies (one small file each)."""

from __future__ import annotations

from matensemble.strategies.adaptive import Adaptive
from matensemble.strategies.base import CompletionPolicy, SubmissionOrder
from matensemble.strategies.control import EnsembleControl
from matensemble.strategies.fifo import FIFO
from matensemble.strategies.gpu_first import GPUFirst
from matensemble.strategies.longest_first import LongestFirst
from matensemble.strategies.priority import Priority
from matensemble.strategies.retry import RetryPolicy
from matensemble.strategies.waves import Waves

__all__ = [
    "FIFO",
    "Adaptive",
    "CompletionPolicy",
    "EnsembleControl",
    "GPUFirst",
    "LongestFirst",
    "Priority",
    "RetryPolicy",
    "SubmissionOrder",
    "Waves",
    "completion_by_name",
    "order_by_name",
]

_ORDERS: dict[str, type[SubmissionOrder]] = {
    cls.name: cls for cls in (FIFO, Priority, LongestFirst, GPUFirst)
}
_COMPLETIONS: dict[str, type[CompletionPolicy]] = {cls.name: cls for cls in (Adaptive, Waves)}


def order_by_name(name: str, *, backfill: bool = True) -> SubmissionOrder:
    """Build a submission order from its name (as used in ensemble files and the CLI)."""
    try:
        return _ORDERS[name](backfill=backfill)
    except KeyError:
        raise ValueError(
            f"unknown strategy {name!r}; choose one of {', '.join(sorted(_ORDERS))}"
        ) from None


def completion_by_name(name: str) -> CompletionPolicy:
    """Build a completion policy from its name (``adaptive`` or ``waves``)."""
    try:
        return _COMPLETIONS[name]()
    except KeyError:
        raise ValueError(
            f"unknown completion policy {name!r}; choose one of {', '.join(sorted(_COMPLETIONS))}"
        ) from None
