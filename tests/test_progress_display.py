"""The CLI's live progress display, rendered to a string."""

from __future__ import annotations

from io import StringIO

from rich.console import Console

from matensemble.events import TaskAdded, TaskFinished, TaskStarted
from matensemble.model import Slot, Task, TaskResult, TaskState
from matensemble.progress import ProgressDisplay


def rendered(queued_ahead: int | None) -> str:
    out = StringIO()
    ask = None if queued_ahead is None else (lambda: queued_ahead)
    display = ProgressDisplay(Console(file=out, width=120), queued_ahead=ask)
    tasks = [Task(id=f"t{i}", command=("true",)) for i in range(5)]
    for task in tasks:
        display.on_event(TaskAdded(0.0, task))
    for i, task in enumerate(tasks[:4]):
        display.on_event(TaskStarted(1.0, task.id, 1, (Slot("n", (i % 2,), ()),)))
    failed = TaskResult(id="t0", state=TaskState.FAILED, attempts=1, reason="exited with code 3")
    display.on_event(TaskFinished(2.0, failed))
    display.flush()
    display.close()
    return out.getvalue()


def test_the_running_count_says_how_many_of_them_are_queued_ahead() -> None:
    text = rendered(queued_ahead=1)
    assert "1/5" in text and "running 3 (1 queued ahead)" in text, text
    assert "not ok 1" in text and "failed t0: exited with code 3" in text, text


def test_nothing_is_said_of_queueing_ahead_when_no_task_is_queued_ahead() -> None:
    for ahead in (None, 0):
        text = rendered(queued_ahead=ahead)
        assert "running 3" in text and "queued ahead" not in text, text
