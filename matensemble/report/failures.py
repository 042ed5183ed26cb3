"""The table of attempts that did not succeed, with their reasons, as the report shows it."""

from __future__ import annotations

from dataclasses import dataclass

from matensemble.report.record import Failure, RunRecord

__all__ = ["FailureRow", "failure_rows"]

COLUMNS = ("time (s)", "task", "attempt", "state", "exit", "reason", "then")


@dataclass(frozen=True)
class FailureRow:
    time: str
    task: str
    attempt: str
    state: str
    exit: str
    reason: str
    then: str

    def cells(self) -> tuple[str, ...]:
        return (self.time, self.task, self.attempt, self.state, self.exit, self.reason, self.then)


def failure_rows(record: RunRecord, *, limit: int) -> tuple[list[FailureRow], int]:
    """The first ``limit`` failures in time order, and how many more there are."""
    shown = sorted(record.failures, key=lambda f: f.t)[:limit]
    return [_row(f) for f in shown], max(0, len(record.failures) - limit)


def _row(f: Failure) -> FailureRow:
    if f.signal is not None:
        exit_text = f"signal {f.signal}"
    elif f.returncode is not None:
        exit_text = str(f.returncode)
    else:
        exit_text = ""
    return FailureRow(
        f"{f.t:.3f}", f.task, str(f.attempt), f.state, exit_text, f.reason or "", f.then
    )
