"""Launches queued ahead on one core in a row (``Backend.queue_ahead_depth``): the local
backend starts the launches of a core one after another, in the order they arrived."""

from __future__ import annotations

from matensemble.backends.local_ahead import CoreHolders


def test_launches_take_a_core_in_the_order_they_arrived_on_it() -> None:
    holders = CoreHolders()
    holders.hold("a", [0])
    holders.wait("wide", [0, 1])  # core 1 is free, but wide waits for core 0
    assert holders.blockers([1]) == ["wide"]  # what comes to core 1 now comes after wide
    holders.wait("c", [1])
    holders.wait("d", [0])
    assert holders.blockers([0, 1]) == ["d", "c"]  # per core, the one that came last
    assert holders.forget("a", [0]) == ["wide"]  # wide takes both, c and d wait on
    assert holders.forget("wide", [0, 1]) == ["d", "c"]


def test_a_launch_that_ends_while_it_waits_lets_the_next_ones_on_its_cores_go() -> None:
    holders = CoreHolders()
    holders.hold("a", [0])
    holders.wait("wide", [0, 1])
    holders.wait("c", [1])
    holders.wait("d", [0])
    assert holders.forget("wide", [0, 1]) == ["c"]  # its core 1 is free; core 0 is a's
    assert holders.blockers([0]) == ["d"]
    assert holders.forget("a", [0]) == ["d"]


def test_a_third_launch_on_a_core_comes_after_the_second() -> None:
    holders = CoreHolders()
    holders.hold("a", [0])
    holders.wait("b", [0])
    assert holders.blockers([0]) == ["b"]
    holders.wait("c", [0])
    assert holders.blockers([0]) == ["c"]
    assert holders.forget("a", [0]) == ["b"]
    assert holders.forget("b", [0]) == ["c"]
    assert holders.forget("c", [0]) == []
    assert holders.blockers([0]) == []
