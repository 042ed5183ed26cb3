"""What a run keeps per task is out of the garbage collector's way: a million tasks' records,
and the queue and heap entries that hold them, are never walked by its full collections."""

from __future__ import annotations

import gc
from pathlib import Path

from matensemble import Ensemble, Resources, SimulatedBackend, Task, TaskResult
from matensemble.record import Record
from matensemble.strategies import FIFO, CompletionPolicy
from matensemble.strategies.control import EnsembleControl


def _tracked_holding_a_record() -> list[object]:
    """Objects the collector tracks that are records, or tuples and lists that hold one."""
    found: list[object] = []
    for obj in gc.get_objects():  # only what the collector tracks
        holds = type(obj) is tuple and obj and isinstance(obj[-1], Record)
        if holds or isinstance(obj, Record):
            found.append(obj)
    return found


async def test_records_and_the_heap_entries_that_hold_them_are_not_tracked_by_the_collector(
    tmp_path: Path,
) -> None:
    seen: list[int] = []

    class LookMidRun(CompletionPolicy):
        def on_result(self, result: TaskResult, ensemble: EnsembleControl) -> None:
            if len(seen) == 0 and result.id == "t20":
                # A collection untracks a tuple whose items are all untracked; a tuple that
                # holds such a tuple may need the next one (they are looked at in one sweep).
                gc.collect()
                gc.collect()
                seen.append(len(_tracked_holding_a_record()))

    tasks = [
        Task(
            id=f"t{i}",
            command=["sim"],
            estimate=float(10 + i % 7),
            resources=Resources(ranks=1 + i % 3, gpus_per_rank=i % 2),
            tags={"sim_duration": str(10 + i % 5)},
        )
        for i in range(200)
    ]
    backend = SimulatedBackend(nodes=3, cores_per_node=8, gpus_per_node=2)
    summary = await Ensemble(
        tasks,
        backend=backend,
        strategy=FIFO(backfill=True),
        completion=LookMidRun(),
        run_dir=tmp_path / "run",
    ).run()
    assert summary.counts["succeeded"] == 200
    # Mid-run: tasks queued, running (heaps of expected ends, when nodes empty) and ended.
    assert seen == [0]
