"""The simulated backend's pending events: exactly a heap's order, without a heap of them all."""

from __future__ import annotations

import asyncio
import heapq
import math
import random
from pathlib import Path
from typing import Any

import pytest

from matensemble import SimulatedBackend, Task
from matensemble.backends import simulated_events
from matensemble.backends.simulated_events import EventQueue

from backend_harness import opened


@pytest.mark.parametrize("seed", range(6))
def test_events_come_out_in_the_order_a_heap_gives_however_pushes_and_pops_interleave(
    seed: int,
) -> None:
    """Ties on the time, times within the second being read (zero-length launches), whole
    seconds, a time before the one read (which the backend never makes, but the order holds),
    and times that never come (inf), pushed while the earliest are popped."""
    rng = random.Random(seed)
    queue, heap = EventQueue(), []
    now, seq = 0.0, 0

    def push(time: float) -> None:
        nonlocal seq
        seq += 1
        entry = (time, seq, f"e{seq}")
        queue.push(entry)
        heapq.heappush(heap, entry)

    for _ in range(3000):
        if heap and rng.random() < 0.45:
            assert queue.first() == heap[0]
            assert queue.pop() == heapq.heappop(heap)
            now = max(now, heap[0][0]) if heap else now
            continue
        kind = rng.random()
        if kind < 0.3:
            push(now)  # due at once
        elif kind < 0.5:
            push(now + rng.choice((0.5, 1.0, 2.0, 3.0)))  # ties, and whole seconds
        elif kind < 0.55:
            push(math.inf)
        elif kind < 0.57:
            push(now - 1.5)
        else:
            push(now + rng.expovariate(0.2))
        assert len(queue) == len(heap)
    while heap:
        assert queue.pop() == heapq.heappop(heap)
    assert queue.first() is None and len(queue) == 0


def test_a_long_run_reads_its_open_second_without_keeping_what_it_read() -> None:
    queue = EventQueue()
    n = 3 * simulated_events._TRIM
    for i in range(n):
        queue.push((10.25, i))
    for i in range(n):  # each pop makes one more, due at once: the open second never ends
        assert queue.pop() == (10.25, i)
        queue.push((10.25, n + i))
    assert len(queue._open) <= 2 * simulated_events._TRIM + n  # let go of what was read


async def test_launches_are_filed_by_second_not_pushed_on_a_heap_of_every_running_launch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """10,000 launches that end within ten seconds of each other put ten keys on a heap (a
    heap of every launch costs a cache miss or two per level at Frontier scale), and still
    come out in order of their ends, ties in launch order."""
    pushes = 0
    push = heapq.heappush

    def counted(heap: list[Any], item: Any) -> None:
        nonlocal pushes
        pushes += 1
        push(heap, item)

    monkeypatch.setattr(heapq, "heappush", counted)
    n = 10_000
    rng = random.Random(3)
    lengths = {f"t{i}": round(rng.uniform(100.0, 110.0), 1) for i in range(n)}
    backend = SimulatedBackend(1, n, duration=lambda task, attempt: lengths[task.id])
    seen: list[str] = []
    async with opened(backend, tmp_path) as h:
        h.on_outcome = lambda outcome: seen.append(outcome.key[0])
        pushes = 0  # from here on
        for i in range(n):
            h.start(Task(id=f"t{i}", command=("x",)))
        assert pushes <= 11, pushes  # one per second that holds an end (100 to 110)
        while len(seen) < n:
            backend.idle()
            await asyncio.sleep(0)
    assert seen == sorted(lengths, key=lambda t: (lengths[t], int(t[1:])))


def test_short_launches_pushed_while_their_second_is_read_do_not_shift_its_bucket() -> None:
    """Launches shorter than a second, pushed while the clock is inside that second, go on a
    small heap beside its sorted bucket: the bucket (10,000 entries here) is neither shifted
    nor grown by them (an insertion into it moved every entry after the spot), and the order
    is still a heap's."""
    rng = random.Random(5)
    queue, heap = EventQueue(), []
    n = 10_000
    for seq in range(n):
        entry = (7.0 + rng.random(), seq)
        queue.push(entry)
        heapq.heappush(heap, entry)
    assert queue.pop() == heapq.heappop(heap)  # the second 7 is open now
    opened = queue._open
    for seq in range(n, 2 * n):
        entry = (min(7.999, heap[0][0] + rng.uniform(0.0, 0.3)), seq)  # ends within it
        queue.push(entry)
        heapq.heappush(heap, entry)
        assert queue.pop() == heapq.heappop(heap)
    assert queue._open is opened and len(opened) == n
    while heap:
        assert queue.pop() == heapq.heappop(heap)
