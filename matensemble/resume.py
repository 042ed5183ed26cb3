"""Checks before a run is resumed: is the ensemble the user gives the one in the journal?"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import msgspec

from matensemble.errors import ResumeMismatch
from matensemble.model import Task

__all__ = ["new_tasks_for_resume"]

_SHOWN = 5


def new_tasks_for_resume(
    recorded: Mapping[str, Task], given: Iterable[Task], *, add_new: bool, where: str
) -> list[Task]:
    """The tasks of ``given`` that the journal does not know yet.

    A task the journal knows must be given unchanged; a task the journal knows may be left out
    (it is resumed from the journal). New tasks are accepted only with ``add_new``.

    Raises:
        ResumeMismatch: some task changed, or there are new tasks without ``add_new``; the
            message says which and how.
    """
    changed: list[str] = []
    new: list[Task] = []
    for task in given:
        old = recorded.get(task.id)
        if old is None:
            new.append(task)
        elif old != task:
            changed.append(f"{task.id!r} ({_difference(old, task)})")
    problems = []
    if changed:
        problems.append(f"{len(changed)} task(s) changed: " + "; ".join(changed[:_SHOWN]))
    if new and not add_new:
        ids = ", ".join(repr(t.id) for t in new[:_SHOWN])
        more = f" and {len(new) - _SHOWN} more" if len(new) > _SHOWN else ""
        problems.append(
            f"{len(new)} task(s) are not in the journal: {ids}{more}; to add them to the run, "
            "resume with add_new=True (CLI: --add-new)"
        )
    if problems:
        raise ResumeMismatch(f"cannot resume {where}: " + ". ".join(problems))
    return new


def _difference(old: Task, new: Task) -> str:
    a, b = msgspec.structs.asdict(old), msgspec.structs.asdict(new)
    parts = []
    for field, before in a.items():
        after = b[field]
        if before != after:
            parts.append(f"{field}: {_short(before)} -> {_short(after)}")
    return ", ".join(parts)


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
