"""Batch waves: the previous generation's behaviour, kept to measure what adaptivity gains."""

from __future__ import annotations

from matensemble.strategies.base import CompletionPolicy

__all__ = ["Waves"]


class Waves(CompletionPolicy):
    """Fill the machine, then start nothing until the whole wave has finished."""

    name = "waves"

    def __init__(self) -> None:
        self._filling = True

    def may_start(self, running: int) -> bool:
        if running == 0:
            self._filling = True
        return self._filling

    def blocked(self) -> None:
        self._filling = False
