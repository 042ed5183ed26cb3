"""What a resume claims for the launches a crashed driver left queued ahead.

Under Flux a booked task moves in on whichever ids of its node are free (Flux picks the cores
itself), while its journaled placement stays the one it was booked on: after a few moves a
node's journal can name the same core for a running task, a moved-in one and a booked one.
The resume must still take all three over (a job it does not adopt is cancelled and its task
run again, and by then it may have started). The real broker side is in test_flux_crashes.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import msgspec
import structlog

from matensemble.backends.base import Backend, Launch, LaunchKey
from matensemble.events import RunStarted, TaskAdded, TaskStarted, TaskSubmitted, TaskWithdrawn
from matensemble.journal import JOURNAL_NAME, Replay, replay
from matensemble.model import Slot, Task
from matensemble.resources import NodeSpec, ResourcePool
from matensemble.resume import adopt_left_running


class Adopting:
    """Stands in for a backend that takes over every job it is offered."""

    def __init__(self, same_ids: bool) -> None:
        self.queue_ahead_same_ids = same_ids

    async def adopt(self, launches: Sequence[tuple[Launch, str]]) -> set[LaunchKey]:
        return {launch.key for launch, _ in launches}


def crashed_with_core_1_named_three_times() -> Replay:
    """Node n1, 2 cores: ``a`` runs on core 1; ``b`` was booked on core 1 and moved in on
    core 0 when a task there ended; ``c`` was booked on core 1 after it; ``d`` on core 0."""
    journaled = {"a": 1, "b": 1, "c": 1, "d": 0}
    return Replay(
        run_id="r",
        tasks={t: Task(id=t, command=("true",)) for t in journaled},
        finished={},
        attempts=dict.fromkeys(journaled, 1),
        failures={},
        was_running=list(journaled),
        placements={t: (Slot("n1", (core,)),) for t, core in journaled.items()},
        job_ids={t: str(100 + i) for i, t in enumerate(journaled)},
    )


async def adopt(
    same_ids: bool, tmp_path: Path
) -> tuple[dict[str, Any], ResourcePool, ResourcePool]:
    nodes = [NodeSpec("n1", (0, 1))]
    pool, ahead = ResourcePool(nodes), ResourcePool(nodes)
    backend = Adopting(same_ids)
    adopted = await adopt_left_running(
        crashed_with_core_1_named_three_times(),
        pool,
        cast(Backend, backend),
        tmp_path / "tasks",
        "r",
        structlog.get_logger(),
        ahead,
    )
    return adopted, pool, ahead


async def test_a_backend_that_picks_its_own_ids_gets_every_launch_adopted(tmp_path: Path) -> None:
    adopted, pool, ahead = await adopt(False, tmp_path)
    assert sorted(adopted) == ["a", "b", "c", "d"]
    assert pool.free_cores == 0 and ahead.free_cores == 0  # two running, two booked
    cores = sorted((in_ahead, placement[0].cores) for placement, in_ahead in adopted.values())
    assert cores == [(False, (0,)), (False, (1,)), (True, (0,)), (True, (1,))]


async def test_a_backend_that_pins_the_ids_adopts_only_what_fits_them(tmp_path: Path) -> None:
    adopted, pool, ahead = await adopt(True, tmp_path)
    assert sorted(adopted) == ["a", "b", "d"]  # c is run again (the local backend adopts none)
    assert pool.free_cores == 0 and ahead.free_cores == 1


def test_a_launch_taken_back_holds_nothing_on_resume_and_keeps_its_attempt(tmp_path: Path) -> None:
    """``a`` was booked on core 1, taken back, and ``b`` booked there instead; the driver
    died before ``a`` started again. The resume must not count ``a`` as running there."""
    on_core_1 = (Slot("n1", (1,)),)
    events = [
        RunStarted(1.0, "r", "flux", cores=2, gpus=0, nodes=1),
        *(TaskAdded(1.0, Task(id=t, command=("true",))) for t in ("a", "b")),
        TaskStarted(2.0, "a", 1, on_core_1),
        TaskSubmitted(2.0, "a", 1, "101"),
        TaskWithdrawn(3.0, "a", 1),
        TaskStarted(3.0, "b", 1, on_core_1),
        TaskSubmitted(3.0, "b", 1, "102"),
    ]
    (tmp_path / JOURNAL_NAME).write_bytes(b"".join(msgspec.json.encode(e) + b"\n" for e in events))
    past = replay(tmp_path)
    assert past.was_running == ["b"]
    assert past.job_ids == {"b": "102"}
    assert past.attempts == {"a": 0, "b": 1}  # a's next start is attempt 1 again, as live
