"""The append-only event journal: one JSON object per line, in the order events happened."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import IO

import msgspec

from matensemble.model import Event
from matensemble.observer import Observer

__all__ = ["Journal", "read_journal"]

JOURNAL_NAME = "journal.jsonl"


class Journal(Observer):
    """Writes every event to ``<run-dir>/journal.jsonl``.

    Lines are buffered and handed to the OS after each batch of events (``flush``), so a
    crash of the driver loses at most the events of the batch being processed.
    """

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / JOURNAL_NAME
        self._file: IO[bytes] | None = self.path.open("ab")
        self._encoder = msgspec.json.Encoder()
        self._buffer = bytearray()

    def on_event(self, event: Event) -> None:
        self._encoder.encode_into(event, self._buffer, -1)
        self._buffer += b"\n"

    def flush(self) -> None:
        if self._file is not None and self._buffer:
            self._file.write(self._buffer)
            self._file.flush()
            self._buffer.clear()

    def close(self) -> None:
        self.flush()
        if self._file is not None:
            self._file.close()
            self._file = None


def read_journal(path: Path) -> Iterator[Event]:
    """Decode a journal line by line; a torn last line (a crash mid-write) is skipped."""
    decoder = msgspec.json.Decoder(Event)
    with path.open("rb") as f:
        lines = f.readlines()
    for number, line in enumerate(lines, 1):
        try:
            yield decoder.decode(line)
        except msgspec.DecodeError:
            if number == len(lines) and not line.endswith(b"\n"):
                return
            raise
