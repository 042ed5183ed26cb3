"""The waiting line keeps its entries in order and knows the shape of the run around each one,
whatever mix of single entries and slices of another line built it."""

from __future__ import annotations

import bisect

from hypothesis import given
from hypothesis import strategies as st

from matensemble.model import Resources
from matensemble.waiting_line import WaitingLine

SHAPES = [Resources(), Resources(ranks=8), Resources(gpus_per_rank=1), Resources(ranks=8)]


def _line(shapes: list[int]) -> tuple[WaitingLine, list[tuple[tuple[int, str], Resources]]]:
    line = WaitingLine()
    plain = []
    for n, k in enumerate(shapes):
        entry = (n, f"t{n}")
        line.add(entry, SHAPES[k])
        plain.append((entry, SHAPES[k]))
    return line, plain


def _agrees(line: WaitingLine, plain: list[tuple[tuple[int, str], Resources]]) -> None:
    assert line.entries == [entry for entry, _ in plain]
    assert len(line) == len(plain)
    for at, (_, shape) in enumerate(plain):
        k = bisect.bisect_right(line.ends, at)  # the run that holds ``at``
        run_shape, end = line.shapes[k], line.ends[k]
        assert run_shape == shape
        # The run ends where the shape first changes after ``at``: no sooner, no later.
        assert all(s == shape for _, s in plain[at:end])
        assert end == len(plain) or plain[end][1] != shape
    assert len(line.shapes) == len(line.ends)
    for k in range(1, len(line.shapes)):
        assert line.shapes[k] != line.shapes[k - 1]  # neighbouring runs differ


@given(
    first=st.lists(st.integers(0, 3), max_size=40),
    second=st.lists(st.integers(0, 3), max_size=40),
    cuts=st.lists(st.integers(0, 40), min_size=4, max_size=4),
)
def test_entries_added_one_by_one_and_by_slices_keep_their_order_and_runs(
    first: list[int], second: list[int], cuts: list[int]
) -> None:
    line, plain = _line(first)
    _agrees(line, plain)
    other, other_plain = _line(second)
    a, b = sorted(min(c, len(second)) for c in cuts[:2])
    line.add_from(other, a, b)
    plain += other_plain[a:b]
    _agrees(line, plain)
    c, d = sorted(min(x, len(second)) for x in cuts[2:])
    line.add_from(other, c, d)
    plain += other_plain[c:d]
    _agrees(line, plain)


@given(
    source_shapes=st.lists(st.integers(0, 3), max_size=30),
    steps=st.lists(
        st.tuples(st.sampled_from(["read", "skip", "slice", "other"]), st.integers(0, 3)),
        max_size=40,
    ),
)
def test_a_borrowing_line_holds_what_was_put_in_it_and_is_the_other_when_that_is_all(
    source_shapes: list[int], steps: list[tuple[str, int]]
) -> None:
    """A dispatch pass reads the front in order and puts back some of what it read (one by
    one or by slices), skips others (started), and adds entries from elsewhere: the line it
    builds borrowing the front must be exactly what a plain line would be."""
    source, source_plain = _line(source_shapes)
    line = WaitingLine(borrowing=source)
    plain: list[tuple[tuple[int, str], Resources]] = []
    at = 0
    extra = 1000
    for kind, k in steps:
        if kind == "other":  # an entry from the heap or the sorted run, left waiting
            entry = (extra, f"x{extra}")
            extra += 1
            line.add(entry, SHAPES[k])
            plain.append((entry, SHAPES[k]))
        elif at < len(source_plain):
            if kind == "read":  # read and put back
                line.add(*source_plain[at])
                plain.append(source_plain[at])
                at += 1
            elif kind == "skip":  # read and started: not put back
                at += 1
            else:  # a run put back in one slice
                stop = min(len(source_plain), at + k + 1)
                line.add_from(source, at, stop)
                plain += source_plain[at:stop]
                at = stop
        assert len(line) == len(plain)
    line.add_from(source, at, len(source_plain))  # the rest of the front, unread
    plain += source_plain[at:]
    settled = line.settled()
    _agrees(settled, plain)
    if plain == source_plain:
        assert settled is source  # nothing changed: the same line, not a copy
    else:
        assert settled is line
