"""A run as its journal tells it: sessions, task attempts with their slots, state changes.

Read with the journal's own reader (``matensemble.journal.read_journal``), so a torn last line
(a run still writing, or a crash mid-write) is skipped the same way ``resume`` skips it. Works
on any journal: a finished run, a run still going, a run whose driver crashed, a resumed run.
Times are seconds since the run's first start; a later session whose clock reads earlier than
the journal's last event (a virtual clock restarted by ``resume``) is shifted to follow it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from matensemble.errors import JournalError
from matensemble.events import RunFinished, RunStarted, TaskAdded, TaskFinished, TaskStarted
from matensemble.journal import JOURNAL_NAME, read_journal, torn_last_line
from matensemble.model import Placement, TaskState

__all__ = ["OUTCOMES", "Attempt", "Failure", "RunRecord", "Session", "read_run"]

# How an attempt ended, in the order the report's legends list them. ``interrupted``: cancelled
# because the run was stopped (resume runs it again); ``unfinished``: no end in the journal (it
# is still running, or the driver died while it ran).
OUTCOMES = (
    "succeeded",
    "failed",
    "timed_out",
    "cancelled",
    "interrupted",
    "unfinished",
)
WAITING = "waiting"  # added (or to be retried, or interrupted), not running and not final


class Attempt(NamedTuple):
    """One launch of a task: when, where, and how it ended."""

    task: str
    attempt: int
    start: float
    end: float
    outcome: str
    placement: Placement
    returncode: int | None = None
    signal: int | None = None
    reason: str | None = None

    @property
    def cores(self) -> int:
        return sum(len(slot.cores) for slot in self.placement)

    @property
    def gpus(self) -> int:
        return sum(len(slot.gpus) for slot in self.placement)


class Failure(NamedTuple):
    """An attempt or task that did not succeed, with the reason the engine recorded."""

    t: float
    task: str
    attempt: int
    state: str
    returncode: int | None
    signal: int | None
    reason: str | None
    then: str  # what happened next: "retried", "resumed later" or "final"


@dataclass(frozen=True)
class Session:
    """One ``run`` or ``resume`` of the run: its machine and how it ended (None: no end seen)."""

    start: float
    end: float
    backend: str
    cores: int
    gpus: int
    nodes: int
    ended: str | None


@dataclass
class RunRecord:
    """Everything the report draws, from one pass over the journal."""

    run_id: str
    journal: Path
    sessions: list[Session]
    attempts: list[Attempt]
    failures: list[Failure]
    # (time, task id, state): every change of a task's state; states are WAITING, "running"
    # and the terminal states.
    transitions: list[tuple[float, str, str]]
    end: float
    torn_line: int | None = None
    tasks: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        """Did the last session end with a ``run_finished`` event?"""
        return bool(self.sessions) and self.sessions[-1].ended is not None


def read_run(run_dir: Path | str) -> RunRecord:
    """Read ``<run_dir>/journal.jsonl`` into a ``RunRecord``.

    Raises:
        JournalError: no journal, no ``run_started`` event, or a corrupt line (file and line).
    """
    run_dir = Path(run_dir)
    path = run_dir / JOURNAL_NAME
    if not path.is_file():
        raise JournalError(f"{run_dir}: no {JOURNAL_NAME} here; is this a run directory?")
    reader = _Reader(path)
    for event in read_journal(path):
        reader.feed(event)
    return reader.record()


class _Reader:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.run_id: str | None = None
        self.t0 = 0.0
        self.shift = 0.0
        self.last = 0.0  # the latest event time seen, relative to t0
        self.sessions: list[Session] = []
        self.session_start: RunStarted | None = None
        self.session_t = 0.0
        # task -> start, attempt, slots, and the index of its "running" transition
        self.open: dict[str, tuple[float, int, Placement, int]] = {}
        self.attempts: list[Attempt] = []
        self.failures: list[Failure] = []
        self.transitions: list[tuple[float, str, str]] = []
        self.tasks: set[str] = set()

    def time(self, t: float) -> float:
        rel = t - self.t0 + self.shift
        self.last = max(self.last, rel)
        return rel

    def feed(self, event: object) -> None:
        if isinstance(event, TaskStarted):
            t = self.time(event.t)
            again = self.open.get(event.id)
            if again is not None and again[1] == event.attempt:
                index = again[3]  # launched again, elsewhere: it was taken back before it ran
                self.transitions[index] = (t, event.id, "running")
            else:
                index = len(self.transitions)
                self.transitions.append((t, event.id, "running"))
            self.open[event.id] = (t, event.attempt, event.placement, index)
        elif isinstance(event, TaskFinished):
            self.finish(event)
        elif isinstance(event, TaskAdded):
            t = self.time(event.t)
            self.tasks.add(event.task.id)
            self.transitions.append((t, event.task.id, WAITING))
        elif isinstance(event, RunStarted):
            self.start_session(event)
        elif isinstance(event, RunFinished):
            self.time(event.t)
            self.close_session(event.reason)

    def finish(self, event: TaskFinished) -> None:
        t = self.time(event.t)
        result = event.result
        state = result.state
        started = self.open.pop(result.id, None)
        final = event.retry_in is None and not event.interrupted
        end = t
        if started is not None:
            start, attempt, placement, index = started
            # Where the backend knows when the attempt really ran, that is when it held its
            # cores: a launch queued ahead of its slot starts later than it was launched, and
            # a process ends before the engine records it.
            began = start if result.start_time is None else self._at(result.start_time)
            if start < began <= t:
                start = began
                self.transitions[index] = (start, result.id, "running")
            ended = t if result.end_time is None else self._at(result.end_time)
            if start <= ended < t:
                end = ended
            outcome = "interrupted" if event.interrupted else state.value
            self.attempts.append(
                Attempt(
                    result.id,
                    attempt,
                    start,
                    max(end, start),
                    outcome,
                    placement,
                    result.returncode,
                    result.signal,
                    result.reason,
                )
            )
        if state is not TaskState.SUCCEEDED:
            then = "retried" if event.retry_in is not None else "final"
            if event.interrupted:
                then = "resumed later"
            self.failures.append(
                Failure(
                    t,
                    result.id,
                    started[1] if started else result.attempts,
                    "interrupted" if event.interrupted else state.value,
                    result.returncode,
                    result.signal,
                    result.reason,
                    then,
                )
            )
        self.transitions.append((end, result.id, state.value if final else WAITING))

    def _at(self, when: float) -> float:
        """A time the backend gave (seconds since the epoch) on the report's axis."""
        return when - self.t0 + self.shift

    def start_session(self, event: RunStarted) -> None:
        if self.run_id is None:
            self.run_id, self.t0 = event.run_id, event.t
        elif event.run_id != self.run_id:
            raise JournalError(
                f"{self.path}: mixes runs {self.run_id!r} and {event.run_id!r}; a run directory "
                "holds one run"
            )
        if self.session_start is not None:
            self.close_session(None)
        if event.t - self.t0 + self.shift < self.last:  # a clock that restarted (virtual)
            self.shift = self.last - (event.t - self.t0)
        self.session_start = event
        self.session_t = self.time(event.t)

    def close_session(self, ended: str | None, *, driver_gone: bool = True) -> None:
        """End the current session. Attempts still open have no end in the journal: the
        driver died with them (``driver_gone``: they wait for a resume), or it still runs."""
        start = self.session_start
        if start is None:
            return
        for task, (t, attempt, placement, _) in self.open.items():
            self.attempts.append(
                Attempt(
                    task, attempt, t, self.last, "unfinished", placement, reason="no end recorded"
                )
            )
            if ended is None and driver_gone:
                self.transitions.append((self.last, task, WAITING))
        self.open.clear()
        self.sessions.append(
            Session(
                self.session_t,
                self.last,
                start.backend,
                start.cores,
                start.gpus,
                start.nodes,
                ended,
            )
        )
        self.session_start = None

    def record(self) -> RunRecord:
        if self.run_id is None:
            raise JournalError(
                f"{self.path}: no run_started event; this is not a MatEnsemble journal"
            )
        notes = []
        if self.session_start is not None:
            notes.append(
                "the journal ends without run_finished: the run is still going, or its driver "
                "stopped without finishing (a crash); unfinished attempts are drawn up to the "
                "last event"
            )
            self.close_session(None, driver_gone=False)  # its tasks may still be running
        torn = torn_last_line(self.path)
        if torn is not None:
            notes.append(f"line {torn} of the journal is torn (being written, or a crash): skipped")
        self.attempts.sort(key=lambda a: (a.start, a.task))
        self.transitions.sort(key=lambda x: x[0])
        return RunRecord(
            run_id=self.run_id,
            journal=self.path,
            sessions=self.sessions,
            attempts=self.attempts,
            failures=self.failures,
            transitions=self.transitions,
            end=self.last,
            torn_line=torn,
            tasks=len(self.tasks),
            notes=notes,
        )
