"""The observer protocol: how the journal, status file, logs and progress display follow a run."""

from __future__ import annotations

from collections.abc import Iterable

from matensemble.errors import DiskFull
from matensemble.events import Event

__all__ = ["Observer", "close_all"]


class Observer:
    """Receives every event of one run, in order, on the event loop thread.

    ``on_event`` must be cheap (it runs once per task event); expensive work belongs in
    ``flush``, which the engine calls after each batch of events, and ``close``, at the end.
    """

    def on_event(self, event: Event) -> None:
        """One event; keep it O(1)."""

    def flush(self) -> None:
        """A batch of events is complete: write buffers, refresh displays."""

    def close(self) -> None:
        """The run is over (also after an error): write everything, release files."""


def close_all(observers: Iterable[Observer]) -> DiskFull | None:
    """Close every observer, also when one of them finds the disk full; return that error."""
    full: DiskFull | None = None
    for observer in observers:
        try:
            observer.close()
        except DiskFull as exc:
            full = full or exc
    return full
