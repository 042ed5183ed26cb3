"""Refill a freed slot at once: the default completion handling."""

from __future__ import annotations

from matensemble.strategies.base import CompletionPolicy

__all__ = ["Adaptive"]


class Adaptive(CompletionPolicy):
    """Start the next ready task as soon as resources free up (every slot stays busy)."""

    name = "adaptive"
