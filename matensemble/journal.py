"""The append-only event journal (``journal.jsonl``) and its replay for ``resume``.

One JSON object per line, in the order events happened. The engine appends the events of a
batch, then commits them (``write`` + ``fdatasync``) *before* it launches a task or tells the
user about a result, so whatever the user saw is on disk; syncs are shared by every batch
that arrives while one is running (group commit). A crash mid-write leaves at most a torn last
line, which replay skips and reports, and which is cut off before the journal is appended to.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO

import msgspec

from matensemble.errors import DiskFull, JournalError
from matensemble.events import (
    Event,
    RunStarted,
    TaskAdded,
    TaskFinished,
    TaskStarted,
    TaskSubmitted,
    TaskWithdrawn,
)
from matensemble.model import Placement, Task, TaskResult, TaskState
from matensemble.observer import Observer

__all__ = [
    "GATHER_BYTES",
    "INLINE_SYNC_BELOW",
    "JOURNAL_NAME",
    "JOURNAL_VERSION",
    "Journal",
    "Replay",
    "read_journal",
    "replay",
    "torn_last_line",
]

JOURNAL_NAME = "journal.jsonl"
JOURNAL_VERSION = 1
# A sync this quick blocks the event loop for less than a hand-off to a thread costs it.
INLINE_SYNC_BELOW = 50e-6
# What a gathering journal (a virtual clock's) holds before a write: a few hundred events.
GATHER_BYTES = 64 * 1024
# Outcomes a resume keeps. A skip is decided again: its prerequisite may be run again.
_STANDS = frozenset(
    {TaskState.SUCCEEDED, TaskState.FAILED, TaskState.TIMED_OUT, TaskState.CANCELLED}
)


class Journal(Observer):
    """Appends every event to ``<run-dir>/journal.jsonl``, with group commit.

    ``flush`` hands the buffered lines to the OS in one write: from then on they survive a
    crash of the driver. ``sync`` makes them durable against a crash of the node too: one
    ``fdatasync`` in a worker thread covers everything written before it started, and callers
    that arrive while a sync runs share the next one, so the number of syncs adapts to the
    disk's speed instead of the event rate.

    Where syncs are cheap (tmpfs, a local SSD's cache) a hand-off to the thread and back costs
    the driver more than the ``fdatasync`` itself, so ``sync`` times every sync, wherever it
    ran, and makes the next one in the event loop's own thread while their moving average
    stays under ``INLINE_SYNC_BELOW`` seconds; one slow sync sends them back to the thread.

    Args:
        durable: ``sync`` really syncs; without it ``sync`` returns at once.
        gather: ``flush`` writes only once ``GATHER_BYTES`` are buffered (``write_all`` and
            ``close`` write the rest): for a virtual clock, where nothing runs and a crash of
            the driver only means simulating the last few hundred tasks again, one ``write``
            per end is most of what a simulated task costs the journal. Not with ``durable``.
    """

    def __init__(self, run_dir: Path, *, durable: bool = True, gather: bool = False) -> None:
        if durable and gather:
            raise ValueError("a durable journal writes each batch before it syncs: no gather")
        self.path = run_dir / JOURNAL_NAME
        self.durable = durable
        self.gather = gather
        _cut_torn_tail(self.path)
        self._file: IO[bytes] | None = self.path.open("ab", buffering=0)
        self._size = os.fstat(self._file.fileno()).st_size  # ends on a whole line
        self._encoder = msgspec.json.Encoder()
        self._buffer = bytearray()
        self._written = 0  # flushes so far
        self._synced = 0  # flushes known to be on stable storage
        self._syncing: asyncio.Future[None] | None = None
        self._syncer: ThreadPoolExecutor | None = None  # one thread, made on the first sync
        self._sync_fd = -1  # the sync thread's own descriptor of the file (see _sync_once)
        # Moving average of the syncs' durations; the first sync goes to the thread.
        self._sync_seconds = INLINE_SYNC_BELOW
        self.syncs = 0
        self.inline_syncs = 0  # of those, made in the event loop's thread

    def on_event(self, event: Event) -> None:
        buffer = self._buffer
        end = len(buffer)
        try:
            self._encoder.encode_into(event, buffer, -1)
        except BaseException:
            del buffer[end:]  # an event that cannot be encoded leaves no half line behind
            raise
        buffer += b"\n"

    def flush(self) -> None:
        """Hand the buffered events to the OS in one write (gathering: once there are
        ``GATHER_BYTES`` of them).

        Raises ``DiskFull`` when the device or quota is full: what was written of this batch
        is cut off again, so the journal ends on its last whole event, and nothing more is
        written to it (the run stops; a resume continues from there).
        """
        if self.gather and len(self._buffer) < GATHER_BYTES:
            return
        self.write_all()

    def write_all(self) -> None:
        """Hand every buffered event to the OS now, gathering or not (see ``flush``)."""
        if self._file is None or not self._buffer:
            self._buffer.clear()
            return
        fd = self._file.fileno()
        try:
            written = os.write(fd, self._buffer)  # all of it, but for a signal or a full disk
            if written < len(self._buffer):
                with memoryview(self._buffer) as data:
                    while written < len(data):
                        written += os.write(fd, data[written:])
        except OSError as exc:
            os.ftruncate(fd, self._size)  # frees space, so it works on a full device too
            self._file.close()
            self._file = None
            self._buffer.clear()
            if DiskFull.is_full(exc):
                raise DiskFull(self.path, exc) from exc
            raise
        self._size += len(self._buffer)
        self._buffer.clear()
        self._written += 1

    @property
    def writes(self) -> int:
        """How many writes handed events to the OS so far (one per batch, not per event)."""
        return self._written

    def unsynced(self) -> bool:
        """Whether ``sync`` has anything to do (a durable journal wrote since its last sync)."""
        return self.durable and self._synced < self._written and self._file is not None

    def sync_waits(self) -> bool:
        """Whether ``sync`` would now wait for a thread (else it returns without suspending)."""
        return self.durable and (
            self._syncing is not None or self._sync_seconds >= INLINE_SYNC_BELOW
        )

    async def sync(self) -> None:
        """Return once everything flushed so far is on stable storage."""
        target = self._written
        while self.durable and self._synced < target and self._file is not None:
            if self._syncing is None and self._sync_seconds < INLINE_SYNC_BELOW:
                self._sync_inline()
                continue
            if self._syncing is None:
                self._syncing = asyncio.ensure_future(self._sync_once())
            await asyncio.shield(self._syncing)

    async def _sync_once(self) -> None:
        if self._file is None:  # closed before this sync started: close() synced
            self._syncing = None
            return
        upto = self._written
        # The thread syncs its own descriptor, made once: a close() while a sync runs (a run
        # stopped mid-sync) cannot pull the file from under it; close() syncs what is left
        # itself and leaves this descriptor for the thread to close after its last sync.
        # (Its own thread, not anyio's pool: a third of the cost per sync on a busy machine.)
        if self._syncer is None:
            self._syncer = ThreadPoolExecutor(1, thread_name_prefix="journal-sync")
            self._sync_fd = os.dup(self._file.fileno())
        try:
            seconds = await asyncio.get_running_loop().run_in_executor(
                self._syncer, _timed_sync, self._sync_fd
            )
        except OSError as exc:  # network file systems may report a full quota only here
            self._raise_if_full(exc)
            raise
        finally:
            self._syncing = None
        self._synced = max(self._synced, upto)
        self._count_sync(seconds)

    def _sync_inline(self) -> None:
        assert self._file is not None
        upto = self._written
        try:
            seconds = _timed_sync(self._file.fileno())
        except OSError as exc:
            self._raise_if_full(exc)
            raise
        self._synced = max(self._synced, upto)
        self._count_sync(seconds)
        self.inline_syncs += 1

    def _raise_if_full(self, exc: OSError) -> None:
        if DiskFull.is_full(exc):
            raise DiskFull(self.path, exc) from exc

    def _count_sync(self, seconds: float) -> None:
        self._sync_seconds += (seconds - self._sync_seconds) / 4
        self.syncs += 1

    def close(self) -> None:
        self.write_all()
        if self._file is not None:
            if self.durable and self._synced < self._written:
                os.fdatasync(self._file.fileno())
            self._file.close()
            self._file = None
        if self._syncer is not None:
            # Queued behind a sync on its way, in the same one thread: never closed under it.
            self._syncer.submit(os.close, self._sync_fd)
            self._syncer.shutdown(wait=False)
            self._syncer = None


def _timed_sync(fd: int) -> float:
    """``fdatasync(fd)``; how long it took, in seconds."""
    start = time.perf_counter()
    os.fdatasync(fd)
    return time.perf_counter() - start


def _cut_torn_tail(path: Path) -> None:
    """Drop a torn last line (a crash mid-write) so that new lines start on a line of their own."""
    if not path.exists():
        return
    with path.open("rb+") as f:
        data = f.read()
        if data and not data.endswith(b"\n"):
            f.truncate(data.rfind(b"\n") + 1)


def read_journal(path: Path) -> Iterator[Event]:
    """Decode a journal line by line; a torn last line (a crash mid-write) is skipped.

    Raises:
        JournalError: a line other than the last is not a valid event (the file is corrupt).
    """
    decoder = msgspec.json.Decoder(Event)
    with path.open("rb") as f:
        lines = f.readlines()
    for number, line in enumerate(lines, 1):
        try:
            yield decoder.decode(line)
        except msgspec.DecodeError as exc:
            if number == len(lines) and not line.endswith(b"\n"):
                return
            raise JournalError(f"{path}:{number}: not a journal event ({exc})") from None


class Replay(msgspec.Struct, kw_only=True):
    """What a journal says about a run, as ``resume`` needs it.

    ``finished`` holds the tasks whose outcome stands (succeeded, failed or timed out after
    their retries, or cancelled by the user); every other task is open again, including those
    that were running, were cancelled because the run was stopped, or were skipped (the skip
    is decided again from the prerequisites' outcomes). ``attempts`` and
    ``failures`` count per task across every session of the run. ``simulated`` names the
    finished tasks whose standing result was recorded by a simulated session (a virtual clock):
    a resume on a real backend runs them (see ``resume.real_results_only``).
    """

    run_id: str
    tasks: dict[str, Task]
    finished: dict[str, TaskResult]
    attempts: dict[str, int]
    failures: dict[str, int]
    was_running: list[str]
    placements: dict[str, Placement] = {}  # of each task's last attempt
    job_ids: dict[str, str] = {}  # the backend's id for each task's last attempt, if known
    torn_line: int | None = None
    sessions: int = 0
    backends: list[str] = []  # the backend kind of each session, in order
    simulated: frozenset[str] = frozenset()  # finished tasks whose result is a simulation's


def replay(run_dir: Path) -> Replay:
    """Read ``<run-dir>/journal.jsonl`` into a ``Replay``.

    Raises:
        JournalError: no journal, an unknown version, or a corrupt line (naming file and line).
    """
    path = run_dir / JOURNAL_NAME
    if not path.is_file():
        raise JournalError(f"{run_dir}: no {JOURNAL_NAME} here; is this a run directory?")
    torn = torn_last_line(path)
    run_id: str | None = None
    sessions = 0
    backends: list[str] = []
    simulating = False
    simulated: set[str] = set()
    tasks: dict[str, Task] = {}
    finished: dict[str, TaskResult] = {}
    attempts: dict[str, int] = {}
    failures: dict[str, int] = {}
    running: dict[str, None] = {}
    placements: dict[str, Placement] = {}
    job_ids: dict[str, str] = {}
    for event in read_journal(path):
        if isinstance(event, TaskAdded):
            tasks[event.task.id] = event.task
        elif isinstance(event, TaskStarted):
            attempts[event.id] = max(attempts.get(event.id, 0), event.attempt)
            running[event.id] = None
            placements[event.id] = event.placement
            job_ids.pop(event.id, None)
        elif isinstance(event, TaskSubmitted):
            if event.attempt == attempts.get(event.id):
                job_ids[event.id] = event.job_id
        elif isinstance(event, TaskWithdrawn):
            if event.attempt == attempts.get(event.id):  # it holds nothing: ready again
                attempts[event.id] = event.attempt - 1
                running.pop(event.id, None)
                job_ids.pop(event.id, None)
        elif isinstance(event, TaskFinished):
            result = event.result
            running.pop(result.id, None)
            if result.state in (TaskState.FAILED, TaskState.TIMED_OUT):
                failures[result.id] = failures.get(result.id, 0) + 1
            if event.retry_in is None and not event.interrupted and result.state in _STANDS:
                finished[result.id] = result
                if simulating:
                    simulated.add(result.id)
                else:
                    simulated.discard(result.id)
            else:
                finished.pop(result.id, None)
                simulated.discard(result.id)
        elif isinstance(event, RunStarted):
            if event.version != JOURNAL_VERSION:
                raise JournalError(
                    f"{path}: journal version {event.version}, but this MatEnsemble reads "
                    f"version {JOURNAL_VERSION}"
                )
            if run_id is not None and event.run_id != run_id:
                raise JournalError(
                    f"{path}: mixes runs {run_id!r} and {event.run_id!r}; a run directory "
                    "holds one run"
                )
            run_id = event.run_id
            sessions += 1
            backends.append(event.backend)
            simulating = event.simulated or event.backend == "simulated"
    if run_id is None:
        raise JournalError(f"{path}: no run_started event; this is not a MatEnsemble journal")
    unknown = [task_id for task_id in (*finished, *attempts) if task_id not in tasks]
    if unknown:
        raise JournalError(f"{path}: events for task {unknown[0]!r}, which was never added")
    return Replay(
        run_id=run_id,
        tasks=tasks,
        finished=finished,
        attempts=attempts,
        failures=failures,
        was_running=list(running),
        placements=placements,
        job_ids=job_ids,
        torn_line=torn,
        sessions=sessions,
        backends=backends,
        simulated=frozenset(simulated),
    )


def torn_last_line(path: Path) -> int | None:
    """The number of the last line if a crash cut it short (no newline at the end)."""
    with path.open("rb") as f:
        data = f.read()
    if not data or data.endswith(b"\n"):
        return None
    return data.count(b"\n") + 1
