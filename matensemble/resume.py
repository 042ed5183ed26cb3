"""Resuming a run from its journal: the checks before, and the state rebuilt from the replay.

Before anything is written, ``new_tasks_for_resume`` compares the ensemble the user gives with
the journal's. Once the backend is open, ``adopt_left_running`` offers the backend the launches
a crashed driver left running, and ``restore_records`` rebuilds each task's record; the engine
then reopens the unfinished tasks through its own state transitions.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import msgspec

from matensemble.backends.base import Backend, Launch
from matensemble.dispatch import Record
from matensemble.errors import ResumeMismatch
from matensemble.journal import Replay, replay
from matensemble.model import Placement, Task, TaskState
from matensemble.queue_ahead import same_nodes
from matensemble.resources import ResourcePool

__all__ = [
    "adopt_left_running",
    "check_backend_kind",
    "new_tasks_for_resume",
    "read_past",
    "real_results_only",
    "replay_figures",
    "restore_records",
    "unfinished_tasks",
]

_SHOWN = 5


def read_past(
    run_dir: Path,
    backend: Backend,
    given: Iterable[Task],
    *,
    add_new: bool,
    allow_backend_change: bool,
) -> tuple[Replay, list[Task]]:
    """The journal's account of the run as ``backend`` may use it, and the new tasks of
    ``given``; everything a resume checks before it writes a byte.

    Raises:
        JournalError: a missing, corrupt or foreign journal.
        ResumeMismatch: another kind of backend, changed tasks, or new ones without ``add_new``.
    """
    past = replay(run_dir)
    where = str(run_dir)
    check_backend_kind(past, backend, allow_change=allow_backend_change, where=where)
    if not backend.virtual_clock:
        past = real_results_only(past)
    return past, new_tasks_for_resume(past.tasks, given, add_new=add_new, where=where)


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


def check_backend_kind(past: Replay, backend: Backend, *, allow_change: bool, where: str) -> None:
    """Refuse to resume on a kind of backend that the run never used, unless asked to.

    Raises:
        ResumeMismatch: names the recorded kinds, the new one, and how to allow the change.
    """
    if allow_change or not past.backends or backend.name in past.backends:
        return
    recorded = ", ".join(dict.fromkeys(past.backends))
    raise ResumeMismatch(
        f"cannot resume {where}: the run was recorded on the {recorded} backend, not "
        f"{backend.name}; to resume it on {backend.name} anyway, pass "
        "allow_backend_change=True (CLI: --allow-backend-change)"
    )


def real_results_only(past: Replay) -> Replay:
    """``past`` without the results a simulated session recorded: those tasks never ran, so a
    resume on a real backend runs them."""
    if not past.simulated:
        return past
    finished = {i: r for i, r in past.finished.items() if i not in past.simulated}
    return msgspec.structs.replace(past, finished=finished, simulated=frozenset())


def unfinished_tasks(past: Replay) -> list[Task]:
    """The journal's tasks whose outcome does not stand: they are open again on resume."""
    return [task for task_id, task in past.tasks.items() if task_id not in past.finished]


async def adopt_left_running(
    past: Replay,
    pool: ResourcePool,
    backend: Backend,
    tasks_dir: Path,
    run_id: str,
    log: Any,
    ahead: ResourcePool | None = None,
) -> dict[str, tuple[Placement, bool]]:
    """Offer the backend the launches a crashed session left running (with a job id).

    Their resources are claimed first, exactly as they were placed, in ``pool``, or else
    (a launch that was queued ahead, see ``QueueAhead``) in ``ahead``; what the backend does
    not take over is released again and runs anew. A backend that places a queued launch
    on ids of its own choosing (Flux: a booked task moved in on other ids of its node than
    the journal names) gets as many free ids of the same nodes where the exact ones are
    taken. Returns, for each task the backend took over, its placement and whether it was
    claimed in ``ahead``.
    """
    offers = []
    layers: dict[str, ResourcePool] = {}
    for task_id in past.was_running:
        job_id, placement = past.job_ids.get(task_id), past.placements.get(task_id)
        if job_id is None or placement is None:
            continue
        claimed = _claim(placement, pool, ahead, exact=backend.queue_ahead_same_ids)
        if claimed is None:
            continue
        placement, layers[task_id] = claimed
        launch = Launch(
            task=past.tasks[task_id],
            attempt=past.attempts[task_id],
            placement=placement,
            tasks_dir=tasks_dir,
            run_id=run_id,
        )
        offers.append((launch, job_id))
    taken = await backend.adopt(offers) if offers else set()
    adopted = {}
    for launch, job_id in offers:
        layer = layers[launch.task.id]
        if launch.key in taken:
            adopted[launch.task.id] = (launch.placement, layer is not pool)
            log.info("task_adopted", task_id=launch.task.id, job_id=job_id)
        else:
            layer.release(launch.placement)
    return adopted


def _claim(
    placement: Placement, pool: ResourcePool, ahead: ResourcePool | None, exact: bool
) -> tuple[Placement, ResourcePool] | None:
    """Claim ``placement`` in ``pool`` or else ``ahead``; unless ``exact``, as many ids of the
    same nodes where those are taken. ``None``: no room for it."""
    layers = (pool,) if ahead is None else (pool, ahead)
    for layer in layers:
        if layer.claim(placement):
            return placement, layer
    if exact:
        return None
    for layer in layers:
        elsewhere = same_nodes(placement, layer)
        if elsewhere is not None and layer.claim(elsewhere):
            return elsewhere, layer
    return None


def restore_records(
    past: Replay,
    records: dict[str, Record],
    counts: dict[TaskState, int],
    finished: list[str],
) -> list[Task]:
    """Rebuild a record per journal task: finished tasks keep their results (counted in
    ``counts`` and appended to ``finished``). Returns the tasks to reopen, still pending
    and not yet counted."""
    reopened = []
    for task_id, task in past.tasks.items():
        rec = records[task_id] = Record(task)
        rec.attempts = past.attempts.get(task_id, 0)
        rec.failures = past.failures.get(task_id, 0)
        result = past.finished.get(task_id)
        if result is None:
            reopened.append(task)
            continue
        rec.state, rec.result = result.state, result
        counts[result.state] += 1
        finished.append(task_id)
    return reopened


def replay_figures(
    past: Replay, adopted: Mapping[str, object], reopened: list[Task]
) -> dict[str, int]:
    """What a resume took from the journal, as log fields."""
    return {
        "adopted": len(adopted),
        "sessions": past.sessions,
        "tasks": len(past.tasks),
        "finished": len(past.finished),
        "reopened": len(reopened),
        "were_running": len(past.was_running),
    }
