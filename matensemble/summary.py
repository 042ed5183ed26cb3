"""What ``Ensemble.run()`` returns: counts, makespan, utilisation and every task's result."""

from __future__ import annotations

import msgspec

from matensemble.model import TaskResult, TaskState

__all__ = ["RunSummary"]


class RunSummary(msgspec.Struct, frozen=True, kw_only=True):
    """The outcome of a run.

    ``core_utilisation`` is busy core-seconds over (total cores x makespan); the same for GPUs.
    ``stopped`` says why a run was stopped before every task ended; ``resume`` continues it.
    """

    run_id: str
    run_dir: str
    backend: str
    counts: dict[str, int]
    makespan: float
    core_utilisation: float
    gpu_utilisation: float
    results: dict[str, TaskResult]
    stopped: str | None = None  # why the run was stopped before its end (signal, walltime)

    @property
    def ok(self) -> bool:
        """Did every task succeed?"""
        return all(r.state is TaskState.SUCCEEDED for r in self.results.values())

    @property
    def not_succeeded(self) -> list[TaskResult]:
        """Results of tasks that failed, timed out, were cancelled or skipped."""
        return [r for r in self.results.values() if r.state is not TaskState.SUCCEEDED]
