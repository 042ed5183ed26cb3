"""What ``Ensemble.run()`` returns: counts, makespan, utilisation and every task's result."""

from __future__ import annotations

import msgspec

from matensemble.errors import MatEnsembleError
from matensemble.model import TaskResult, TaskState
from matensemble.wording import counted

__all__ = ["RunFailed", "RunSummary"]


class RunFailed(MatEnsembleError):
    """Raised by ``run(check=True)`` and ``RunSummary.check()``: not every task succeeded.

    The message names the tasks that did not succeed (and why), where their outputs are, and,
    for a run that was stopped, how to continue it. ``summary`` holds every result.
    """

    def __init__(self, message: str, summary: RunSummary) -> None:
        super().__init__(message)
        self.summary = summary


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

    def check(self) -> RunSummary:
        """Return this summary if every task succeeded; else raise ``RunFailed`` saying which
        tasks did not, why, and where to look (``await ens.run(check=True)`` does this)."""
        bad = self.not_succeeded
        if not bad and self.stopped is None:
            return self
        shown = "; ".join(f"{r.id} ({r.state.value}: {r.reason})" for r in bad[:5])
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        message = (
            f"run {self.run_id}: {counted(len(bad), 'task')} of {len(self.results)} did not "
            f"succeed: {shown}{more}; outputs in {self.run_dir}/tasks/<task-id>/"
        )
        if self.stopped is not None:
            message += f"; {self.stopped}, continue with: matensemble resume {self.run_dir}"
        raise RunFailed(message, self)

    @property
    def not_succeeded(self) -> list[TaskResult]:
        """Results of tasks that failed, timed out, were cancelled or skipped."""
        return [r for r in self.results.values() if r.state is not TaskState.SUCCEEDED]
