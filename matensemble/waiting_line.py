"""The queued tasks a dispatch pass looked at and left waiting, in order, as runs of one shape.

A pass of the dispatcher puts back, in the order it read them, the tasks it could not start; the
next pass reads them again, merged with the ready heap. On a full machine most of them are of a
shape that cannot fit (under FIFO on Frontier: some fifty whole-node tasks behind a blocked
one), and once a pass has found that shape full it puts the rest of them back unread. Kept as
runs of one ``Resources`` shape, such a stretch is put back with one slice, whatever its length,
instead of one task at a time.

The entries are heap entries ``(key..., seq, record)`` in increasing order; nothing here looks
inside them except to compare them.
"""

from __future__ import annotations

import bisect
from typing import Any

from matensemble.model import Resources

__all__ = ["WaitingLine"]

Entry = tuple[Any, ...]


class WaitingLine:
    """Entries in order, and the runs of one shape they form.

    Run ``k`` holds ``entries[ends[k - 1]:ends[k]]`` (from 0 for the first), all of shape
    ``shapes[k]``.

    A line built ``borrowing`` another (the next pass's line, borrowing the last one's) holds
    the other's first entries without copying them, as long as what is put in it is exactly
    the other's entries from the start, in order: on a full machine a pass mostly puts back
    the same blocked tasks it read (some fifty whole-node tasks under FIFO on Frontier), and
    then the line it leaves is the one it read (``settled``), not a copy of it per pass.
    """

    __slots__ = ("_borrowed", "_source", "ends", "entries", "shapes")

    def __init__(self, borrowing: WaitingLine | None = None) -> None:
        self.entries: list[Entry] = []
        self.ends: list[int] = []
        self.shapes: list[Resources] = []
        self._source = borrowing  # the line whose first ``_borrowed`` entries are ours
        self._borrowed = 0

    def __len__(self) -> int:
        return len(self.entries) + self._borrowed

    def add(self, entry: Entry, shape: Resources) -> None:
        """Put ``entry`` (of ``shape``) at the end."""
        source = self._source
        if source is not None:
            n = self._borrowed
            if n < len(source.entries) and source.entries[n] is entry:
                self._borrowed = n + 1
                return
            self._copy_borrowed()
        self.entries.append(entry)
        shapes = self.shapes
        if shapes and (shapes[-1] is shape or shapes[-1] == shape):
            self.ends[-1] += 1
        else:
            shapes.append(shape)
            self.ends.append(len(self.entries))

    def add_from(self, other: WaitingLine, start: int, stop: int) -> None:
        """Put ``other.entries[start:stop]`` at the end, with their shapes (one slice per run)."""
        if start >= stop:
            return
        if self._source is not None:
            if other is self._source and start == self._borrowed:
                self._borrowed = stop
                return
            self._copy_borrowed()
        k = bisect.bisect_right(other.ends, start)  # the run that holds ``start``
        while start < stop:
            end = min(other.ends[k], stop)
            shape = other.shapes[k]
            self.entries.extend(other.entries[start:end])
            shapes = self.shapes
            if shapes and (shapes[-1] is shape or shapes[-1] == shape):
                self.ends[-1] = len(self.entries)
            else:
                shapes.append(shape)
                self.ends.append(len(self.entries))
            start = end
            k += 1

    def settled(self) -> WaitingLine:
        """This line as one that borrows nothing: the line it borrows from, when it holds all
        of that one's entries and nothing else; else a copy of what it borrowed, and the rest."""
        source = self._source
        if source is not None:
            if self._borrowed == len(source.entries):
                return source
            self._copy_borrowed()
        return self

    def _copy_borrowed(self) -> None:
        source, n = self._source, self._borrowed
        assert source is not None
        assert not self.entries
        self._source, self._borrowed = None, 0
        self.add_from(source, 0, n)
