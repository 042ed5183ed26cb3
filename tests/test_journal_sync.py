"""The journal's group commit when a run is stopped while a sync is on its way."""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from pathlib import Path

import pytest

from matensemble.events import RunFinished, TaskSubmitted
from matensemble.journal import JOURNAL_NAME, Journal, read_journal


async def test_a_close_while_a_sync_is_on_its_way_loses_nothing_and_leaves_no_error(
    tmp_path: Path,
) -> None:
    """A steering loop cancelled while it waits on ``sync`` and the run closing its journal
    at once: the shared sync, which goes on without its waiter, must not fail on the closed
    file (its error would be one that nobody retrieves), and every event is in the file."""
    for when in range(4):  # the close lands before the sync starts, and at later points
        run_dir = tmp_path / str(when)
        run_dir.mkdir()
        journal = Journal(run_dir)
        journal.on_event(TaskSubmitted(t=1.0, id="a", attempt=1, job_id="f1"))
        journal.flush()
        waiter = asyncio.ensure_future(journal.sync())
        await asyncio.sleep(0)  # the waiter starts the shared sync
        syncing = journal._syncing
        assert syncing is not None
        for _ in range(when):
            await asyncio.sleep(0)
        waiter.cancel()
        journal.on_event(RunFinished(t=2.0, counts={"succeeded": 1}))
        journal.close()
        await asyncio.gather(waiter, return_exceptions=True)
        await asyncio.wait({syncing}, timeout=30)  # shielded from the waiter: it goes on
        assert syncing.done() and syncing.exception() is None, when
        events = list(read_journal(run_dir / JOURNAL_NAME))
        assert [type(e) for e in events] == [TaskSubmitted, RunFinished], when
    assert_no_descriptor_left_on(tmp_path)


def assert_no_descriptor_left_on(tmp_path: Path) -> None:
    """Every journal descriptor is closed (the sync thread closes its own after its last sync,
    which may still be on its way when ``close`` returns)."""
    end = time.monotonic() + 30
    while True:
        fds = os.listdir("/proc/self/fd")
        open_here = [
            f for f in fds if os.path.realpath(f"/proc/self/fd/{f}").startswith(str(tmp_path))
        ]
        if not open_here or time.monotonic() > end:
            break
        time.sleep(0.01)
    assert not open_here


async def test_many_syncs_leave_one_descriptor_and_close_releases_it(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    for i in range(20):
        journal.on_event(TaskSubmitted(t=float(i), id=f"t{i}", attempt=1, job_id=str(i)))
        journal.flush()
        await journal.sync()
    assert journal.syncs == 20
    held = [
        f for f in os.listdir("/proc/self/fd")
        if os.path.realpath(f"/proc/self/fd/{f}") == str(tmp_path / JOURNAL_NAME)
    ]  # fmt: skip
    assert len(held) == 2  # the journal's own and the sync thread's
    journal.close()
    assert_no_descriptor_left_on(tmp_path)


async def test_cheap_syncs_are_made_in_the_loop_and_a_slow_one_sends_them_to_the_thread(
    tmp_path: Path,
) -> None:
    """On tmpfs an ``fdatasync`` costs less than a hand-off to the sync thread, so after the
    first (threaded) sync they run inline; a sync measured slow sends the next ones back to
    the thread, and every sync, wherever it ran, leaves the events on record."""
    shm = Path("/dev/shm")
    if not shm.is_dir():
        pytest.skip("no /dev/shm (tmpfs) here")
    with tempfile.TemporaryDirectory(dir=shm) as where:
        journal = Journal(Path(where))
        for i in range(50):
            journal.on_event(TaskSubmitted(t=float(i), id=f"t{i}", attempt=1, job_id=str(i)))
            journal.flush()
            await journal.sync()
        assert journal.syncs == 50
        assert journal.inline_syncs >= 40  # tmpfs syncs take microseconds
        threaded = journal.syncs - journal.inline_syncs
        journal._sync_seconds = 1.0  # as after a sync that took a second (a busy network FS)
        journal.on_event(RunFinished(t=99.0, counts={"succeeded": 50}))
        journal.flush()
        before = journal.inline_syncs
        await journal.sync()
        assert journal.inline_syncs == before  # this one went to the thread
        assert journal.syncs - journal.inline_syncs == threaded + 1
        journal.close()
        events = list(read_journal(Path(where) / JOURNAL_NAME))
        assert len(events) == 51 and isinstance(events[-1], RunFinished)


async def test_a_journal_is_unsynced_from_a_write_until_the_sync_that_covers_it(
    tmp_path: Path,
) -> None:
    """``unsynced`` says whether ``sync`` has work: the engine skips the call otherwise. A
    journal that does not sync (``durable=False``) never has any."""
    journal = Journal(tmp_path)
    assert journal.writes == 0 and not journal.unsynced()
    journal.on_event(TaskSubmitted(t=1.0, id="a", attempt=1, job_id="f1"))
    assert not journal.unsynced()  # buffered, not written yet
    journal.flush()
    assert journal.writes == 1 and journal.unsynced()
    await journal.sync()
    assert not journal.unsynced() and journal.syncs == 1
    journal.close()
    (tmp_path / "loose").mkdir()
    loose = Journal(tmp_path / "loose", durable=False)
    loose.on_event(TaskSubmitted(t=1.0, id="a", attempt=1, job_id="f1"))
    loose.flush()
    assert loose.writes == 1 and not loose.unsynced()
    loose.close()
