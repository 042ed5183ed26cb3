"""A live progress display (rich) for the CLI: one bar, counts per state, failures as they come."""

from __future__ import annotations

from collections.abc import Callable

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from matensemble.events import Event, TaskAdded, TaskFinished, TaskStarted, TaskWithdrawn
from matensemble.model import TaskState
from matensemble.observer import Observer

__all__ = ["ProgressDisplay"]


class ProgressDisplay(Observer):
    """Shows done/total, running, failed; prints one line per task that does not succeed.

    ``queued_ahead`` (e.g. ``lambda: ensemble.queued_ahead``) says how many of the running
    tasks are queued ahead and not started yet; the display then says so beside the count.
    Rendering happens on ``flush`` (once per batch of events), never per event.
    """

    def __init__(
        self, console: Console | None = None, queued_ahead: Callable[[], int] | None = None
    ) -> None:
        self.console = console or Console(stderr=True)
        self._queued_ahead = queued_ahead
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[detail]}"),
            TimeElapsedColumn(),
            console=self.console,
            refresh_per_second=2,
            transient=False,
        )
        self._bar: TaskID | None = None
        self._total = 0
        self._done = 0
        self._running: set[str] = set()
        self._bad = 0
        self._lines: list[str] = []

    def on_event(self, event: Event) -> None:
        if isinstance(event, TaskAdded):
            self._total += 1
        elif isinstance(event, TaskStarted):
            self._running.add(event.id)
        elif isinstance(event, TaskWithdrawn):
            self._running.discard(event.id)
        elif isinstance(event, TaskFinished):
            r = event.result
            self._running.discard(r.id)
            if event.retry_in is not None:
                self._lines.append(
                    f"[yellow]retry[/] {r.id} (attempt {r.attempts} {r.state.value}: {r.reason})"
                )
                return
            self._done += 1
            if r.state is not TaskState.SUCCEEDED:
                self._bad += 1
                colour = "yellow" if r.state is TaskState.SKIPPED else "red"
                self._lines.append(f"[{colour}]{r.state.value}[/] {r.id}: {r.reason}")

    def flush(self) -> None:
        if self._bar is None:
            self._progress.start()
            self._bar = self._progress.add_task("tasks", total=self._total, detail="")
        for line in self._lines:
            self._progress.console.print(line, highlight=False)
        self._lines.clear()
        ahead = self._queued_ahead() if self._queued_ahead is not None else 0
        detail = f"running {len(self._running)}"
        if ahead:
            detail += f" ({ahead} queued ahead)"
        if self._bad:
            detail += f"  [red]not ok {self._bad}[/]"
        self._progress.update(self._bar, total=self._total, completed=self._done, detail=detail)

    def close(self) -> None:
        if self._bar is not None:
            self.flush()
            self._progress.stop()
