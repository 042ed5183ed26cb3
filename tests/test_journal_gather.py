"""A gathering journal (a virtual clock's): fewer writes, every event still on record."""

from __future__ import annotations

from pathlib import Path

import pytest

from matensemble.events import TaskSubmitted
from matensemble.journal import GATHER_BYTES, JOURNAL_NAME, Journal, read_journal


def event(i: int) -> TaskSubmitted:
    return TaskSubmitted(t=float(i), id=f"t{i}", attempt=1, job_id=f"job-{i}")


def test_a_gathering_journal_writes_once_it_holds_enough_and_on_write_all_and_close(
    tmp_path: Path,
) -> None:
    journal = Journal(tmp_path, durable=False, gather=True)
    path = tmp_path / JOURNAL_NAME
    journal.on_event(event(0))
    journal.flush()
    assert path.read_bytes() == b""  # gathered, not written yet
    journal.write_all()
    assert [e.id for e in read_journal(path)] == ["t0"]  # type: ignore[attr-defined]
    i = 1
    while path.stat().st_size < GATHER_BYTES:
        journal.on_event(event(i))
        journal.flush()
        i += 1
    assert len(list(read_journal(path))) == i  # every event so far, in whole lines
    journal.on_event(event(i))
    journal.flush()
    journal.close()
    assert [e.id for e in read_journal(path)] == [f"t{k}" for k in range(i + 1)]  # type: ignore[attr-defined]


def test_a_durable_journal_cannot_gather(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="durable"):
        Journal(tmp_path, durable=True, gather=True)
