"""The journal's group commit when a run is stopped while a sync is on its way."""

from __future__ import annotations

import asyncio
from pathlib import Path

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
