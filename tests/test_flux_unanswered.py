"""Journal events that overtake their job's submit answer are held until it comes."""

from __future__ import annotations

from matensemble.backends.flux_unanswered import UnansweredSubmits


def test_events_of_a_job_whose_answer_is_due_are_released_by_the_answer_in_order() -> None:
    unanswered = UnansweredSubmits()
    unanswered.sent()
    assert unanswered.hold(7, "alloc", {"timestamp": 1.0}, {"id": 7, "R": "r"})
    assert unanswered.hold(7, "start", {"timestamp": 2.0}, {"id": 7})
    held = unanswered.answered(7)
    assert [name for name, _, _ in held] == ["alloc", "start"]
    assert held[0][2] == {"id": 7, "R": "r"}
    assert unanswered.count == 0


def test_an_unknown_jobs_event_is_not_held_while_no_answer_is_due() -> None:
    unanswered = UnansweredSubmits()
    assert not unanswered.hold(9, "alloc", {}, {"id": 9})
    assert unanswered.held() == 0


def test_other_jobs_events_are_dropped_once_every_submit_is_answered() -> None:
    unanswered = UnansweredSubmits()
    unanswered.sent()
    unanswered.sent()
    unanswered.hold(100, "alloc", {}, {"id": 100})  # someone else's job
    unanswered.hold(1, "alloc", {}, {"id": 1})
    assert [n for n, _, _ in unanswered.answered(1)] == ["alloc"]
    assert unanswered.held() == 1  # the other job's: a submit is still due
    assert unanswered.answered(None) == []  # the second submit was refused
    assert unanswered.held() == 0
    assert unanswered.count == 0


def test_clearing_drops_the_held_events_but_still_counts_the_answers_due() -> None:
    unanswered = UnansweredSubmits()
    unanswered.sent()
    unanswered.hold(5, "alloc", {}, {"id": 5})
    unanswered.clear()
    assert unanswered.held() == 0
    assert unanswered.count == 1
    assert unanswered.answered(5) == []
    assert unanswered.count == 0
